"""Turn the results dict of one run into docs/benchmarks.md and PNG plots in docs/."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.common import DOCS_DIR, log

PLOTS = {
    "throughput": "bench-throughput.png",
    "coldstart": "bench-coldstart.png",
    "memory": "bench-memory.png",
}


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ok(value: Any) -> bool:
    return isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))


def _f(value: Any, fmt: str = ".1f", unit: str = "") -> str:
    return f"{value:{fmt}}{unit}" if _ok(value) else "—"


def _verdict(passed: Any) -> str:
    if passed is True:
        return "**pass**"
    if passed is False:
        return "**FAIL**"
    return "not measured"


def _first_line(text: Any) -> str:
    return str(text).strip().splitlines()[0][:160] if text else ""


# ---------------------------------------------------------------------------------------------
# summary


def summary_rows(r: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    tp = r.get("throughput") or {}
    p1, p2 = tp.get("phase1") or {}, tp.get("phase2") or {}
    ratios = tp.get("ratios") or {}
    cum = _get(p1, "cumulo", "rps")
    why = _first_line(_get(tp, "errors", "cumulo") or tp.get("error"))
    rows.append(
        [
            "1. Warm throughput, JSON echo, 32 connections",
            _f(cum, ",.0f", " req/s") if _ok(cum) else "not measured (§1)" if why else "—",
            "bare Starlette (uvicorn, uvloop, httptools, 1 process): "
            + _f(_get(p1, "starlette", "rps"), ",.0f", " req/s"),
            _f(ratios.get("cumulo_vs_starlette"), ".2f", "×"),
            "≥ 0.60×",
            _verdict(tp.get("pass")),
        ]
    )
    ray = _get(p2, "ray_serve", "rps")
    ray_why = _first_line(_get(tp, "errors", "ray_serve"))
    rows.append(
        [
            "1b. Same, versus Ray Serve",
            _f(cum, ",.0f", " req/s"),
            "Ray Serve (1 replica, local Ray, 2 CPUs): "
            + (_f(ray, ",.0f", " req/s") if _ok(ray) else f"— {ray_why}"),
            _f(ratios.get("cumulo_vs_ray_serve"), ".1f", "×"),
            "comparison only",
            "—",
        ]
    )
    cs = r.get("coldstart") or {}
    zw = cs.get("zygote_warm") or {}
    rows.append(
        [
            "2a. Cold start, zygote warm (client latency p50)",
            _f(_get(zw, "cold", "p50_ms"), ".2f", " ms")
            if _ok(_get(zw, "cold", "p50_ms"))
            else "not measured (§2)",
            "warm call p50 on the same connection: " + _f(_get(zw, "warm", "p50_ms"), ".2f", " ms"),
            _f(zw.get("excess_ms"), "+.2f", " ms"),
            "≤ +5 ms",
            _verdict(zw.get("pass")),
        ]
    )
    fc = cs.get("full_cold") or {}
    fresh = _get(fc, "fresh_python_import_numpy", "p50_ms") or _get(
        cs, "interpreter", "import_numpy", "p50_ms"
    )
    rows.append(
        [
            "2b. Full cold start (no zygote), function importing numpy (p50)",
            _f(_get(fc, "cold", "p50_ms"), ".1f", " ms")
            if _ok(_get(fc, "cold", "p50_ms"))
            else "not measured (§2)",
            'fresh `python -c "import numpy"`, same venv: ' + _f(fresh, ".1f", " ms"),
            _f(fc.get("ratio"), ".2f", "×"),
            "≤ 1.1×",
            _verdict(fc.get("pass")),
        ]
    )
    mem = r.get("memory") or {}
    mp = mem.get("platform") or {}
    peers = mem.get("peers") or {}
    err = "not measured (§3)" if mp.get("error") else "—"
    starlette_rss = "bare Starlette RSS: " + _f(peers.get("starlette_rss_mb"), ".1f", " MB")
    idle = mp.get("gateway_idle_rss_mb")
    zero = mp.get("gateway_scaled_to_zero_rss_mb")
    target_kib = 80e6 / 1024
    rows.append(
        [
            "3a. Idle platform: gateway RSS, nothing deployed",
            _f(idle, ".1f", " MB") if _ok(idle) else err,
            starlette_rss,
            _f(idle / peers["starlette_rss_mb"], ".2f", "×")
            if _ok(idle) and _ok(peers.get("starlette_rss_mb"))
            else "—",
            "≤ 80 MB",
            _verdict(mp["gateway_idle_rss_kib"] <= target_kib if _ok(idle) else None),
        ]
    )
    rows.append(
        [
            "3b. Gateway RSS, demo functions deployed, scaled to zero",
            _f(zero, ".1f", " MB") if _ok(zero) else err,
            starlette_rss,
            _f(zero / peers["starlette_rss_mb"], ".2f", "×")
            if _ok(zero) and _ok(peers.get("starlette_rss_mb"))
            else "—",
            "≤ 80 MB",
            _verdict(mp["gateway_scaled_to_zero_rss_kib"] <= target_kib if _ok(zero) else None),
        ]
    )
    wmax = mp.get("worker_uss_max_mb")
    rows.append(
        [
            "3c. Idle warm worker USS (max over the pool)",
            (
                f"{_f(wmax, '.2f', ' MB')} (median {_f(mp.get('worker_uss_median_mb'), '.2f')},"
                f" {mp.get('worker_count')} workers)"
            )
            if _ok(wmax)
            else err,
            "fresh interpreter with `import cumulo`, RSS: "
            + _f(peers.get("python_import_cumulo_rss_mb"), ".1f", " MB"),
            "—",
            "≤ 10 MB",
            _verdict(mp.get("worker_pass")),
        ]
    )
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += [
        "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows
    ]
    return out


# ---------------------------------------------------------------------------------------------
# details


def _throughput_details(tp: dict[str, Any]) -> list[str]:
    lines = [
        f"wrk, {tp.get('connections')} connections, {tp.get('wrk_threads')} thread, POST of a "
        f"{tp.get('body_bytes')}-byte JSON object; a {tp.get('warmup_s')} s warm-up per server, "
        f"then {tp.get('rounds')} interleaved runs of {tp.get('duration_s')} s each "
        "(order alternating), median reported. Phase 1: bare Starlette and cumulo; phase 2: "
        "Ray Serve and bare Starlette again (Ray's idle daemons are not running during phase 1).",
        "",
    ]
    rows = []
    for phase in ("phase1", "phase2"):
        for name, s in (tp.get(phase) or {}).items():
            runs = ", ".join(f"{x['rps']:,.0f}" for x in s.get("runs", []))
            rows.append(
                [
                    phase[-1],
                    name,
                    _f(s["rps"], ",.0f"),
                    runs,
                    _f(s["p50_ms"], ".2f"),
                    _f(s["p99_ms"], ".2f"),
                    str(s["errors"]),
                ]
            )
    lines += _table(
        ["phase", "server", "req/s (median)", "req/s per run", "p50 ms", "p99 ms", "errors"], rows
    )
    ratios = tp.get("ratios") or {}
    if ratios:
        lines += ["", "Ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in ratios.items()) + "."]
    notes = []
    for key in ("cumulo_first_call_start", "cumulo_second_call_start", "cumulo_after_call_start"):
        if key in tp:
            notes.append(f"`x-cumulo-start` {key.split('_')[1]} call: `{tp[key]}`")
    if "cumulo_workers_after" in tp:
        nw = sum(len(z.get("workers", [])) for z in tp["cumulo_workers_after"].get("zygotes", []))
        notes.append(f"echo workers after the runs: {nw}")
    if "ray_startup_s" in tp:
        notes.append(f"Ray Serve start-up: {tp['ray_startup_s']:.1f} s")
    if "cumulo_startup_s" in tp:
        notes.append(f"`cumulo up` ready in {tp['cumulo_startup_s']:.2f} s")
    if notes:
        lines += ["", "; ".join(notes) + "."]
    for name, err in (tp.get("errors") or {}).items():
        lines += ["", f"**{name} not measured:**", "", "```", str(err).strip()[:1500], "```"]
    return lines


def _stats_row(label: str, s: dict[str, Any] | None) -> list[str]:
    s = s or {}
    return [
        label,
        str(s.get("n", "—")),
        _f(s.get("p50_ms"), ".2f"),
        _f(s.get("p90_ms"), ".2f"),
        _f(s.get("min_ms"), ".2f"),
        _f(s.get("max_ms"), ".2f"),
    ]


def _coldstart_details(cs: dict[str, Any]) -> list[str]:
    zw, fc, it = cs.get("zygote_warm") or {}, cs.get("full_cold") or {}, cs.get("interpreter") or {}
    rows = [
        _stats_row("echo, warm call (sequential, keep-alive)", zw.get("warm")),
        _stats_row("echo, cold call, zygote warm", zw.get("cold")),
        _stats_row("numpy function, warm call", fc.get("warm")),
        _stats_row("numpy function, cold call, no zygote", fc.get("cold")),
        _stats_row(
            'fresh `python -c "import numpy"` (interleaved)', fc.get("fresh_python_import_numpy")
        ),
        _stats_row('fresh `python -c "import numpy"` (alone)', it.get("import_numpy")),
        _stats_row('fresh `python -c "pass"`', it.get("python_pass")),
    ]
    lines = [
        "Client-side latency of one POST on an already-open keep-alive connection "
        "(`http.client`, TCP_NODELAY). Zygote warm: `cumulo up --idle-timeout 1`; before each "
        "sample the workers endpoint must show the zygote and no worker. Full cold: also "
        "`--zygote-idle-timeout 1`; before each sample the function must have no zygote; a "
        "fresh interpreter importing numpy is timed right before and after each sample.",
        "",
        *_table(["series", "n", "p50 ms", "p90 ms", "min ms", "max ms"], rows),
        "",
    ]
    notes = []
    for label, part in (("zygote warm", zw), ("full cold", fc)):
        if part.get("first_call_start"):
            notes.append(
                f"{label}: first call after deploy {_f(part.get('first_call_ms'), '.1f')} ms, "
                f"`x-cumulo-start: {part['first_call_start']}`"
            )
        if part.get("cold_not_marked_cold"):
            notes.append(
                f"{label}: {len(part['cold_not_marked_cold'])} calls after scale-to-zero were "
                f"not marked cold ({sorted(set(part['cold_not_marked_cold']))})"
            )
        if part.get("note"):
            notes.append(f"{label}: {part['note']}")
    if zw.get("warm_not_marked_warm"):
        notes.append(f"{zw['warm_not_marked_warm']} warm calls were not marked `warm`")
    if zw.get("samples_without_zygote"):
        notes.append(f"{zw['samples_without_zygote']} samples found no zygote (left out)")
    if _ok(fc.get("excess_over_warm_ms")):
        notes.append(f"full cold minus warm p50: {fc['excess_over_warm_ms']:.1f} ms")
    lines += [f"- {n}" for n in notes]
    for label, part in (("zygote warm", zw), ("full cold", fc), ("interpreter", it)):
        if part.get("error"):
            lines += ["", f"**{label} not measured:**", "", "```", str(part["error"])[:1500], "```"]
    return lines


def _memory_details(mem: dict[str, Any]) -> list[str]:
    mp, peers = mem.get("platform") or {}, mem.get("peers") or {}
    lines = [
        "RSS = VmRSS of the `cumulo up` process, read 2 s after it settled (median of 5 reads). "
        "USS = Private_Clean + Private_Dirty from `/proc/PID/smaps_rollup` of each worker the "
        "workers endpoint lists as idle, 1 s after 8 concurrent clients made 200 calls to echo "
        "(`--idle-timeout 5`). MB = 10^6 bytes.",
        "",
    ]
    if mp.get("deployed") is not None:
        names = ", ".join(f"`{d['name']}` ({d['file']})" for d in mp["deployed"]) or "none"
        lines.append(f"- demo functions deployed and called once: {names}")
    if mp.get("deploy_failed"):
        for name, err in mp["deploy_failed"].items():
            lines.append(f"- `{name}` failed: {_first_line(err)}")
    if mp.get("workers"):
        rows = [
            [
                str(w["pid"]),
                str(w.get("state")),
                str(w.get("served")),
                _f(w["uss_kib"] * 1024 / 1e6, ".2f"),
                _f((w.get("pss_kib") or float("nan")) * 1024 / 1e6, ".2f"),
                _f((w.get("rss_kib") or float("nan")) * 1024 / 1e6, ".2f"),
            ]
            for w in mp["workers"]
        ]
        lines += [
            "",
            *_table(["worker pid", "state", "served", "USS MB", "PSS MB", "RSS MB"], rows),
        ]
    zyg = mp.get("zygotes") or {}
    zrows = [
        [
            name,
            str(z["pid"]),
            _f((z.get("rss_kib") or math.nan) * 1024 / 1e6, ".1f"),
            _f((z.get("uss_kib") or math.nan) * 1024 / 1e6, ".1f"),
        ]
        for name, zs in zyg.items()
        for z in zs
    ]
    if zrows:
        lines += ["", "Zygotes alive after scale-to-zero (not counted in the gateway figure):", ""]
        lines += _table(["function", "zygote pid", "RSS MB", "USS MB"], zrows)
    if _ok(peers.get("python_import_cumulo_rss_mb")):
        lines += [
            "",
            f"- a fresh interpreter after `import cumulo`: RSS "
            f"{peers['python_import_cumulo_rss_mb']:.1f} MB (what a worker would cost "
            "without fork sharing)",
        ]
    if mp.get("leftovers"):
        lines += ["- processes still running after SIGTERM to `cumulo up`:"]
        lines += [f"  - {x}" for x in mp["leftovers"]]
    for label, part in (("platform", mp), ("peers", peers)):
        if part.get("error"):
            lines += ["", f"**{label} not measured:**", "", "```", str(part["error"])[:1500], "```"]
    return lines


def _generic(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        rows = [[str(k), _f(v, ".4g") if _ok(v) else str(v)[:200]] for k, v in data.items()]
        return _table(["metric", "value"], rows)
    return ["```", repr(data)[:2000], "```"]


# ---------------------------------------------------------------------------------------------
# plots


def plot(r: dict[str, Any], docs: Path) -> dict[str, str]:
    """Write the PNGs that have data; returns {section: file name}. Stale ones are removed."""
    made: dict[str, str] = {}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("report: matplotlib is not installed; no plots")
        return made

    def bars(ax: Any, labels: list[str], values: list[Any], colors: list[str]) -> None:
        b = ax.bar(labels, values, color=colors)
        ax.bar_label(b, fmt="%.1f" if max(values) < 100 else "%.0f", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)

    tp = r.get("throughput") or {}
    p1, p2 = tp.get("phase1") or {}, tp.get("phase2") or {}
    series = [
        ("Starlette\n(phase 1)", _get(p1, "starlette", "rps"), "#888888"),
        ("cumulo", _get(p1, "cumulo", "rps"), "#1f77b4"),
        ("Ray Serve", _get(p2, "ray_serve", "rps"), "#ff7f0e"),
        ("Starlette\n(phase 2)", _get(p2, "starlette", "rps"), "#bbbbbb"),
    ]
    series = [s for s in series if _ok(s[1])]
    if series:
        fig, ax = plt.subplots(figsize=(7, 4))
        bars(ax, [s[0] for s in series], [s[1] for s in series], [s[2] for s in series])
        st = _get(p1, "starlette", "rps")
        if _ok(st):
            ax.axhline(0.6 * st, color="red", linestyle="--", linewidth=1)
            ax.annotate(
                "target: 60% of Starlette",
                (0, 0.6 * st),
                xytext=(3, 3),
                textcoords="offset points",
                color="red",
                fontsize=8,
            )
        ax.set_ylabel("requests / s (median of runs)")
        ax.set_title(f"JSON echo, wrk, {tp.get('connections')} connections")
        made["throughput"] = PLOTS["throughput"]
        _save(fig, docs / PLOTS["throughput"], plt)

    cs = r.get("coldstart") or {}
    zw, fc = cs.get("zygote_warm") or {}, cs.get("full_cold") or {}
    cseries = [
        ("echo warm", _get(zw, "warm", "p50_ms"), "#888888"),
        ("echo cold\n(zygote warm)", _get(zw, "cold", "p50_ms"), "#1f77b4"),
        (
            'fresh python\n"import numpy"',
            _get(fc, "fresh_python_import_numpy", "p50_ms")
            or _get(cs, "interpreter", "import_numpy", "p50_ms"),
            "#bbbbbb",
        ),
        ("numpy fn cold\n(no zygote)", _get(fc, "cold", "p50_ms"), "#ff7f0e"),
    ]
    cseries = [s for s in cseries if _ok(s[1])]
    if cseries:
        fig, ax = plt.subplots(figsize=(7, 4))
        bars(ax, [s[0] for s in cseries], [s[1] for s in cseries], [s[2] for s in cseries])
        ax.set_ylabel("client latency p50 (ms)")
        ax.set_title("Cold start")
        made["coldstart"] = PLOTS["coldstart"]
        _save(fig, docs / PLOTS["coldstart"], plt)

    mem = r.get("memory") or {}
    mp, peers = mem.get("platform") or {}, mem.get("peers") or {}
    mseries = [
        ("gateway idle\n(RSS)", mp.get("gateway_idle_rss_mb"), "#1f77b4"),
        ("gateway, demo fns\nat zero (RSS)", mp.get("gateway_scaled_to_zero_rss_mb"), "#1f77b4"),
        ("bare Starlette\n(RSS)", peers.get("starlette_rss_mb"), "#888888"),
        ("idle worker\nmax (USS)", mp.get("worker_uss_max_mb"), "#ff7f0e"),
    ]
    mseries = [s for s in mseries if _ok(s[1])]
    if mseries:
        fig, ax = plt.subplots(figsize=(7, 4))
        bars(ax, [s[0] for s in mseries], [s[1] for s in mseries], [s[2] for s in mseries])
        ax.axhline(80, color="red", linestyle="--", linewidth=1)
        ax.axhline(10, color="red", linestyle=":", linewidth=1)
        ax.set_ylabel("MB (10^6 bytes)")
        ax.set_title("Memory (targets: gateway ≤ 80 MB, worker ≤ 10 MB)")
        made["memory"] = PLOTS["memory"]
        _save(fig, docs / PLOTS["memory"], plt)

    for key, name in PLOTS.items():
        if key not in made and key in r:  # this section ran but has nothing to draw
            (docs / name).unlink(missing_ok=True)
    return made


def _save(fig: Any, path: Path, plt: Any) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the document


def write(r: dict[str, Any], docs: Path = DOCS_DIR) -> Path:
    docs.mkdir(parents=True, exist_ok=True)
    plots = plot(r, docs)
    m = r.get("machine", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (it runs `.venv/bin/python -m bench.run`); do not edit by "
        "hand, rerun it. Every target is a ratio against a peer measured in the same run, "
        "because the machine is shared and noisy: compare the ratios, not the absolute "
        "numbers, between runs.",
        "",
        f"- date: {m.get('date')}",
        f"- command: `{r.get('command')}` ({_f(r.get('elapsed_s'), '.0f')} s)",
        f"- commit: {m.get('commit')}",
        f"- machine: `nproc` = {m.get('nproc')}, {m.get('cpu')}, Linux {m.get('kernel')}, "
        f"Python {m.get('python')}",
        "",
        "```",
        "$ free -g",
        str(m.get("free_g", "")),
        "```",
        "",
        "## Summary",
        "",
        *_table(
            ["target", "cumulo", "peer (same run)", "ratio / difference", "target", "result"],
            summary_rows(r),
        ),
        "",
    ]
    sections = [
        ("throughput", "1. Warm throughput", _throughput_details),
        ("coldstart", "2. Cold start", _coldstart_details),
        ("memory", "3. Memory", _memory_details),
    ]
    for key, title, fn in sections:
        lines += [f"## {title}", ""]
        data = r.get(key)
        if data is None:
            lines += ["Not run in this invocation (`--only`).", ""]
            continue
        if data.get("error"):
            lines += ["Not measured:", "", "```", str(data["error"])[:2000], "```", ""]
        else:
            lines += [*fn(data), ""]
        if key in plots:
            lines += [f"![{title}]({plots[key]})", ""]
    q = r.get("quantum")
    lines += ["## Quantum", ""]
    if q is None:
        lines += ["Not run in this invocation (`--only`).", ""]
    elif isinstance(q, dict) and q.get("skipped"):
        lines += [f"Skipped: {q['skipped']}", ""]
    else:
        lines += [*_generic(q), ""]
    lines += [
        "## How to run",
        "",
        "```",
        "make bench                                  # everything (about 6 minutes)",
        ".venv/bin/python -m bench.run --only throughput,memory",
        ".venv/bin/python -m bench.run --quick       # short runs, for checking the suite",
        "```",
        "",
        "Needs `wrk` (`apt-get install -y wrk`) and the `bench` extra (`ray[serve]`, numpy, "
        "matplotlib). The peers live in `bench/peers/`, the deployed functions in "
        "`bench/functions/`; full per-run data goes to `bench/results/latest.raw` (JSON).",
        "",
    ]
    path = docs / "benchmarks.md"
    path.write_text("\n".join(lines))
    return path
