"""Issue 12, row 12a: warm throughput of `cumulo up --gateways 2` (two gateway processes on
one port, SO_REUSEPORT) against one gateway and against the bare Starlette app on
`uvicorn --workers 2`, on this machine's cores.

Same JSON echo function, body and wrk settings as row 1 (bench/throughput.py, whose
machinery this reuses): a warm-up per server, then `rounds` interleaved runs (bare 2
workers, cumulo 2 gateways, cumulo 1 gateway, bare 1 worker; the order reversed every
round), and the ratios are medians of per-round ratios. wrk runs on the same cores as the
servers (one wrk thread), so neither side gets two whole cores.

uvicorn's 2 workers accept from one shared socket, so a round may find all 32 wrk
connections on one worker (about 1-worker speed) or split (about 2×): the per-run numbers
show which; SO_REUSEPORT spreads cumulo's connections by hash, evenly on average.

Target: 2 gateways ≥ 0.9× bare Starlette with 2 workers. Informative: 2 gateways / 1
gateway, and bare 2 workers / bare 1 worker (how much a second process buys here at all).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from bench.common import (
    FUNCTIONS_DIR,
    BenchError,
    Options,
    Platform,
    WrkResult,
    http_request,
    log,
    starlette_server,
    wrk_available,
)
from bench.throughput import BODY, Target, _measure, _paired, _summary, _verify_echo

TARGET_RATIO = 0.90  # 2 gateways / bare Starlette on 2 uvicorn workers
READY_CALLS = 20  # fresh connections in a row that must all be served (both gateways)
READY_TIMEOUT_S = 30.0


@contextlib.contextmanager
def _bare(workers: int) -> Iterator[Target]:
    with starlette_server(workers) as (url, proc):
        target = Target(f"starlette_{workers}w", url, {}, proc.pid)
        _verify_echo(target)
        yield target


def _served_everywhere(target: Target) -> None:
    """Each call on a new connection lands on whichever gateway the kernel picks: wait
    until READY_CALLS in a row answer, so both gateways have the deployed function."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    in_a_row = 0
    last = ""
    while in_a_row < READY_CALLS:
        if time.monotonic() > deadline:
            raise BenchError(f"{target.name}: echo not served by every gateway ({last})")
        resp = http_request("POST", target.url, BODY, target.headers, timeout=30)
        if resp.status == 200 and json.loads(resp.body) == json.loads(BODY):
            in_a_row += 1
        else:
            in_a_row, last = 0, f"HTTP {resp.status}: {resp.body[:120]!r}"
            time.sleep(0.05)


@contextlib.contextmanager
def _cumulo(gateways: int, out: dict[str, Any]) -> Iterator[Target]:
    extra = ["--gateways", str(gateways)] if gateways > 1 else []
    name = f"cumulo_{gateways}g"
    with Platform(idle_timeout=600, label=name, extra=extra) as plat:
        out[f"{name}_startup_s"] = plat.startup_s
        plat.deploy(FUNCTIONS_DIR / "echo.py", "echo")
        target = Target(name, plat.url + plat.invoke_path("echo"), plat.auth, plat.pid)
        _served_everywhere(target)
        yield target
    if plat.leftovers:
        out[f"{name}_leftovers"] = plat.leftovers


def _cpu_total(summary: dict[str, Any]) -> float | None:
    """CPU µs per request of the server's whole process tree (supervisor, gateways or
    uvicorn workers, cumulo's zygotes and workers)."""
    cpu = summary.get("cpu_us_per_request") or {}
    if "server_process" not in cpu:
        return None
    return float(cpu["server_process"] + cpu.get("its_children", 0.0))


def main(opts: Options | None = None) -> dict[str, Any]:
    opts = opts or Options()
    if not wrk_available():
        raise BenchError("wrk is not installed (apt-get install -y wrk)")
    out: dict[str, Any] = {
        "connections": opts.connections,
        "wrk_threads": opts.wrk_threads,
        "duration_s": opts.duration_s,
        "warmup_s": opts.warmup_s,
        "rounds": opts.rounds,
        "body_bytes": len(BODY),
        "target_ratio": TARGET_RATIO,
        "note": "wrk (1 thread) shares the machine's cores with the servers",
        "errors": {},
    }
    samples: dict[str, list[WrkResult]] = {}
    with contextlib.ExitStack() as stack:
        targets = [
            stack.enter_context(_bare(2)),
            stack.enter_context(_cumulo(2, out)),
            stack.enter_context(_cumulo(1, out)),
            stack.enter_context(_bare(1)),
        ]
        _measure(targets, opts, samples, out["errors"])
    runs = {name: _summary(r) for name, r in samples.items()}
    out["servers"] = runs
    ratios: dict[str, float] = {}
    for key, a, b in (
        ("gateways2_vs_starlette_2w", "cumulo_2g", "starlette_2w"),
        ("gateways2_vs_gateways1", "cumulo_2g", "cumulo_1g"),
        ("gateways1_vs_starlette_1w", "cumulo_1g", "starlette_1w"),
        ("starlette_2w_vs_1w", "starlette_2w", "starlette_1w"),
    ):
        if a in runs and b in runs:
            ratios[key] = _paired(runs[a], runs[b])
    out["ratios"] = ratios
    out["cpu_us_per_request_total"] = {name: _cpu_total(s) for name, s in runs.items()}
    if "gateways2_vs_starlette_2w" in ratios:
        out["pass"] = ratios["gateways2_vs_starlette_2w"] >= TARGET_RATIO
        log(
            "scaleout: 2 gateways / bare 2 workers "
            f"{ratios['gateways2_vs_starlette_2w']:.3f}×, 2 gateways / 1 gateway "
            f"{ratios.get('gateways2_vs_gateways1', float('nan')):.3f}×"
        )
    return out


if __name__ == "__main__":
    print(json.dumps(main(Options()), indent=2, default=str))
