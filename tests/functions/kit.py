"""Handlers the integration tests deploy one at a time with --handler kit.NAME."""

import ctypes
import os
import time

import cumulo


@cumulo.function(timeout_s=5)
def echo(event: dict, ctx: cumulo.Context) -> dict:
    return event


def whoami(event, ctx):
    return {"pid": os.getpid(), "version": ctx.function_version, "env": dict(ctx.env)}


def sleepy(event, ctx):
    time.sleep(float(event.get("s", 0.2)))
    return {"pid": os.getpid()}


def boom(event, ctx):
    raise ValueError(f"boom: {event.get('why', 'no reason')}")


def crash(event, ctx):
    if event.get("how") == "segv":
        ctypes.string_at(0)
    os._exit(7)


def hog(event, ctx):
    blocks = [bytearray(32 * 1024 * 1024) for _ in range(int(event.get("n", 100)))]
    return len(blocks)


def spin(event, ctx):
    while True:
        pass


def big(event, ctx):
    return "x" * int(event["n"])


def counter(event, ctx):
    return {"n": ctx.state.incr(event.get("key", "hits"))}


def state_ops(event, ctx):
    s = ctx.state
    first = s.put("doc", {"a": 1})
    item = s.get_item("doc")
    second = s.put("doc", {"a": 2}, expected_version=item.version)
    try:
        s.put("doc", {"a": 3}, expected_version=first)
        conflict = None
    except cumulo.StateConflict as exc:
        conflict = str(exc)
    s.put("user:1", 1)
    s.put("user:2", 2)
    return {
        "first": first,
        "second": second,
        "value": s.get("doc"),
        "missing": s.get("nope", "default"),
        "conflict": conflict,
        "users": s.list("user:"),
        "deleted": s.delete("user:1"),
        "after_delete": s.list("user:"),
    }


@cumulo.function(secrets=["API_TOKEN"])
def secret(event: dict, ctx: cumulo.Context) -> dict:
    return {"token": ctx.secrets["API_TOKEN"], "undeclared": "OTHER" in ctx.secrets}


def talk(event, ctx):
    ctx.log.info("structured line", order=event.get("order"))
    print("a printed line")
    return {"ok": True}


def raw(request: cumulo.Request, ctx: cumulo.Context) -> cumulo.Response:
    return cumulo.Response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": request.text(),
            "has_auth": "authorization" in request.headers,
        },
        status=201,
        headers={"x-custom": "yes"},
    )


def aws(event, context):
    return {
        "statusCode": 202,
        "headers": {"content-type": "text/plain"},
        "body": f"hello {event.get('name')} ({context.aws_request_id[:4]})",
    }


async def async_echo(event, ctx):
    return {"async": True, **event}


def slow_then(event, ctx):
    time.sleep(float(event.get("s", 0.3)))
    if event.get("then") == "crash":
        os._exit(1)
    if event.get("then") == "hang":
        time.sleep(60)
    return {"pid": os.getpid()}
