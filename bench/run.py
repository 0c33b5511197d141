"""Run the benchmark suite and write docs/benchmarks.md (+ PNG plots in docs/).

python -m bench.run                       # everything
python -m bench.run --only throughput     # one or more of: throughput, coldstart,
                                          #   memory, auth, app, async, quantum, cli, reliability,
                                          #   gateways, scaleout, scaleout_jobs, websocket
                                          #   (comma-separated)
python -m bench.run --quick               # short runs, to check the suite itself
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bench import coldstart, memory, report, scaleout_bench, throughput
from bench.common import BENCH_DIR, DOCS_DIR, BenchError, Options, log, machine_info, stop_all

BENCHMARKS: dict[str, Callable[[Options], dict[str, Any]]] = {
    "throughput": throughput.main,
    "coldstart": coldstart.main,
    "memory": memory.main,
    "scaleout": scaleout_bench.main,  # issue 12a: 2 gateways vs uvicorn --workers 2 (wrk)
}
# Benchmarks of later issues, each a module with main() -> dict, run after the core ones.
EXTRAS = {
    "auth": "bench.auth",
    "app": "bench.app_bench",
    "async": "bench.async_bench",
    "quantum": "bench.quantum_bench",
    "metering": "bench.metering_bench",
    "batching": "bench.batching_bench",
    "prewarm": "bench.prewarm_bench",
    "anomaly": "bench.anomaly_bench",
    "reliability": "bench.reliability_bench",
    "cli": "bench.cli_startup",  # issue 17: `cumulo --help` / `invoke` vs `python -c pass`
    "gateways": "bench.gateways_bench",  # issue 12c: a change reaching the other gateway
    "scaleout_jobs": "bench.scaleout_jobs",  # issue 12b: async jobs/s, 2 gateways, SIGKILLs
    "lambda": "bench.lambda_bench",  # issue 16: boto3 invoke vs the plain /fn route
    "container": "bench.container_bench",  # issue 14: container images vs crun by hand
    "websocket": "bench.websocket_bench",  # issue 16: WebSocket echo vs bare uvicorn
}
ALL = [*BENCHMARKS, *EXTRAS]


def run_extra(name: str) -> Any:
    """Call an extra benchmark module's main(); a failure is reported, not fatal."""
    module_name = EXTRAS[name]
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        return {"skipped": f"{module_name} does not import: {type(exc).__name__}: {exc}"}
    entry = getattr(module, "main", None)
    if not callable(entry):
        return {"skipped": f"{module_name} has no main()"}
    saved_argv = sys.argv
    sys.argv = [module_name]  # our flags are not its flags
    try:
        result = entry()
    except SystemExit as exc:
        if exc.code not in (0, None):
            return {"skipped": f"{module_name}.main() exited with {exc.code}"}
        result = None
    except Exception as exc:
        return {"skipped": f"{module_name}.main() failed: {type(exc).__name__}: {exc}"}
    finally:
        sys.argv = saved_argv
    return result if result is not None else f"Ran; `{module_name}.main()` returned nothing."


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: processes get stopped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        default=",".join(ALL),
        help=f"comma-separated subset of {','.join(ALL)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="short runs (checks the suite)")
    parser.add_argument("--no-ray", action="store_true", help="leave the Ray Serve peer out")
    parser.add_argument("--duration", type=float, help="seconds per measured wrk run")
    parser.add_argument("--rounds", type=int, help="measured wrk runs per server")
    parser.add_argument(
        "--docs", type=Path, default=DOCS_DIR, help="where benchmarks.md and the plots go"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in selected if s not in ALL]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(ALL)})")
        return 2
    opts = Options.quick() if args.quick else Options()
    if args.quick:
        os.environ.setdefault("CUMULO_BENCH_SOAK_S", "60")  # bench.reliability_bench
        os.environ.setdefault("CUMULO_BENCH_QUICK", "1")  # bench.scaleout_jobs, gateways_bench
    if args.no_ray:
        opts.ray = False
    if args.duration:
        opts.duration_s = args.duration
    if args.rounds:
        opts.rounds = args.rounds

    signal.signal(signal.SIGTERM, _on_sigterm)
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "command": shlex.join(["python", "-m", "bench.run", *sys.argv[1:]]),
        "options": vars(opts).copy(),
    }
    results["load"] = {"start": os.getloadavg()[0]}
    try:
        for name in selected:
            log(f"=== {name}")
            results.setdefault("load", {})[name] = os.getloadavg()[0]
            if name in EXTRAS:
                results[name] = run_extra(name)
                continue
            try:
                results[name] = BENCHMARKS[name](opts)
            except BenchError as exc:
                log(f"{name}: FAILED: {exc}")
                results[name] = {"error": str(exc)}
            except Exception as exc:  # one broken benchmark must not lose the others
                log(f"{name}: FAILED with {type(exc).__name__}: {exc}")
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        stop_all()
    results["elapsed_s"] = time.monotonic() - t0
    results.setdefault("load", {})["end"] = os.getloadavg()[0]

    raw = BENCH_DIR / "results" / "latest.raw"
    with contextlib.suppress(OSError):
        raw.parent.mkdir(exist_ok=True)
        raw.write_text(json.dumps(results, indent=1, default=str))
    path = report.write(results, args.docs)
    print(f"wrote {path} and {raw}")
    print()
    for row in report.summary_rows(results):
        print(f"  {row[0]}: {row[1]} | peer {row[2]} | {row[3]} (target {row[4]}) {row[5]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
