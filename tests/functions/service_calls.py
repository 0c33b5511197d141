"""Handlers for the service-call tests (tests/test_calls.py), deployed with --handler."""

import os
import time

import cumulo
from cumulo.errors import CircuitOpen


def caller(event, ctx):
    """Calls event["target"] with event["event"]; reports the result or the error it got."""
    before = ctx.remaining_s()
    started = time.monotonic()
    try:
        result = ctx.call(
            event["target"],
            event.get("event"),
            timeout=event.get("timeout"),
            retries=event.get("retries", 0),
        )
    except cumulo.ApiError as exc:
        return {
            "error": type(exc).__name__,
            "status": exc.status,
            "code": exc.code,
            "message": exc.message,
            "details": exc.details,
            "circuit_open": isinstance(exc, CircuitOpen),
            "elapsed": time.monotonic() - started,
        }
    return {"ok": result, "remaining_before": before, "elapsed": time.monotonic() - started}


def remaining(event, ctx):
    return {"remaining": ctx.remaining_s(), "got": event}


def flaky(event, ctx):
    """Crashes its worker when asked, else answers: a target whose health the test steers."""
    if event.get("crash"):
        os._exit(7)
    return {"fine": True, "n": ctx.state.incr("served")}


def recurse(event, ctx):
    """Calls itself until the platform refuses; returns how deep it got."""
    depth = int(event.get("depth", 0))
    try:
        return ctx.call(ctx.function_name, {"depth": depth + 1})
    except cumulo.BadRequest as exc:
        return {"deepest": depth, "code": exc.code}
