"""The OpenTelemetry side of tracing, imported only when an exporter is configured
(the SDK costs the gateway ~9 MB of memory). See `cumulo.observability.tracing`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cumulo.observability.tracing import (
    CURRENT_INVOCATION,
    DEFAULT_OTLP_ENDPOINT,
    Tracing,
    TracingSettings,
    traceparent_of,
)
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.timings import Timings

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]  # starlette.types.Send

_PROPAGATOR = TraceContextTextMapPropagator()
# An explicit root: asyncio tasks may inherit a stale OpenTelemetry context (a worker's
# socket callbacks run in the context of the task that connected it), so spans that start
# a trace never fall back to "the current context".
ROOT = otel_context.Context()


def extract(traceparent: str | None, tracestate: str | None = None) -> otel_context.Context:
    """The remote parent named by W3C headers, or ROOT when absent or invalid (then a new
    trace starts, as the W3C spec asks)."""
    if not traceparent:
        return ROOT
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _PROPAGATOR.extract(carrier)


def _job_created_ns(job_id: str) -> int | None:
    """Job ids start with 14 hex digits of microseconds since the epoch (events/queue.py)."""
    try:
        return int(job_id[:14], 16) * 1000
    except ValueError:
        return None


@dataclass(slots=True)
class InvocationTrace:
    span: Span
    owned: bool  # opened by Platform.invoke (a ctx.call callee): ended there too
    invocation_id: str
    timings: Timings


class OtelTracing(Tracing):
    def __init__(
        self, settings: TracingSettings | None = None, *, exporter: SpanExporter | None = None
    ) -> None:
        """`exporter` replaces the one the settings name (benchmarks, embedding)."""
        self.settings = settings or TracingSettings()
        self.enabled = self.settings.exporter != "none"
        self.memory: InMemorySpanExporter | None = None
        # Invocations in flight → their span: a ctx.call rpc names only its caller's id.
        self._live: dict[str, Span] = {}
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer = trace.NoOpTracer()
        if not self.enabled:
            return
        provider = TracerProvider(
            resource=Resource.create({"service.name": self.settings.service_name})
        )
        provider.add_span_processor(
            BatchSpanProcessor(exporter) if exporter is not None else self._processor()
        )
        self._provider = provider
        self._tracer = provider.get_tracer("cumulo")

    def _processor(self) -> SimpleSpanProcessor | BatchSpanProcessor:
        exporter_name = self.settings.exporter
        if exporter_name == "memory":
            # Synchronous: a test reads the spans right after its request returns.
            self.memory = InMemorySpanExporter()
            return SimpleSpanProcessor(self.memory)
        exporter: SpanExporter
        if exporter_name == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=self.settings.endpoint or DEFAULT_OTLP_ENDPOINT)
        # Batched on the SDK's own thread: exporting never blocks the event loop.
        return BatchSpanProcessor(exporter)

    def shutdown(self) -> None:
        """Flush what is batched and stop the exporter (at platform stop)."""
        if self._provider is not None:
            self._provider.shutdown()

    # ------------------------------------------------------------ the HTTP gateway
    def start_gateway(self, scope: Mapping[str, Any], invocation_id: str) -> Span:
        traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                tracestate = value.decode("latin-1")
        return self._tracer.start_span(
            "gateway",
            context=extract(traceparent, tracestate),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": str(scope["method"]),
                "http.route": "/fn/{namespace}/{name}",
                "cumulo.invocation_id": invocation_id,
            },
        )

    def gateway_send(self, send: Send, span: Span) -> Send:
        """`send` that records the response status on `span` and tells the client its trace."""
        trace_id = span.get_span_context().trace_id
        header = (b"x-cumulo-trace-id", f"{trace_id:032x}".encode())

        async def traced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                span.set_attribute("http.response.status_code", status)
                # Unless Platform.invoke already said why (with the error code).
                current = getattr(span, "status", None)
                if status >= 500 and (current is None or current.is_unset):
                    span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        return traced_send

    @staticmethod
    def user_headers(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A Request handler's or ASGI app's headers: `traceparent` names the invocation span
        (the client's own parent is the gateway span's parent; its tracestate stays)."""
        span = CURRENT_INVOCATION.get()
        if span is None:
            return pairs
        kept = [(k, v) for k, v in pairs if k != "traceparent"]
        kept.append(("traceparent", traceparent_of(span)))
        return kept

    # ------------------------------------------------------------ Platform.invoke
    def begin(self, spec: VersionSpec, frame: dict[str, Any]) -> InvocationTrace:
        span = CURRENT_INVOCATION.get()
        owned = span is None
        if span is None:
            span = self._tracer.start_span("invoke", kind=SpanKind.SERVER)
        invocation_id = str(frame["id"])
        span.set_attributes(
            {
                "cumulo.invocation_id": invocation_id,
                "cumulo.namespace": spec.namespace,
                "cumulo.function": spec.function,
                "cumulo.version": spec.version,
            }
        )
        # The worker reports its handler's start and end when the frame has this, and hands
        # it to user code as ctx.traceparent.
        frame["tp"] = traceparent_of(span)
        self._live[invocation_id] = span
        return InvocationTrace(span, owned, invocation_id, Timings())

    def end(self, invocation: InvocationTrace, status: int, code: str, cold: bool) -> None:
        self._live.pop(invocation.invocation_id, None)
        span = invocation.span
        if span.is_recording():
            span.set_attribute("cumulo.cold", cold)
            if invocation.owned:
                span.set_attribute("cumulo.status", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, code))
            self._children(span, invocation.timings)
        if invocation.owned:
            span.end()

    def _children(self, span: Span, t: Timings) -> None:
        parent = trace.set_span_in_context(span)
        tracer = self._tracer
        if t.waited and t.wait_end:
            wait = tracer.start_span("queue wait", context=parent, start_time=t.wait_start)
            if t.spawn is not None:
                begun, ready, zygote = t.spawn
                # A worker started for an earlier waiter may serve this one: clamp its start.
                cold = tracer.start_span(
                    "cold start",
                    context=trace.set_span_in_context(wait),
                    start_time=max(begun, t.wait_start),
                    attributes={"cumulo.zygote_started": zygote},
                )
                cold.end(end_time=max(ready, t.wait_start))
            wait.end(end_time=t.wait_end)
        handler = t.handler
        reported = handler is not None
        if handler is None and t.sent and t.replied:
            handler = (t.sent, t.replied)  # no report (ASGI, a crash): the gateway's view
        if handler is not None:
            h = tracer.start_span(
                "handler",
                context=parent,
                start_time=handler[0],
                attributes={"cumulo.handler.reported": reported},
            )
            h.end(end_time=handler[1])

    # ------------------------------------------------------------ ctx.call
    def start_call(
        self, caller_id: str, target: str, callee_id: str
    ) -> tuple[Span, contextvars.Context]:
        """A client span under the caller's invocation span, and a context for the callee's
        task in which Platform.invoke opens the callee's server span as its child."""
        caller = self._live.get(caller_id)
        span = self._tracer.start_span(
            "ctx.call",
            context=trace.set_span_in_context(caller) if caller is not None else ROOT,
            kind=SpanKind.CLIENT,
            attributes={"cumulo.call.target": target, "cumulo.call.invocation_id": callee_id},
        )
        # A fresh copy, not the rpc task's own context: that one was captured when the
        # caller's worker connected and may hold another invocation's span.
        ctx = contextvars.copy_context()
        ctx.run(_enter_call, span)
        return span, ctx

    @staticmethod
    def end_call(span: Span, error: BaseException | None) -> None:
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            status = getattr(error, "status", None)
            if isinstance(status, int):
                span.set_attribute("cumulo.call.status", status)
        span.end()

    # ------------------------------------------------------------ async jobs
    def start_enqueue(
        self,
        namespace: str,
        function: str,
        job_id: str,
        traceparent: str | None,
        tracestate: str | None,
    ) -> Span:
        return self._tracer.start_span(
            "enqueue",
            context=extract(traceparent, tracestate),
            kind=SpanKind.PRODUCER,
            attributes={
                "cumulo.namespace": namespace,
                "cumulo.function": function,
                "cumulo.job_id": job_id,
            },
        )

    def start_job(
        self,
        job_id: str,
        attempt: int,
        stored: tuple[str, str | None] | None,
        now_ns: int,
    ) -> Span:
        """The span of one attempt of an async job: a child of, and linked to, its enqueue
        span when the job was enqueued traced. The first attempt's span starts at the
        enqueue and holds a `queue wait` span up to now; later attempts start now."""
        parent = extract(*stored) if stored is not None else ROOT
        links = []
        remote = trace.get_current_span(parent).get_span_context()
        if remote.is_valid:
            links.append(Link(remote))
        created = _job_created_ns(job_id) if attempt == 1 else None
        start = created if created is not None and created <= now_ns else now_ns
        span = self._tracer.start_span(
            "async job",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            start_time=start,
            attributes={"cumulo.job_id": job_id, "cumulo.attempt": attempt},
        )
        if start < now_ns:
            wait = self._tracer.start_span(
                "queue wait", context=trace.set_span_in_context(span), start_time=start
            )
            wait.end(end_time=now_ns)
        return span

    @staticmethod
    def end_job(span: Span, status: int) -> None:
        span.set_attribute("cumulo.status", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    # ------------------------------------------------------------ tests
    def finished_spans(self) -> list[dict[str, Any]]:
        """The memory exporter's spans as JSON-ready dicts (`GET /v1/debug/spans`)."""
        if self.memory is None:
            return []
        return [span_json(s) for s in self.memory.get_finished_spans()]


def _enter_call(span: Span) -> None:
    CURRENT_INVOCATION.set(None)
    # Never detached: the context this runs in belongs to the callee's task alone.
    otel_context.attach(trace.set_span_in_context(span))


def span_json(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
        "status": span.status.status_code.name,
    }
