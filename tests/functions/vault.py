"""Handlers for the encryption-at-rest tests: values arrive in the event, never in the code,
so the bundle stored in the data dir cannot hold a canary. State is per function, so one
handler both keeps and fetches."""

import cumulo


def vault(event, ctx):
    if event.get("op") == "keep":
        ctx.state.put(event["key"], event["value"])
        return {"count": ctx.state.incr("writes")}
    return {"value": ctx.state.get(event["key"]), "writes": ctx.state.get("writes")}


@cumulo.function(secrets=["CANARY_SECRET"])
def reveal(event: dict, ctx: cumulo.Context) -> dict:
    return {"secret": ctx.secrets["CANARY_SECRET"]}
