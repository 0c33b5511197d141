"""Functions the topics integration tests deploy with --handler topic_fns.NAME.

A subscriber counts each event it gets (`n:<event id>`) and keeps the last copy
(`ev:<event id>`); invoked directly with `{"count": true}` it reports both."""

from typing import Any

import cumulo
from cumulo.sdk.on import on  # `cumulo.on` once the package exports it


def record(event: dict, ctx: cumulo.Context) -> dict:
    if event.get("count"):
        return {
            "counts": {k[2:]: ctx.state.get(k) for k in ctx.state.list("n:")},
            "events": {k[3:]: ctx.state.get(k) for k in ctx.state.list("ev:")},
        }
    ctx.state.incr(f"n:{event['id']}")
    ctx.state.put(f"ev:{event['id']}", event)
    return {}


@on("orders.created")
def sub_a(event: dict, ctx: cumulo.Context) -> dict:
    return record(event, ctx)


@on("orders.created")
@on("orders.cancelled")
def sub_b(event: dict, ctx: cumulo.Context) -> dict:
    return record(event, ctx)


@cumulo.function(timeout_s=10)
def publisher(event: dict, ctx: cumulo.Context) -> Any:
    """Publishes `data` to `topic` (default orders.created); a refused publish answers the
    gateway's message instead of failing the invocation."""
    try:
        event_id = ctx.publish(
            event.get("topic", "orders.created"),
            event.get("data"),
            type=event.get("type"),
            subject=event.get("subject"),
            id=event.get("id"),
        )
    except Exception as exc:
        return {"error": str(exc)}
    return {"id": event_id, "source": f"/cumulo/{ctx.namespace}/{ctx.function_name}"}
