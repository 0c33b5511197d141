"""The function the dashboard tests and screenshots deploy (twice: versions 1 and 2)."""

import time

import cumulo


@cumulo.function(timeout_s=5)
def greeter(event: dict, ctx: cumulo.Context) -> dict:
    ctx.log.info("greeted", name=event.get("name"))
    time.sleep(min(float(event.get("sleep_ms", 0)), 500) / 1000)
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"hello": event.get("name", "world"), "version": ctx.function_version}
