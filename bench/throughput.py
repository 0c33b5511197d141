"""Warm throughput of a JSON echo through the gateway versus peers doing the same work.

Peers: a bare Starlette app on uvicorn (uvloop + httptools, one process) and Ray Serve. All
are driven by wrk with the same POST body over 32 keep-alive connections. Phase 1 interleaves
Starlette and cumulo runs (rounds, alternating order, median); phase 2 starts Ray Serve
(its idle daemons would otherwise steal CPU from phase 1) and interleaves it with Starlette
again, so the Starlette numbers of both phases show how noisy the machine was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    FUNCTIONS_DIR,
    HOST,
    ROOT,
    BenchError,
    Options,
    Platform,
    Proc,
    WrkResult,
    free_port,
    http_request,
    kill_matching,
    log,
    median,
    python_exe,
    run_wrk,
    starlette_server,
    tree_cpu,
    wrk_available,
)

BODY = json.dumps(
    {
        "user": "bench",
        "id": 12345,
        "tags": ["a", "b", "c"],
        "items": [1, 2, 3, 4, 5, 6, 7, 8],
        "nested": {"flag": True, "ratio": 0.5, "note": None},
        "text": "cumulo " * 8,
    },
    separators=(",", ":"),
).encode()
TARGET_RATIO = 0.60  # cumulo / bare Starlette


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    pid: int | None = None  # server process: its CPU (and its children's) is accounted


def _verify_echo(target: Target) -> dict[str, str]:
    resp = http_request("POST", target.url, BODY, target.headers, timeout=60)
    if resp.status != 200:
        raise BenchError(f"{target.name}: POST {target.url} -> HTTP {resp.status}: {resp.body!r}")
    if json.loads(resp.body) != json.loads(BODY):
        raise BenchError(f"{target.name}: echo returned a different body: {resp.body[:300]!r}")
    return resp.headers


def _measure(
    targets: list[Target],
    opts: Options,
    samples: dict[str, list[WrkResult]],
    errors: dict[str, str],
) -> None:
    """Warm up each target, then `opts.rounds` interleaved runs; a target whose wrk run
    fails is recorded in `errors` and dropped, the others go on."""
    live = list(targets)

    def one(t: Target, duration: float) -> WrkResult | None:
        before = tree_cpu(t.pid) if t.pid else {}
        try:
            res = run_wrk(
                t.url,
                body=BODY,
                headers=t.headers,
                connections=opts.connections,
                threads=opts.wrk_threads,
                duration_s=duration,
            )
        except BenchError as exc:
            log(f"throughput: {t.name} failed: {exc}")
            errors[t.name] = str(exc)
            live.remove(t)
            return None
        if t.pid and res.requests:
            after = tree_cpu(t.pid)
            main = after.get(t.pid, 0.0) - before.get(t.pid, 0.0)
            rest = sum(v - before.get(p, 0.0) for p, v in after.items() if p != t.pid)
            res.cpu_us_per_request = {
                "server_process": main / res.requests * 1e6,
                "its_children": rest / res.requests * 1e6,
                "wrk": res.wrk_cpu_s / res.requests * 1e6,
            }
        return res

    for t in list(live):
        log(f"throughput: warm-up {t.name} ({opts.warmup_s:.0f}s)")
        one(t, opts.warmup_s)
    for rnd in range(opts.rounds):
        order = live if rnd % 2 == 0 else list(reversed(live))
        for t in list(order):
            res = one(t, opts.duration_s)
            if res is None:
                continue
            log(
                f"throughput: round {rnd + 1}/{opts.rounds} {t.name}: {res.rps:,.0f} req/s, "
                f"p50 {res.p50_ms:.2f} ms, p99 {res.p99_ms:.2f} ms, errors {res.errors or 0}"
            )
            samples.setdefault(t.name, []).append(res)


def _summary(runs: list[WrkResult]) -> dict[str, Any]:
    return {
        "rps": median([r.rps for r in runs]),
        "p50_ms": median([r.p50_ms for r in runs]),
        "p99_ms": median([r.p99_ms for r in runs]),
        "errors": sum(r.error_count for r in runs),
        "requests": sum(r.requests for r in runs),
        "cpu_us_per_request": {
            k: median([r.cpu_us_per_request[k] for r in runs if k in r.cpu_us_per_request])
            for k in ("server_process", "its_children", "wrk")
            if any(k in r.cpu_us_per_request for r in runs)
        },
        "runs": [r.to_dict() for r in runs],
    }


@contextlib.contextmanager
def _starlette() -> Iterator[Target]:
    with starlette_server() as (url, proc):
        target = Target("starlette", url, {}, proc.pid)
        _verify_echo(target)
        yield target


@contextlib.contextmanager
def _ray_serve(out: dict[str, Any]) -> Iterator[Target]:
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
    t0 = time.perf_counter()
    proc = Proc(
        [
            python_exe(),
            *("-m", "bench.peers.ray_serve_echo"),
            *("--port", str(port), "--temp-dir", temp_dir),
        ],
        name="ray-serve",
        log_path=Path(tempfile.mkstemp(prefix="bench-ray-", suffix=".log")[1]),
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 180
        while "READY" not in proc.log_tail(200):
            if not proc.alive() or time.monotonic() > deadline:
                raise BenchError("Ray Serve did not start within 180s:\n" + proc.log_tail())
            time.sleep(0.2)
        url = f"http://{HOST}:{port}/echo"
        target = Target("ray_serve", url, {}, proc.pid)
        while True:
            try:
                _verify_echo(target)
                break
            except (OSError, BenchError):
                if not proc.alive() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        out["ray_startup_s"] = time.perf_counter() - t0
        log(f"throughput: Ray Serve ready in {out['ray_startup_s']:.1f}s")
        yield target
    finally:
        leftovers = proc.stop(timeout=60)
        leftovers += kill_matching(temp_dir)
        if leftovers:
            log(f"throughput: killed {len(leftovers)} Ray processes left after shutdown")
            out["ray_leftovers"] = leftovers
        with contextlib.suppress(OSError):
            proc.log_path.unlink()
        shutil.rmtree(temp_dir, ignore_errors=True)


def main(opts: Options) -> dict[str, Any]:
    out: dict[str, Any] = {
        "connections": opts.connections,
        "wrk_threads": opts.wrk_threads,
        "duration_s": opts.duration_s,
        "warmup_s": opts.warmup_s,
        "rounds": opts.rounds,
        "body_bytes": len(BODY),
        "target_ratio": TARGET_RATIO,
        "errors": {},
    }
    if not wrk_available():
        raise BenchError("wrk is not installed (apt-get install -y wrk)")
    phase1: dict[str, list[WrkResult]] = {}
    phase2: dict[str, list[WrkResult]] = {}
    with _starlette() as starlette:
        # phase 1: bare Starlette vs cumulo
        targets = [starlette]
        with contextlib.ExitStack() as stack:
            try:
                plat = stack.enter_context(Platform(idle_timeout=600))
                out["cumulo_startup_s"] = plat.startup_s
                out["cumulo_deploy_s"] = plat.deploy(FUNCTIONS_DIR / "echo.py", "echo")
                cumulo = Target("cumulo", plat.url + plat.invoke_path("echo"), plat.auth, plat.pid)
                headers = _verify_echo(cumulo)
                out["cumulo_first_call_start"] = headers.get("x-cumulo-start", "(missing)")
                headers = _verify_echo(cumulo)
                out["cumulo_second_call_start"] = headers.get("x-cumulo-start", "(missing)")
                targets.append(cumulo)
            except BenchError as exc:
                log(f"throughput: cumulo skipped: {exc}")
                out["errors"]["cumulo"] = str(exc)
                plat = None
            _measure(targets, opts, phase1, out["errors"])
            if plat is not None:
                with contextlib.suppress(BenchError, OSError):
                    out["cumulo_workers_after"] = plat.workers("echo")
                with contextlib.suppress(BenchError, OSError):
                    headers = _verify_echo(cumulo)
                    out["cumulo_after_call_start"] = headers.get("x-cumulo-start", "(missing)")
        if plat is not None and plat.leftovers:
            out["cumulo_leftovers"] = plat.leftovers
        # phase 2: Ray Serve vs bare Starlette
        if opts.ray:
            try:
                with _ray_serve(out) as ray_target:
                    _measure([ray_target, starlette], opts, phase2, out["errors"])
            except BenchError as exc:
                log(f"throughput: Ray Serve skipped: {exc}")
                out["errors"]["ray_serve"] = str(exc)
    out["phase1"] = {name: _summary(runs) for name, runs in phase1.items()}
    out["phase2"] = {name: _summary(runs) for name, runs in phase2.items()}
    _ratios(out)
    return out


def _paired(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Median over rounds of a's req/s divided by b's in the same round (adjacent runs), which
    cancels most of the drift of a shared machine; run i of each list is round i."""
    return median([x["rps"] / y["rps"] for x, y in zip(a["runs"], b["runs"], strict=False)])


def _ratios(out: dict[str, Any]) -> None:
    p1, p2 = out["phase1"], out["phase2"]
    ratios: dict[str, float] = {}
    if "cumulo" in p1 and "starlette" in p1:
        ratios["cumulo_vs_starlette"] = _paired(p1["cumulo"], p1["starlette"])
        ratios["cumulo_vs_starlette_of_medians"] = p1["cumulo"]["rps"] / p1["starlette"]["rps"]
    if "ray_serve" in p2 and "starlette" in p2:
        ratios["ray_serve_vs_starlette"] = _paired(p2["ray_serve"], p2["starlette"])
    if "cumulo" in p1 and "ray_serve" in p2:
        ratios["cumulo_vs_ray_serve"] = p1["cumulo"]["rps"] / p2["ray_serve"]["rps"]
        if "cumulo_vs_starlette" in ratios and "ray_serve_vs_starlette" in ratios:
            # each normalised by the Starlette runs of its own phase (removes drift)
            ratios["cumulo_vs_ray_serve_normalised"] = (
                ratios["cumulo_vs_starlette"] / ratios["ray_serve_vs_starlette"]
            )
    out["ratios"] = ratios
    if "cumulo_vs_starlette" in ratios:
        out["pass"] = ratios["cumulo_vs_starlette"] >= TARGET_RATIO
