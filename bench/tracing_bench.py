"""What tracing adds to one invocation on the gateway, measured on the instrumentation itself
(no workers, no HTTP): the same calls the invoke path makes, in a tight loop.

python -m bench.tracing_bench [--n 200000]

- `off_ns`: exporter `none` (the default) — the `tracing.enabled` checks the invoke path
  makes (gateway, Platform.invoke, the pool's `timings is None`). Target: under 5 µs.
- `on_us`: an exporter that drops everything — the SDK's cost to make the spans of one cold
  HTTP invocation (gateway, queue wait, cold start, handler) and propagate its context.
  That is what any real exporter costs at least; batching exporters add their export
  thread's work on top.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from cumulo.observability.tracing import (
    CURRENT_INVOCATION,
    Tracing,
    TracingSettings,
    make_tracing,
)
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.timings import Timings
from cumulo.sdk.spec import FunctionConfig

TARGET_OFF_NS = 5000.0
SCOPE = {
    "method": "POST",
    "headers": [
        (b"host", b"127.0.0.1:8080"),
        (b"authorization", b"Bearer cmo_x"),
        (b"content-type", b"application/json"),
        (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ],
}


class DropExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _spec() -> VersionSpec:
    return VersionSpec("default", "fn", 1, Path("."), "m", "a", "event", FunctionConfig())


def off_path(tracing: Tracing, n: int) -> float:
    """ns per invocation for the checks the invoke path makes with tracing off."""
    timings: Timings | None = None
    start = time.perf_counter_ns()
    for _ in range(n):
        if tracing.enabled:  # InvokeApp.__call__
            raise AssertionError
        if tracing.enabled:  # Platform.invoke: begin
            raise AssertionError
        if timings is not None:  # the pool, twice
            raise AssertionError
        if timings is not None:
            raise AssertionError
    return (time.perf_counter_ns() - start) / n


def baseline(n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        pass
    return (time.perf_counter_ns() - start) / n


def on_path(tracing: Tracing, n: int) -> float:
    """µs per invocation for the spans of a cold HTTP invocation."""
    spec = _spec()
    start = time.perf_counter_ns()
    for i in range(n):
        span = tracing.start_gateway(SCOPE, "iid")
        token = CURRENT_INVOCATION.set(span)
        frame: dict[str, Any] = {"id": f"iid{i}"}
        traced = tracing.begin(spec, frame)
        now = time.time_ns()
        t = traced.timings
        t.wait_start, t.wait_end, t.waited = now, now + 1000, True
        t.spawn = (now, now + 900, False)
        t.handler = (now + 1100, now + 2000)
        tracing.end(traced, 200, "ok", True)
        span.set_attribute("http.response.status_code", 200)
        CURRENT_INVOCATION.reset(token)
        span.end()
    return (time.perf_counter_ns() - start) / n / 1000


def main(n: int = 200_000) -> dict[str, Any]:
    off = Tracing()
    off_ns = max(0.0, min(off_path(off, n) for _ in range(3)) - baseline(n))
    # Batched like the otlp exporter, into one that drops: the SDK's cost, not a collector's.
    on = make_tracing(TracingSettings(exporter="console"), exporter=DropExporter())
    on_n = max(1000, n // 20)
    on_path(on, on_n // 10)  # warm-up
    on_us = min(on_path(on, on_n) for _ in range(3))
    result = {
        "off_ns_per_invocation": round(off_ns, 1),
        "off_target_ns": TARGET_OFF_NS,
        "off_ok": off_ns < TARGET_OFF_NS,
        "on_us_per_invocation": round(on_us, 2),
        "spans_per_invocation": 4,
    }
    on.shutdown()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000)
    print(json.dumps(main(parser.parse_args().n), indent=2))
