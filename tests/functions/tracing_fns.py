"""Handlers for the tracing tests (tests/test_tracing.py), deployed with --handler."""

import cumulo


def whoami(event, ctx):
    return {"traceparent": ctx.traceparent, "id": ctx.invocation_id}


def caller(event, ctx):
    return {"traceparent": ctx.traceparent, "callee": ctx.call(event["target"], {})}


def raw(request: cumulo.Request, ctx: cumulo.Context) -> cumulo.Response:
    return cumulo.Response(
        {"header": request.headers.get("traceparent"), "ctx": ctx.traceparent}, status=200
    )
