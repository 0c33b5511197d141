"""Memory of an idle platform and of idle warm workers.

- Gateway RSS (VmRSS of the `cumulo up` process) after start with nothing deployed, and of a
  second `cumulo up --demo` with the demo functions (examples/) deployed: once before any
  call, and once after each was called once and then scaled to zero (no workers; zygotes
  may stay). Target: <= 80 MB for each figure.
- USS (Private_Clean + Private_Dirty from /proc/PID/smaps_rollup) of each idle warm worker of
  the echo function, after concurrent load made the pool grow. Target: <= 10 MB each.
MB here is 10^6 bytes (the stricter reading of the target); KiB figures are kept as well.

Peers measured in the same run for scale: a bare Starlette app on uvicorn (RSS after start) and
a fresh `python -c` interpreter that imported the same SDK (`import cumulo`).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    FUNCTIONS_DIR,
    ROOT,
    BenchError,
    HttpConn,
    Options,
    Platform,
    cmdline,
    descendants,
    log,
    median,
    pss_kb,
    python_exe,
    rss_kb,
    section,
    starlette_server,
    uss_kb,
)

GATEWAY_TARGET_MB = 80.0
WORKER_TARGET_MB = 10.0
EXAMPLES_DIR = ROOT / "examples"


def mb(kib: float | None) -> float:
    """KiB -> MB (10^6 bytes)."""
    return float("nan") if kib is None else kib * 1024 / 1e6


def _settled_rss(pid: int, seconds: float = 2.0) -> int:
    """RSS after the process has been left alone for `seconds` (median of a few reads)."""
    time.sleep(seconds)
    reads = []
    for _ in range(5):
        value = rss_kb(pid)
        if value is None:
            raise BenchError(f"process {pid} is gone")
        reads.append(value)
        time.sleep(0.1)
    return int(median(reads))


QUANTUM_DEMOS = frozenset({"vqe"})


def demo_functions() -> list[tuple[Path, str]]:
    """The single-file examples (what `cumulo up --demo` deploys)."""
    files: list[tuple[Path, str]] = []
    if EXAMPLES_DIR.is_dir():
        for path in sorted(EXAMPLES_DIR.glob("*.py")):
            text = path.read_text(errors="replace")
            if "@cumulo.function" in text and not path.name.startswith("_"):
                name = re.sub(r"[^a-z0-9-]", "-", path.stem.lower())[:63]
                files.append((path, name))
    return files


def _children_report(plat: Platform) -> list[dict[str, Any]]:
    return [
        {"pid": pid, "rss_kib": rss_kb(pid), "uss_kib": uss_kb(pid), "cmd": cmdline(pid)[:160]}
        for pid in descendants(plat.pid)
    ]


def platform_memory(opts: Options) -> dict[str, Any]:
    out: dict[str, Any] = {
        "gateway_target_mb": GATEWAY_TARGET_MB,
        "worker_target_mb": WORKER_TARGET_MB,
    }
    # A: nothing deployed, then the echo function's idle warm workers
    with Platform(idle_timeout=5) as plat:
        idle = _settled_rss(plat.pid)
        out["gateway_idle_rss_kib"] = idle
        out["gateway_idle_rss_mb"] = mb(idle)
        out["gateway_idle_uss_kib"] = uss_kb(plat.pid)
        out["idle_children"] = _children_report(plat)
        log(f"memory: idle gateway RSS {mb(idle):.1f} MB")
        try:
            plat.deploy(FUNCTIONS_DIR / "echo.py", "echo")
            out.update(_worker_uss(plat, opts))
        except (BenchError, OSError) as exc:
            log(f"memory: worker USS not measured: {exc}")
            out["worker_error"] = str(exc)
    if plat.leftovers:
        out["leftovers"] = plat.leftovers
    # B: `cumulo up --demo`, each demo function called once, then all scaled to zero
    out.update(_scaled_to_zero())
    figures = [idle, out.get("gateway_deployed_uncalled_rss_kib") or 0]
    figures.append(out.get("gateway_scaled_to_zero_rss_kib") or 0)
    out["gateway_pass"] = max(figures) <= GATEWAY_TARGET_MB * 1e6 / 1024
    return out


def _scaled_to_zero() -> dict[str, Any]:
    out: dict[str, Any] = {}
    deployed: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    with Platform(idle_timeout=2, demo=True, label="cumulo --demo") as plat:
        names = plat.functions()
        out["demo_mode"] = "cumulo up --demo"
        if not names:  # --demo deployed nothing: deploy the examples ourselves
            out["demo_mode"] = "examples/*.py deployed one by one (--demo deployed nothing)"
            for path, name in demo_functions():
                try:
                    plat.deploy(path, name)
                    names.append(name)
                except BenchError as exc:
                    failed[name] = str(exc)
        # deployed, never called: at zero from the start
        never = _settled_rss(plat.pid)
        out["gateway_deployed_uncalled_rss_kib"] = never
        out["gateway_deployed_uncalled_rss_mb"] = mb(never)
        log(f"memory: gateway RSS with demo functions deployed, never called {mb(never):.1f} MB")
        # The quantum demo starts the quantum job service in the gateway (Qiskit: ~80 MB);
        # it is measured on its own below, after the others are back at zero.
        quantum = [n for n in names if n in QUANTUM_DEMOS]
        for name in [n for n in names if n not in QUANTUM_DEMOS]:
            try:
                resp = plat.invoke(name, {"name": "bench", "n": 10})
                entry: dict[str, Any] = {"name": name, "first_call": resp.status}
                if resp.status >= 400:
                    entry["body"] = resp.body[:300].decode(errors="replace")
                deployed.append(entry)
            except OSError as exc:
                failed[name] = str(exc)
        for d in deployed:
            try:
                plat.wait_no_workers(d["name"], timeout=60)
            except BenchError as exc:
                failed[d["name"]] = str(exc)
        zero = _settled_rss(plat.pid)
        out["gateway_scaled_to_zero_rss_kib"] = zero
        out["gateway_scaled_to_zero_rss_mb"] = mb(zero)
        out["scaled_to_zero_children"] = _children_report(plat)
        with contextlib.suppress(BenchError, OSError):
            out["zygotes"] = {
                d["name"]: [
                    {"pid": z, "rss_kib": rss_kb(z), "uss_kib": uss_kb(z), "pss_kib": pss_kb(z)}
                    for z in plat.zygote_pids(d["name"])
                ]
                for d in deployed
            }
        log(f"memory: gateway RSS with demo functions scaled to zero {mb(zero):.1f} MB")
        for name in quantum:
            with contextlib.suppress(OSError, BenchError):
                plat.invoke(name, {"steps": 2})
                plat.wait_no_workers(name, timeout=60)
        if quantum:
            after = _settled_rss(plat.pid)
            out["gateway_after_quantum_rss_kib"] = after
            out["gateway_after_quantum_rss_mb"] = mb(after)
            log(f"memory: gateway RSS after one quantum job (Qiskit loaded) {mb(after):.1f} MB")
    out["deployed"] = deployed
    out["deploy_failed"] = failed
    if plat.leftovers:
        out.setdefault("leftovers", []).extend(plat.leftovers)
    return out


def _worker_uss(plat: Platform, opts: Options) -> dict[str, Any]:
    out: dict[str, Any] = {}
    body = json.dumps({"payload": "x" * 100, "n": 1}).encode()
    path = plat.invoke_path("echo")

    def client(_: int) -> int:
        conn = HttpConn(plat.url)
        bad = 0
        try:
            for _ in range(25):
                bad += conn.request("POST", path, body, plat.auth).status != 200
        finally:
            conn.close()
        return bad

    with ThreadPoolExecutor(max_workers=8) as pool:
        out["load_errors"] = sum(pool.map(client, range(8)))
    time.sleep(1.0)  # let the workers go idle (idle timeout is 5 s)
    workers = plat.worker_list("echo")
    samples: list[dict[str, Any]] = []
    for w in workers:
        pid = int(w["pid"])
        uss = uss_kb(pid)
        if uss is None:
            continue
        samples.append(
            {
                "pid": pid,
                "state": w.get("state"),
                "served": w.get("served"),
                "uss_kib": uss,
                "pss_kib": pss_kb(pid),
                "rss_kib": rss_kb(pid),
            }
        )
    out["workers"] = samples
    idle_uss: list[int] = [s["uss_kib"] for s in samples if s["state"] == "idle"]
    if not idle_uss:
        raise BenchError(f"no idle warm worker to measure (workers: {workers})")
    out["worker_uss_median_mb"] = mb(median(idle_uss))
    out["worker_uss_max_mb"] = mb(max(idle_uss))
    out["worker_count"] = len(idle_uss)
    out["worker_pass"] = max(idle_uss) <= WORKER_TARGET_MB * 1e6 / 1024
    log(
        f"memory: {len(idle_uss)} idle workers, USS median {out['worker_uss_median_mb']:.2f} MB,"
        f" max {out['worker_uss_max_mb']:.2f} MB"
    )
    return out


def peers() -> dict[str, Any]:
    """Bare Starlette on uvicorn after start, and a fresh interpreter with `import cumulo`."""
    out: dict[str, Any] = {}
    with starlette_server() as (_, proc):
        out["starlette_rss_kib"] = _settled_rss(proc.pid)
        out["starlette_rss_mb"] = mb(out["starlette_rss_kib"])
    code = (
        "import os, cumulo\n"
        "t = open(f'/proc/{os.getpid()}/status').read().split('VmRSS:')[1].split()[0]\n"
        "print(t)"
    )
    try:
        run = subprocess.run(
            [python_exe(), "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        out["python_import_cumulo_rss_kib"] = int(run.stdout.strip())
        out["python_import_cumulo_rss_mb"] = mb(out["python_import_cumulo_rss_kib"])
    except (subprocess.SubprocessError, ValueError) as exc:
        out["python_import_cumulo_error"] = str(exc)
    return out


def main(opts: Options) -> dict[str, Any]:
    results: dict[str, Any] = {}
    log("memory: peers")
    with section("peers", results) as out:
        out.update(peers())
    log("memory: platform")
    with section("platform", results) as out:
        out.update(platform_memory(opts))
    return results
