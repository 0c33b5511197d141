"""Warm invoke throughput with metering on versus `cumulo up --no-metering`.

Issue target: metering on >= 97% of the throughput with it off, same run. Two platforms
(one each way) serve the same echo function; wrk drives them alternately, round by round
(bench.common.interleaved_ratio), and the median of per-round ratios is reported. Also
measured in-process: what `Meter.observe` (the per-invocation hot-path work) costs.

python -m bench.metering_bench [--rounds 4] [--duration 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import bench.common as common
from bench.common import FUNCTIONS_DIR, BenchError, Platform, interleaved_ratio, log, run_wrk
from cumulo.metering.meter import Meter
from cumulo.observability.outcomes import Outcome

BODY = json.dumps({"user": "ada", "items": [1, 2, 3], "nested": {"a": 1}}).encode()
TARGET = 0.97


class FlaggedPlatform(Platform):
    """bench.common.Platform with extra `cumulo up` flags (appended to the argv that
    Platform.start hands to Proc, the only process it starts)."""

    def __init__(self, *flags: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flags = flags

    def start(self) -> Platform:
        with _flags_appended(self.flags):
            return super().start()


@contextlib.contextmanager
def _flags_appended(flags: tuple[str, ...]) -> Iterator[None]:
    original = common.Proc.__init__

    def patched(self: common.Proc, argv: Any, **kwargs: Any) -> None:
        original(self, [*argv, *flags], **kwargs)

    common.Proc.__init__ = patched  # type: ignore[method-assign]
    try:
        yield
    finally:
        common.Proc.__init__ = original  # type: ignore[method-assign]


def observe_ns(n: int = 200_000) -> float:
    """ns per Meter.observe call (one function, one hour: the steady state)."""
    meter = Meter(time.time)
    outcome = Outcome(
        id="x",
        namespace="default",
        function="echo",
        version=1,
        status=200,
        code="ok",
        cold=False,
        started_at=time.time(),
        duration_s=0.0004,
        cpu_s=0.0001,
        peak_rss_mb=40.0,
        memory_mb=256,
        bytes_in=60,
        bytes_out=60,
    )
    observe = meter.observe
    start = time.perf_counter_ns()
    for _ in range(n):
        observe(outcome)
    return (time.perf_counter_ns() - start) / n


def _deploy(plat: Platform) -> str:
    done = subprocess.run(
        [common.cumulo_exe(), "deploy", str(FUNCTIONS_DIR / "echo.py"), "--name", "echo"],
        env=plat.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"deploy failed: {done.stderr.strip()[-400:]}")
    return f"{plat.url}/fn/default/echo"


def main(rounds: int = 4, duration_s: float = 8.0) -> dict[str, Any]:
    per_call_ns = observe_ns()
    log(f"Meter.observe: {per_call_ns:.0f} ns per invocation")
    with (
        FlaggedPlatform(idle_timeout=600, label="cumulo (metering on)") as on,
        FlaggedPlatform("--no-metering", idle_timeout=600, label="cumulo (metering off)") as off,
    ):
        on_url, off_url = _deploy(on), _deploy(off)
        for url, plat in ((on_url, on), (off_url, off)):
            run_wrk(url, body=BODY, headers=plat.auth, duration_s=2)  # warm-up
        pair = interleaved_ratio(
            "metering",
            ("metering on", on_url, on.auth),
            ("metering off", off_url, off.auth),
            body=BODY,
            rounds=rounds,
            duration_s=duration_s,
        )
        usage = common.http_request(
            "GET", f"{on.url}/v1/usage?namespace=default", headers=on.auth
        ).json()
    return {
        "metering_on_req_s": pair.a_rps,
        "metering_off_req_s": pair.b_rps,
        "ratio_median_of_rounds": pair.ratio,
        "target": f">= {TARGET}",
        "pass": pair.ratio >= TARGET,
        "observe_ns_per_invocation": round(per_call_ns, 1),
        "metered_invocations": usage["total"]["invocations"],
        "rounds": rounds,
        "duration_s": duration_s,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    print(json.dumps(main(args.rounds, args.duration), indent=2))
