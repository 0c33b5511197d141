"""The design's first example: state, structured logs, a JSON reply."""

import cumulo


@cumulo.function(memory_mb=256, timeout_s=30, min_instances=0, max_instances=10, concurrency=1)
def hello(event: dict, ctx: cumulo.Context) -> dict:
    n = ctx.state.incr("greetings")
    ctx.log.info("greeted", name=event.get("name"))
    return {"hello": event.get("name", "world"), "n": n}
