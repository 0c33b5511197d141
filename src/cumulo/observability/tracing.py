"""Tracing: OpenTelemetry spans for the gateway, queue waits, cold starts, handlers, async
jobs and `ctx.call`, with W3C trace context (`traceparent`, `tracestate`) in and out.

Off by default (exporter `none`): then no span, id or header is made anywhere and the
invoke path pays one attribute check (`tracing.enabled`) per invocation. With an exporter
every invocation is sampled unless an incoming `traceparent` says it is not (parent-based).

The spans of one invocation:

    gateway (SERVER; HTTP)  |  invoke (SERVER; a ctx.call callee)  |  async job (CONSUMER)
      ├─ queue wait            waiting for a worker slot (async jobs: from the enqueue)
      │    └─ cold start       the worker (and maybe zygote) started for this invocation
      ├─ handler               the worker's own start and end of the handler
      └─ ctx.call (CLIENT)     one per attempt, parent of the callee's `invoke` span

User code sees the invocation span as its parent: `ctx.traceparent`, and the `traceparent`
header for `cumulo.Request` handlers and ASGI apps. Queue-wait, cold-start and handler
spans are made after the fact from times the pool and the worker record (`Timings`), so
neither the pool nor the worker knows about OpenTelemetry.

Spans live in this (the gateway) process only: the tracer provider is our own, never the
global one, so user code and libraries in the gateway process are not affected.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from cumulo.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from cumulo.runtime.spec import VersionSpec

EXPORTERS = ("none", "console", "otlp", "memory")
DEFAULT_OTLP_ENDPOINT = "http://localhost:4318/v1/traces"
ENV_EXPORTER = "CUMULO_TRACE_EXPORTER"
ENV_ENDPOINT = "CUMULO_TRACE_ENDPOINT"

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]  # starlette.types.Send

# The invocation span its entry point opened and will end itself (the gateway's, an async
# job's). Unset: Platform.invoke opens an `invoke` span under the current OpenTelemetry
# context (a ctx.call's client span) and ends it. A ContextVar because Platform.invoke's
# signature is shared by every way in; each entry point sets it in its own task.
CURRENT_INVOCATION: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "cumulo_invocation_span", default=None
)


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """`cumulo up --trace-exporter none|console|otlp|memory [--trace-endpoint URL]`.

    `memory` keeps finished spans in the gateway for tests (`GET /v1/debug/spans`)."""

    exporter: str = "none"
    endpoint: str | None = None  # otlp only: the collector's OTLP/HTTP traces URL
    service_name: str = "cumulo"

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise ConfigError(
                f"unknown trace exporter {self.exporter!r}; use one of {', '.join(EXPORTERS)}"
            )
        if self.endpoint is not None and self.exporter != "otlp":
            raise ConfigError("--trace-endpoint is only for --trace-exporter otlp")
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"the trace endpoint must be an http(s) URL, not {self.endpoint!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TracingSettings:
        """CUMULO_TRACE_EXPORTER / CUMULO_TRACE_ENDPOINT, for when no flag says otherwise."""
        return cls(exporter=env.get(ENV_EXPORTER) or "none", endpoint=env.get(ENV_ENDPOINT) or None)


def traceparent_of(span: Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


class Tracing:
    """Tracing switched off: what every caller holds by default. Callers check `enabled`
    before anything else, so none of the span methods below is ever reached through it;
    `OtelTracing` (tracing_otel.py) implements them."""

    enabled = False
    memory: Any = None

    def shutdown(self) -> None:
        return None

    def finished_spans(self) -> list[dict[str, Any]]:
        return []

    def _off(self) -> NoReturn:
        raise RuntimeError("tracing is off: check `enabled` first")

    def start_gateway(self, scope: Mapping[str, Any], invocation_id: str) -> Span:
        self._off()

    def gateway_send(self, send: Send, span: Span) -> Send:
        self._off()

    @staticmethod
    def user_headers(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return pairs

    def begin(self, spec: VersionSpec, frame: dict[str, Any]) -> Any:
        self._off()

    def end(self, invocation: Any, status: int, code: str, cold: bool) -> None:
        self._off()

    def start_call(
        self, caller_id: str, target: str, callee_id: str
    ) -> tuple[Span, contextvars.Context]:
        self._off()

    @staticmethod
    def end_call(span: Span, error: BaseException | None) -> None:
        raise RuntimeError("tracing is off: check `enabled` first")

    def start_enqueue(
        self,
        namespace: str,
        function: str,
        job_id: str,
        traceparent: str | None,
        tracestate: str | None,
    ) -> Span:
        self._off()

    def start_job(
        self, job_id: str, attempt: int, stored: tuple[str, str | None] | None, now_ns: int
    ) -> Span:
        self._off()

    @staticmethod
    def end_job(span: Span, status: int) -> None:
        raise RuntimeError("tracing is off: check `enabled` first")


def make_tracing(
    settings: TracingSettings | None = None, *, exporter: SpanExporter | None = None
) -> Tracing:
    """Off (no OpenTelemetry import at all) unless the settings name an exporter."""
    settings = settings or TracingSettings()
    if settings.exporter == "none" and exporter is None:
        return Tracing()
    from cumulo.observability.tracing_otel import OtelTracing

    return OtelTracing(settings, exporter=exporter)


NO_TRACING = Tracing()
