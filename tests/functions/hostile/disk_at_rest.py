"""Writes state under a key name it is sent, logs a line and returns a result built from
the event, and fails with a message built from it: every distinctive string arrives in the
request, so none is in the bundle the data dir keeps."""

import cumulo


@cumulo.function(max_attempts=1)
def disk_at_rest(event: dict, ctx: cumulo.Context) -> dict:
    seed = event["seed"]
    if event.get("op") == "read":
        return {
            "value": ctx.state.get(f"{seed}-KEY"),
            "hits": ctx.state.get(f"{seed}-COUNTER"),
            "keys": ctx.state.list(prefix=seed),
        }
    if event.get("op") == "fail":
        raise ValueError(f"{seed}-ERROR")
    ctx.state.put(f"{seed}-KEY", f"{seed}-VALUE")
    ctx.state.incr(f"{seed}-COUNTER")
    ctx.log.info(f"{seed}-LOGLINE", detail=f"{seed}-FIELD")
    print(f"{seed}-PRINTED")
    return {"result": f"{seed}-RESULT"}
