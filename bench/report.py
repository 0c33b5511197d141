"""Turn the results dict of one run into docs/benchmarks.md and PNG plots in docs/."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from bench.common import DOCS_DIR, log

PLOTS = {
    "throughput": "bench-throughput.png",
    "coldstart": "bench-coldstart.png",
    "memory": "bench-memory.png",
    "reliability": "bench-reliability.png",
    "scaleout": "bench-scaleout.png",  # rows 12a and 12b (part scaleout_jobs draws in it too)
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
    rows = _summary_rows(r)
    for row in rows:  # sections left out with --only (later issues add rows only when run)
        # The row's leading number: "1b." is section 1, "16." is not.
        number = re.sub(r"\D.*", "", row[0])
        key = {"1": "throughput", "2": "coldstart", "3": "memory"}.get(number)
        if key is not None and key not in r:
            row[1], row[2], row[3], row[5] = "not run (`--only`)", "—", "—", "—"
    return (
        rows
        + _reliability_rows(r)
        + _scaleout_rows(r)
        + _gateway_rows(r)
        + _lambda_rows(r)
        + _container_rows(r)
    )


def _lambda_rows(r: dict[str, Any]) -> list[list[str]]:
    """Issue 16: boto3's Lambda invoke against the plain /fn route (bench/lambda_bench.py)."""
    lb = r.get("lambda") or {}
    if not _ok(lb.get("boto3_over_http_p50")):
        return []
    return [
        [
            "16. boto3 `invoke` (SigV4, Invoke API) vs `POST /fn/…`, p50 (door alone: "
            f"{_f(lb.get('door_over_http_p50'), '.2f', '×')})",
            _f(lb.get("boto3_p50_ms"), ".2f", " ms"),
            f"/fn: {_f(lb.get('http_p50_ms'), '.2f', ' ms')}",
            _f(lb["boto3_over_http_p50"], ".2f", "×"),
            "≤ 1.2×",
            _verdict(lb.get("pass")),
        ]
    ]


def _summary_rows(r: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    tp = r.get("throughput") or {}
    p1, p2 = tp.get("phase1") or {}, tp.get("phase2") or {}
    ratios = tp.get("ratios") or {}
    cum = _get(p1, "cumulo", "rps")
    why = _first_line(_get(tp, "errors", "cumulo") or tp.get("error"))
    rows.append(
        [
            "1. Warm throughput, JSON echo, 32 connections (median of per-round ratios)",
            _f(cum, ",.0f", " req/s") if _ok(cum) else "not measured (§1)" if why else "—",
            "bare Starlette (uvicorn, uvloop, httptools, 1 process): "
            + _f(_get(p1, "starlette", "rps"), ",.0f", " req/s"),
            _f(ratios.get("cumulo_vs_starlette"), ".3f", "×"),
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
            "2b. Full cold start (no zygote), function importing numpy "
            "(median of per-sample ratios)",
            _f(_get(fc, "cold", "p50_ms"), ".1f", " ms")
            if _ok(_get(fc, "cold", "p50_ms"))
            else "not measured (§2)",
            'fresh `python -c "import numpy"`, same venv: ' + _f(fresh, ".1f", " ms"),
            _f(fc.get("ratio"), ".3f", "×"),
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
    uncalled = mp.get("gateway_deployed_uncalled_rss_mb")
    for label, value in (
        ("3b. Gateway RSS, demo functions deployed, never called", uncalled),
        ("3b'. Gateway RSS, demo functions each called once, then scaled to zero", zero),
    ):
        rows.append(
            [
                label,
                _f(value, ".1f", " MB") if _ok(value) else err,
                starlette_rss,
                _f(value / peers["starlette_rss_mb"], ".2f", "×")
                if _ok(value) and _ok(peers.get("starlette_rss_mb"))
                else "—",
                "≤ 80 MB",
                _verdict(value * 1e6 / 1024 <= target_kib if _ok(value) else None),
            ]
        )
    quantum_rss = mp.get("gateway_after_quantum_rss_mb")
    if _ok(quantum_rss):
        rows.append(
            [
                "3b''. Same, after one quantum job (the Qiskit job service stays loaded)",
                _f(quantum_rss, ".1f", " MB"),
                starlette_rss,
                "—",
                "no target (not idle)",
                "—",
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
    return rows + _later_issue_rows(r)


def _later_issue_rows(r: dict[str, Any]) -> list[list[str]]:
    """One summary row per target of issues 6 and 8 (AI, metering), where they ran."""
    rows: list[list[str]] = []
    bt = r.get("batching") or {}
    if _ok(bt.get("batched_vs_unbatched")):
        q = bt.get("query/cumulo_batched") or {}
        u = bt.get("query/cumulo_unbatched") or {}
        rows.append(
            [
                "6a. MiniLM embeddings, 64 clients, batched (32 / 5 ms), 4-word queries",
                _f(q.get("req_s"), ".0f", " req/s"),
                f"same model unbatched: {_f(u.get('req_s'), '.0f', ' req/s')}",
                _f(bt["batched_vs_unbatched"], ".2f", "×"),
                "≥ 4×",
                _verdict(bt.get("pass")),
            ]
        )
        for workload in ("query", "sentence"):
            ratio = bt.get(f"{workload}_cumulo_batched_vs_ray_serve")
            if _ok(ratio):
                ray = (bt.get(f"{workload}/ray_serve_batched") or {}).get("req_s")
                rows.append(
                    [
                        f"6a'. Same, against Ray Serve `@serve.batch` ({workload})",
                        _f((bt.get(f"{workload}/cumulo_batched") or {}).get("req_s"), ".0f"),
                        f"Ray Serve: {_f(ray, '.0f', ' req/s')}",
                        _f(ratio, ".2f", "×"),
                        "comparison",
                        "—",
                    ]
                )
        sentence = bt.get("sentence_batched_vs_unbatched")
        if _ok(sentence):
            rows.append(
                [
                    "6a''. Batched vs unbatched, 20-token sentences (compute-bound on 2 cores)",
                    "—",
                    "—",
                    _f(sentence, ".2f", "×"),
                    "no target",
                    "—",
                ]
            )
    pw = r.get("prewarm") or {}
    if _ok(pw.get("cold_start_reduction")):
        rows.append(
            [
                "6b. Pre-warming on a periodic trace: cold starts cut / extra worker-seconds",
                f"{_f(pw['cold_start_reduction'] * 100, '.0f', ' %')} fewer cold starts",
                "reactive scaling alone, same trace",
                f"{_f(pw.get('extra_worker_seconds', 0) * 100, '+.0f', ' %')} worker-s",
                "≥ 80 % fewer, ≤ +20 %",
                _verdict(pw.get("pass")),
            ]
        )
    an = r.get("anomaly") or {}
    if _ok(an.get("recall")):
        rows.append(
            [
                "6c. Anomaly detection on a synthetic trace: recall / false positives",
                f"recall {_f(an['recall'], '.3f')}",
                f"{an.get('anomalies')} injected anomalies",
                f"FPR {_f(an.get('false_positive_rate', 0) * 100, '.2f', ' %')}",
                "recall ≥ 0.9 at ≤ 5 % FPR",
                _verdict(an.get("pass")),
            ]
        )
    ws = r.get("websocket") or {}
    if _ok(ws.get("ratio_median_of_rounds")):
        rows.append(
            [
                f"16. WebSocket echo round trips, {ws.get('clients')} connections, cumulo.app",
                _f(ws.get("cumulo_round_trips_s"), ",.0f", " round trips/s"),
                "bare uvicorn, same FastAPI app: "
                + _f(ws.get("bare_uvicorn_round_trips_s"), ",.0f", " round trips/s"),
                _f(ws["ratio_median_of_rounds"], ".3f", "×"),
                "≥ 0.60×",
                _verdict(ws.get("pass")),
            ]
        )
    me = r.get("metering") or {}
    if _ok(me.get("ratio_median_of_rounds")):
        rows.append(
            [
                "8. Warm invoke throughput with metering on",
                _f(me.get("metering_on_req_s"), ".0f", " req/s"),
                f"--no-metering: {_f(me.get('metering_off_req_s'), '.0f', ' req/s')}",
                _f(me["ratio_median_of_rounds"], ".3f", "×"),
                "≥ 0.97×",
                _verdict(me.get("pass")),
            ]
        )
    return rows


def _reliability_rows(r: dict[str, Any]) -> list[list[str]]:
    """Issue 15: RSS flat over a soak, a healthy client's p99 under a connection flood."""
    rows: list[list[str]] = []
    soak = _get(r, "reliability", "soak") or {}
    if _ok(soak.get("growth_after_warmup_pct")):
        rows.append(
            [
                f"15a. Gateway RSS over a {_f(soak.get('seconds'), '.0f')} s soak at "
                f"{_f(soak.get('rate_per_s'), '.0f')} req/s, after "
                f"{_f(soak.get('warmup_s'), '.0f')} s warm-up",
                f"{_f(soak.get('slope_mb_per_min'), '+.3f', ' MB/min')}",
                f"RSS {_f(soak.get('rss_after_warmup_mb'), '.1f')} → "
                f"{_f(soak.get('rss_last_mb'), '.1f')} MB",
                _f(soak["growth_after_warmup_pct"], "+.2f", " %"),
                "within 5 %",
                _verdict(soak.get("pass")),
            ]
        )
    idle = _get(r, "reliability", "idle") or {}
    if _ok(idle.get("growth_pct")):
        rows.append(
            [
                f"15c. Gateway RSS idle for {_f(idle.get('seconds'), '.0f')} s after the soak",
                f"{_f(idle.get('slope_mb_per_min'), '+.3f', ' MB/min')}",
                f"RSS {_f(idle.get('rss_first_mb'), '.1f')} → "
                f"{_f(idle.get('rss_last_mb'), '.1f')} MB",
                _f(idle["growth_pct"], "+.2f", " %"),
                "within 5 %",
                _verdict(idle.get("pass")),
            ]
        )
    fl = _get(r, "reliability", "flood") or {}
    if _ok(_get(fl, "under_flood", "p99_ms")):
        rows.append(
            [
                f"15b. Healthy client p99 during a flood of {fl.get('connections')} idle "
                "connections",
                _f(fl["under_flood"]["p99_ms"], ".1f", " ms"),
                f"no flood: {_f(_get(fl, 'baseline', 'p99_ms'), '.1f', ' ms')}",
                _f(fl.get("p99_ratio"), ".2f", "×"),
                "< 50 ms",
                _verdict(fl.get("pass")),
            ]
        )
    return rows


def _container_rows(r: dict[str, Any]) -> list[list[str]]:
    """Issue 14: a container-image function against the same container run by hand (crun)."""
    c = r.get("container") or {}
    if not _ok(c.get("cold_ratio")):
        return []
    mid = len(c["cold_cumulo_ms"]) // 2
    cold_ours = sorted(c["cold_cumulo_ms"])[mid]
    cold_hand = sorted(c["cold_by_hand_ms"])[mid]
    cold_ok = c["cold_ratio"] <= 1.1
    warm_ok = _ok(c.get("warm_ratio")) and c["warm_ratio"] >= 0.7
    return [
        [
            "14a. Cold start of a container-image function (BusyBox httpd, crun)",
            _f(cold_ours, ".1f", " ms"),
            f"crun by hand: {_f(cold_hand, '.1f', ' ms')}",
            _f(c["cold_ratio"], ".2f", "×"),
            "≤ 1.1×",
            _verdict(cold_ok),
        ],
        [
            "14b. Warm throughput through cumulo vs at the container directly",
            _f(sorted(c["warm_cumulo_req_s"])[1], ".0f", " req/s"),
            f"direct: {_f(sorted(c['warm_direct_req_s'])[1], '.0f', ' req/s')}",
            _f(c.get("warm_ratio"), ".2f", "×"),
            "≥ 0.7×",
            _verdict(warm_ok),
        ],
    ]


def _gateway_rows(r: dict[str, Any]) -> list[list[str]]:
    """Issue 12: a control change made through one gateway, served by the other (one row
    per backend)."""
    rows = []
    for key in ("propagation", "propagation_postgresql"):
        prop = _get(r, "gateways", key) or {}
        if not _ok(prop.get("p99_ms")):
            continue
        rows.append(
            [
                f"12c. Traffic change reaching the other gateway ({prop.get('backend')}, "
                f"{prop.get('trials')} changes)",
                _f(prop["p99_ms"], ".1f", " ms p99"),
                f"p50 {_f(prop.get('p50_ms'), '.1f', ' ms')}, lost {prop.get('lost')}",
                "—",
                "p99 ≤ 200 ms",
                _verdict(prop.get("pass")),
            ]
        )
    return rows


def _scaleout_rows(r: dict[str, Any]) -> list[list[str]]:
    """Issue 12: two gateways' throughput (12a) and async jobs with two claimers (12b)."""
    rows: list[list[str]] = []
    so = r.get("scaleout") or {}
    servers, ratios = so.get("servers") or {}, so.get("ratios") or {}
    if _ok(ratios.get("gateways2_vs_starlette_2w")):
        rows.append(
            [
                "12a. Warm throughput, `cumulo up --gateways 2`, JSON echo, 32 connections "
                "(median of per-round ratios; wrk shares the 2 cores)",
                _f(_get(servers, "cumulo_2g", "rps"), ",.0f", " req/s"),
                "bare Starlette, `uvicorn --workers 2`: "
                + _f(_get(servers, "starlette_2w", "rps"), ",.0f", " req/s")
                + "; 1 gateway: "
                + _f(_get(servers, "cumulo_1g", "rps"), ",.0f", " req/s")
                + f" (2 gateways / 1: {_f(ratios.get('gateways2_vs_gateways1'), '.3f', '×')})",
                _f(ratios["gateways2_vs_starlette_2w"], ".3f", "×"),
                "≥ 0.9×",
                _verdict(so.get("pass")),
            ]
        )
    jobs = r.get("scaleout_jobs") or {}
    pg, lite = jobs.get("throughput_postgresql") or {}, jobs.get("throughput_sqlite") or {}
    if _ok(pg.get("jobs_per_s")):
        rows.append(
            [
                f"12b. Async jobs/s end to end, PostgreSQL, 2 gateways enqueuing and claiming "
                f"({pg.get('jobs')} echo jobs)",
                _f(pg["jobs_per_s"], ",.0f", " jobs/s"),
                "same on SQLite, 2 gateways on one data dir: "
                + _f(lite.get("jobs_per_s"), ",.0f", " jobs/s"),
                _f(jobs.get("postgresql_vs_sqlite"), ".2f", "×"),
                "≥ 2,000 jobs/s",
                _verdict(jobs.get("pass")),
            ]
        )
    faults = {b: jobs.get(f"faults_{b}") or {} for b in ("postgresql", "sqlite")}
    if any(_ok(f.get("accepted")) for f in faults.values()):

        def cell(f: dict[str, Any]) -> str:
            if not _ok(f.get("accepted")):
                return "not measured " + _first_line(f.get("error"))
            return (
                f"{f.get('lost')} of {f.get('accepted')} accepted jobs lost, "
                f"{f.get('duplicate_executions')} duplicate executions"
            )

        rows.append(
            [
                "12b'. Two SIGKILLs (and restarts) of a gateway under a paced async load",
                "PostgreSQL: " + cell(faults["postgresql"]),
                "SQLite: " + cell(faults["sqlite"]),
                "—",
                "0 accepted jobs lost (duplicates allowed: at least once)",
                _verdict(all(f.get("pass") for f in faults.values() if _ok(f.get("accepted")))),
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
        "(order alternating). The ratio is the median over rounds of the two servers' req/s in "
        "the same round (adjacent runs, which cancels most of the drift of a shared machine); "
        "the ratio of the medians is listed too. Phase 1: bare Starlette and cumulo; phase 2: "
        "Ray Serve and bare Starlette again (Ray's idle daemons are not running during phase 1)."
        " CPU per request is user+system time from /proc of the server process and of its "
        "children (cumulo: zygotes and workers; Ray: raylet, actors), and of wrk itself.",
        "",
    ]
    rows = []
    for phase in ("phase1", "phase2"):
        for name, s in (tp.get(phase) or {}).items():
            runs = ", ".join(f"{x['rps']:,.0f}" for x in s.get("runs", []))
            cpu = s.get("cpu_us_per_request") or {}
            rows.append(
                [
                    phase[-1],
                    name,
                    _f(s["rps"], ",.0f"),
                    runs,
                    _f(s["p50_ms"], ".2f"),
                    _f(s["p99_ms"], ".2f"),
                    str(s["errors"]),
                    _f(cpu.get("server_process"), ".0f"),
                    _f(cpu.get("its_children"), ".0f"),
                    _f(cpu.get("wrk"), ".0f"),
                ]
            )
    header = ["phase", "server", "req/s (median)", "req/s per run", "p50 ms", "p99 ms"]
    header += ["errors", "CPU µs/req: server", "CPU µs/req: its children", "CPU µs/req: wrk"]
    lines += _table(header, rows)
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
        lines += ["", f"**{name} not measured:**", "", "```", str(err).strip()[-1500:], "```"]
    return lines


def _scaleout_details(so: dict[str, Any]) -> list[str]:
    lines = [
        f"Row 1's wrk settings and JSON echo: {so.get('connections')} connections, "
        f"{so.get('wrk_threads')} wrk thread on the same cores as the servers, a "
        f"{so.get('warmup_s')} s warm-up per server, then {so.get('rounds')} interleaved runs "
        f"of {so.get('duration_s')} s (order reversed every round). `cumulo up --gateways 2`: "
        "two gateway processes on one port (SO_REUSEPORT) and one SQLite data dir; bare "
        "Starlette on `uvicorn --workers 2` (one shared listening socket). Ratios are medians "
        "of per-round ratios. CPU per request: user+system time of the server's whole process "
        "tree (supervisor, gateways or uvicorn workers, cumulo's zygotes and workers), and "
        "of wrk.",
        "",
    ]
    rows = []
    for name, s in (so.get("servers") or {}).items():
        runs = ", ".join(f"{x['rps']:,.0f}" for x in s.get("runs", []))
        cpu = s.get("cpu_us_per_request") or {}
        total = (so.get("cpu_us_per_request_total") or {}).get(name)
        rows.append(
            [
                name,
                _f(s["rps"], ",.0f"),
                runs,
                _f(s["p50_ms"], ".2f"),
                _f(s["p99_ms"], ".2f"),
                str(s["errors"]),
                _f(total, ".0f"),
                _f(cpu.get("wrk"), ".0f"),
            ]
        )
    header = ["server", "req/s (median)", "req/s per run", "p50 ms", "p99 ms", "errors"]
    lines += _table([*header, "CPU µs/req: server tree", "CPU µs/req: wrk"], rows)
    ratios = so.get("ratios") or {}
    if ratios:
        lines += ["", "Ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in ratios.items()) + "."]
    for name, err in (so.get("errors") or {}).items():
        lines += ["", f"**{name} not measured:**", "", "```", str(err).strip()[-1500:], "```"]
    return lines


def _scaleout_jobs_details(sj: dict[str, Any]) -> list[str]:
    lines = [
        "Two `cumulo up --watch-changes` gateways on one data dir (PostgreSQL: both `--db` on "
        "one database of a throwaway cluster on loopback, fsync off; SQLite: the data dir's "
        "database). Throughput: echo jobs enqueued through both gateways (16 connections "
        "each), from the first `POST /async` to the last job's `finished_at`, after a warm-up "
        "round. CPU seconds per 1,000 jobs, first enqueue until the newest job is done: each "
        "gateway process, its zygotes and workers, the PostgreSQL server, the bench client.",
        "",
    ]
    rows = []
    cpu_cols: list[str] = []
    for backend in ("postgresql", "sqlite"):
        t = sj.get(f"throughput_{backend}") or {}
        cpu_cols += [k for k in t.get("cpu_s_per_1000_jobs") or {} if k not in cpu_cols]
    for backend in ("postgresql", "sqlite"):
        t = sj.get(f"throughput_{backend}") or {}
        if t.get("error"):
            lines += [f"- {backend}: not measured: {_first_line(t['error'])}"]
            continue
        cpu = t.get("cpu_s_per_1000_jobs") or {}
        rows.append(
            [
                backend,
                str(t.get("jobs")),
                _f(t.get("jobs_per_s"), ",.0f"),
                ", ".join(f"{x['per_s']:,.0f}" for x in t.get("runs", [])),
                _f(t.get("enqueue_per_s"), ",.0f"),
                _f(t.get("queue_latency_p50_ms"), ".0f"),
                *[_f(cpu.get(k), ".3f") for k in cpu_cols],
            ]
        )
    header = ["backend", "jobs", "jobs/s (median)", "per round", "enqueue/s", "queue p50 ms"]
    lines += _table([*header, *[f"CPU s/1k: {k}" for k in cpu_cols]], rows)
    lines += [
        "",
        "Faults: a paced load of a function that counts its runs per job in its state "
        "(`ctx.state.incr`); gateway B's process group (gateway, zygotes, workers) is "
        "SIGKILLed and B restarted, then the same for A. Refused: enqueues a dying gateway "
        "never answered 202 (not accepted); lost: accepted jobs not `succeeded` after 120 s; "
        "duplicates: runs beyond one per accepted job.",
        "",
    ]
    frows = []
    for backend in ("postgresql", "sqlite"):
        f = sj.get(f"faults_{backend}") or {}
        if f.get("error"):
            lines += [f"- {backend}: not measured: {_first_line(f['error'])}"]
            continue
        if not f:
            continue
        restarts = "; ".join(
            f"{x['gateway']} killed at {x['killed_at_s']:.1f} s, back after "
            f"{x['back_after_s']:.1f} s"
            for x in f.get("restarts", [])
        )
        frows.append(
            [
                backend,
                f"{f.get('sent')} at {_f(f.get('rate_per_s'), '.0f')}/s",
                str(f.get("accepted")),
                str(f.get("refused")),
                str(f.get("lost")),
                str(f.get("duplicate_executions")),
                str(f.get("jobs_run_more_than_once")),
                restarts,
            ]
        )
    header = ["backend", "sent", "accepted (202)", "refused", "lost", "duplicate runs"]
    lines += _table([*header, "jobs run twice+", "SIGKILLs"], frows)
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
        "fresh interpreter importing numpy is timed right before and after each sample (0.3 s "
        "apart, so neither pays for the other's process set-up or teardown), and the "
        "ratio is the median over samples of cold / mean(fresh before, fresh after).",
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
    if fc.get("paired_ratios"):
        notes.append(
            "full cold, per-sample ratio to the fresh interpreter runs right before and after "
            f"it: {', '.join(f'{x:.2f}' for x in fc['paired_ratios'])} (median "
            f"{_f(fc.get('ratio'), '.3f')}; "
            f"ratio of the p50s: {_f(fc.get('ratio_of_p50s'), '.3f')})"
        )
    if _ok(fc.get("ratio_vs_imported")):
        notes.append(
            f"full cold versus the stricter peer (fresh interpreter until numpy is imported, "
            f"without its exit): {fc['ratio_vs_imported']:.2f}×"
        )
    if _ok(fc.get("excess_over_warm_ms")):
        notes.append(f"full cold minus warm p50: {fc['excess_over_warm_ms']:.1f} ms")
    lines += [f"- {n}" for n in notes]
    for label, part in (("zygote warm", zw), ("full cold", fc), ("interpreter", it)):
        if part.get("error"):
            lines += [
                "",
                f"**{label} not measured:**",
                "",
                "```",
                str(part["error"])[-1500:],
                "```",
            ]
    return lines


def _memory_details(mem: dict[str, Any]) -> list[str]:
    mp, peers = mem.get("platform") or {}, mem.get("peers") or {}
    lines = [
        "RSS = VmRSS of the `cumulo up` process, read 2 s after it settled (median of 5 reads). "
        "USS = Private_Clean + Private_Dirty from `/proc/PID/smaps_rollup` of each worker the "
        "workers endpoint lists as idle, 1 s after 8 concurrent clients made 200 calls to echo "
        "(`--idle-timeout 5`). The demo figures come from a second `cumulo up --demo "
        "--idle-timeout 2`: read once right after start (deployed, never called), then after "
        "each demo function was called once and the workers endpoint shows no worker for any "
        "of them (zygotes may stay). MB = 10^6 bytes.",
        "",
    ]
    if mp.get("deployed") is not None:
        names = (
            ", ".join(f"`{d['name']}` (first call: HTTP {d['first_call']})" for d in mp["deployed"])
            or "none"
        )
        lines.append(f"- demo functions ({mp.get('demo_mode')}), each called once: {names}")
    for name, err in (mp.get("deploy_failed") or {}).items():
        lines.append(f"- `{name}` failed: {_first_line(err)}")
    if mp.get("worker_error"):
        lines.append(f"- worker USS not measured: {_first_line(mp['worker_error'])}")
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
            lines += [
                "",
                f"**{label} not measured:**",
                "",
                "```",
                str(part["error"])[-1500:],
                "```",
            ]
    return lines


DETAILS = {"scaleout": _scaleout_details, "scaleout_jobs": _scaleout_jobs_details}


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    return _f(v, ".4g") if _ok(v) else str(v)[:200]


def _generic(data: Any) -> list[str]:
    """Render whatever a foreign benchmark returned: text, or a dict of scalars, dicts and
    lists of dicts (each becomes a table)."""
    if isinstance(data, str):
        return [data]
    if not isinstance(data, dict):
        return ["```", repr(data)[:2000], "```"]
    lines: list[str] = []
    scalars = [[str(k), _cell(v)] for k, v in data.items() if not isinstance(v, dict | list)]
    if scalars:
        lines += [*_table(["metric", "value"], scalars), ""]
    for k, v in data.items():
        if isinstance(v, dict):
            lines += [f"**{k}**", "", *_generic(v), ""]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            cols = list(dict.fromkeys(c for x in v for c in x))
            lines += [f"**{k}**", "", *_table(cols, [[_cell(x.get(c)) for c in cols] for x in v])]
            lines.append("")
        elif isinstance(v, list):
            lines += [f"**{k}**: {', '.join(_cell(x) for x in v)[:1000]}", ""]
    return lines


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
    left = [
        ("echo warm", _get(zw, "warm", "p50_ms"), "#888888"),
        ("echo cold\n(zygote warm)", _get(zw, "cold", "p50_ms"), "#1f77b4"),
    ]
    fresh = _get(fc, "fresh_python_import_numpy", "p50_ms") or _get(
        cs, "interpreter", "import_numpy", "p50_ms"
    )
    right = [
        ('fresh python\n-c "import numpy"', fresh, "#888888"),
        ("numpy fn cold\n(no zygote)", _get(fc, "cold", "p50_ms"), "#ff7f0e"),
    ]
    left = [s for s in left if _ok(s[1])]
    right = [s for s in right if _ok(s[1])]
    if left or right:
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        for ax, series, title in (
            (axes[0], left, "zygote warm (target: cold ≤ warm + 5 ms)"),
            (axes[1], right, "no zygote (target: ≤ 1.1× fresh python)"),
        ):
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("client latency p50 (ms)")
            if not series:
                ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
                continue
            b = ax.bar([x[0] for x in series], [x[1] for x in series], color=[x[2] for x in series])
            ax.bar_label(b, fmt="%.2f" if max(x[1] for x in series) < 20 else "%.0f", fontsize=8)
            ax.tick_params(axis="x", labelsize=8)
        warm = _get(zw, "warm", "p50_ms")
        if _ok(warm):
            axes[0].axhline(warm + 5, color="red", linestyle="--", linewidth=1)
        if _ok(fresh):
            axes[1].axhline(1.1 * fresh, color="red", linestyle="--", linewidth=1)
        fig.suptitle("Cold start")
        made["coldstart"] = PLOTS["coldstart"]
        _save(fig, docs / PLOTS["coldstart"], plt)

    mem = r.get("memory") or {}
    mp, peers = mem.get("platform") or {}, mem.get("peers") or {}
    mseries = [
        ("gateway idle\n(RSS)", mp.get("gateway_idle_rss_mb"), "#1f77b4"),
        ("gateway, demo fns\nnever called", mp.get("gateway_deployed_uncalled_rss_mb"), "#1f77b4"),
        ("gateway, demo fns\ncalled, at zero", mp.get("gateway_scaled_to_zero_rss_mb"), "#1f77b4"),
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

    rel = r.get("reliability") or {}
    samples = _get(rel, "soak", "samples") or []
    fl = rel.get("flood") or {}
    if samples or _ok(_get(fl, "under_flood", "p99_ms")):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
        ax = axes[0]
        if samples:
            soak = rel["soak"]
            xs = [s["t_s"] / 60 for s in samples]
            ax.plot(xs, [s["rss_mb"] for s in samples], marker="o", markersize=3)
            ax.axvspan(0, soak["warmup_s"] / 60, color="#dddddd", label="warm-up")
            x0 = soak["warmup_s"] / 60
            y0 = soak["rss_after_warmup_mb"]
            ax.plot(
                [x0, xs[-1]],
                [y0, y0 + soak["slope_mb_per_min"] * (xs[-1] - x0)],
                color="red",
                linestyle="--",
                linewidth=1,
                label=f"slope {soak['slope_mb_per_min']:+.3f} MB/min",
            )
            ax.set_xlabel("minutes")
            ax.set_ylabel("gateway RSS (MB)")
            ax.set_title(f"Soak at {soak['rate_per_s']:.0f} req/s (goal: flat within 5 %)")
            ax.legend(fontsize=8)
        ax = axes[1]
        if _ok(_get(fl, "under_flood", "p99_ms")):
            labels = ["p50", "p90", "p99"]
            base = [_get(fl, "baseline", f"{k}_ms") for k in labels]
            under = [_get(fl, "under_flood", f"{k}_ms") for k in labels]
            xs2 = range(len(labels))
            ax.bar([x - 0.2 for x in xs2], base, width=0.4, label="no flood", color="#888888")
            ax.bar([x + 0.2 for x in xs2], under, width=0.4, label="flood", color="#1f77b4")
            ax.set_xticks(list(xs2), labels)
            ax.axhline(50, color="red", linestyle="--", linewidth=1)
            ax.set_ylabel("healthy client latency (ms)")
            ax.set_title(f"{fl.get('connections')} idle connections (goal: p99 < 50 ms)")
            ax.legend(fontsize=8)
        made["reliability"] = PLOTS["reliability"]
        _save(fig, docs / PLOTS["reliability"], plt)

    so_servers = _get(r, "scaleout", "servers") or {}
    tput = [
        ("Starlette\n1 worker", _get(so_servers, "starlette_1w", "rps"), "#bbbbbb"),
        ("Starlette\n2 workers", _get(so_servers, "starlette_2w", "rps"), "#888888"),
        ("cumulo\n1 gateway", _get(so_servers, "cumulo_1g", "rps"), "#9ecae1"),
        ("cumulo\n2 gateways", _get(so_servers, "cumulo_2g", "rps"), "#1f77b4"),
    ]
    tput = [x for x in tput if _ok(x[1])]
    sj = r.get("scaleout_jobs") or {}
    jps = [
        ("SQLite\n2 gateways", _get(sj, "throughput_sqlite", "jobs_per_s"), "#888888"),
        ("PostgreSQL\n2 gateways", _get(sj, "throughput_postgresql", "jobs_per_s"), "#1f77b4"),
    ]
    jps = [x for x in jps if _ok(x[1])]
    if tput or jps:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
        for ax, series, title, unit in (
            (axes[0], tput, "12a. JSON echo, wrk, 32 connections, 2 cores", "requests / s"),
            (axes[1], jps, "12b. async echo jobs end to end", "jobs / s"),
        ):
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(unit)
            if not series:
                ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
                continue
            bars(ax, [x[0] for x in series], [x[1] for x in series], [x[2] for x in series])
        st2 = _get(so_servers, "starlette_2w", "rps")
        if _ok(st2):
            axes[0].axhline(0.9 * st2, color="red", linestyle="--", linewidth=1)
            axes[0].annotate(
                "target: 90% of Starlette, 2 workers",
                (0, 0.9 * st2),
                xytext=(3, 3),
                textcoords="offset points",
                color="red",
                fontsize=8,
            )
        if jps:
            axes[1].axhline(2000, color="red", linestyle="--", linewidth=1)
        fig.suptitle("Several gateways (issue 12)")
        made["scaleout"] = PLOTS["scaleout"]
        _save(fig, docs / PLOTS["scaleout"], plt)

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


def observations(r: dict[str, Any]) -> list[str]:
    """Things this run saw that break the contract or look wrong (not the targets)."""
    out: list[str] = []
    tp = r.get("throughput") or {}
    cs = r.get("coldstart") or {}
    mp = _get(r, "memory", "platform") or {}
    for key, where in (("cumulo_leftovers", "throughput"),):
        for x in tp.get(key) or []:
            out.append(f"{where}: after SIGTERM to `cumulo up`: {x}")
    for x in mp.get("leftovers") or []:
        out.append(f"memory: after SIGTERM to `cumulo up`: {x}")
    for key in ("cumulo_first_call_start", "cumulo_second_call_start"):
        want = "cold" if "first" in key else "warm"
        if key in tp and tp[key] != want:
            out.append(
                f"throughput: `x-cumulo-start` of the {key.split('_')[1]} call was "
                f"`{tp[key]}`, expected `{want}`"
            )
    for label in ("zygote_warm", "full_cold"):
        part = cs.get(label) or {}
        if part.get("cold_not_marked_cold"):
            out.append(
                f"cold start ({label}): {len(part['cold_not_marked_cold'])} calls after "
                "scale-to-zero were not marked `x-cumulo-start: cold`"
            )
    if _get(cs, "zygote_warm", "warm_not_marked_warm"):
        out.append("cold start: some warm calls were not marked `x-cumulo-start: warm`")
    for d in mp.get("deployed") or []:
        if d.get("first_call", 200) >= 500:
            out.append(
                f"demo function `{d['name']}` answered HTTP {d['first_call']} to "
                f'`{{"name": "bench", "n": 10}}`: `{d.get("body", "")[:200]}`'
            )
    for name, err in (mp.get("deploy_failed") or {}).items():
        out.append(f"demo function `{name}`: {_first_line(err)}")
    zygote_pids = {z["pid"] for zs in (mp.get("zygotes") or {}).values() for z in zs}
    for c in mp.get("scaled_to_zero_children") or []:
        if c["pid"] not in zygote_pids and (c.get("rss_kib") or 0) > 50 * 1024:
            out.append(
                f"after scale-to-zero, a child of the gateway that is no zygote stays alive "
                f"with {_f(c['rss_kib'] * 1024 / 1e6, '.0f')} MB RSS: `{c.get('cmd', '?')[:120]}`"
            )
    return out


def _load_lines(r: dict[str, Any], m: dict[str, Any]) -> list[str]:
    load = r.get("load") or {}
    if not load:
        return []
    text = ", ".join(f"{k} {v:.1f}" for k, v in load.items())
    lines = [
        f"1-minute load average at the start of the run and of each part (the suite's own "
        f"load counts from the second one on): {text}.",
        "",
    ]
    try:
        busy = load.get("start", 0.0) > float(m.get("nproc", "0"))
    except ValueError:
        busy = False
    if busy:
        lines += [
            "**The machine was busy with other work when this run started** (load above the "
            "number of CPUs): the paired ratios absorb part of it, but expect them to move between "
            "runs; rerun on a quiet machine before drawing conclusions from a near miss.",
            "",
        ]
    return lines


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
        *_load_lines(r, m),
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
            lines += ["Not measured:", "", "```", str(data["error"])[-2000:], "```", ""]
        else:
            lines += [*fn(data), ""]
        if key in plots:
            lines += [f"![{title}]({plots[key]})", ""]
    obs = observations(r)
    if obs:
        lines += ["## Observations about the platform", "", *[f"- {o}" for o in obs], ""]
    for key, title in (
        ("auth", "Key authentication overhead (issue 3: with a key ≥ 0.95× without)"),
        ("app", "A FastAPI app through cumulo vs bare uvicorn (issue 4: ≥ 0.5×)"),
        ("websocket", "WebSocket echo through cumulo.app vs bare uvicorn (issue 16: ≥ 0.6×)"),
        ("async", "Async invocations (issue 4: ≥ 1,000 jobs/s end to end on SQLite)"),
        ("quantum", "Quantum"),
        ("batching", "Model batching on MiniLM (issue 6: batched ≥ 4× unbatched)"),
        ("prewarm", "Predictive pre-warming (issue 6: ≥ 80 % fewer cold starts, ≤ +20 %)"),
        ("anomaly", "Anomaly detection (issue 6: recall ≥ 0.9 at ≤ 5 % FPR)"),
        ("metering", "Metering overhead (issue 8: ≥ 0.97× throughput)"),
        ("reliability", "Reliability (issue 15: RSS flat in a soak, p99 < 50 ms in a flood)"),
        ("cli", "CLI start-up (issue 17: `cumulo --help` and `cumulo invoke` ≤ 150 ms)"),
        (
            "gateways",
            "Several gateways (issue 12: a change reaches the other gateway, p99 ≤ 200 ms)",
        ),
        ("scaleout", "Two gateways' warm throughput (issue 12a: ≥ 0.9× uvicorn --workers 2)"),
        (
            "scaleout_jobs",
            "Async jobs, two gateways claiming (issue 12b: ≥ 2,000 jobs/s on PostgreSQL, "
            "0 lost across SIGKILLs)",
        ),
        ("lambda", "The Lambda Invoke API: boto3 vs the plain HTTP route (issue 16: ≤ 1.2×)"),
    ):
        extra = r.get(key)
        lines += [f"## {title}", ""]
        if extra is None:
            lines += ["Not run in this invocation (`--only`).", ""]
        elif isinstance(extra, dict) and extra.get("skipped"):
            lines += [f"Skipped: {extra['skipped']}", ""]
        elif isinstance(extra, dict) and key in DETAILS and not extra.get("error"):
            lines += [*DETAILS[key](extra), ""]
        else:
            lines += [*_generic(extra), ""]
        # 12a and 12b share one figure: under 12a's section, or 12b's when 12a did not run
        plot_key = "scaleout" if key == "scaleout_jobs" and "scaleout" not in r else key
        if plot_key in plots:
            lines += [f"![{title}]({plots[plot_key]})", ""]
    lines += [
        "## How to run",
        "",
        "```",
        "make bench                                  # everything (about 20 minutes)",
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
