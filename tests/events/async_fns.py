"""Functions the events integration tests deploy with --handler async_fns.NAME."""

import contextlib
import time

import cumulo


@cumulo.function(timeout_s=10, max_instances=4)
def once(event: dict, ctx: cumulo.Context) -> dict:
    """The idempotent side effect of the chaos test: `done:<invocation id>` is written once
    however often the job is delivered (expected_version=0: only if absent); `runs` counts
    every execution, redeliveries included."""
    if event.get("count"):
        return {"done": ctx.state.list("done:", limit=10000), "runs": ctx.state.get("runs", 0)}
    # A redelivery after a crash finds the key already there: the effect happened once.
    with contextlib.suppress(cumulo.StateConflict):
        ctx.state.put(f"done:{ctx.invocation_id}", event.get("n"), expected_version=0)
    ctx.state.incr("runs")
    # Work after the side effect: a SIGKILL landing here makes the job run again although
    # its effect is already written, which is what the exactly-once check is about.
    time.sleep(float(event.get("sleep", 0)))
    return {"n": event.get("n"), "id": ctx.invocation_id}


@cumulo.function(timeout_s=5)
def fails_until_fixed(event: dict, ctx: cumulo.Context) -> dict:
    """500 (a retryable error) until the state key `fixed` is set."""
    ctx.state.incr("calls")
    if event.get("fix"):
        ctx.state.put("fixed", True)
        return {"fixed": True}
    if not ctx.state.get("fixed", False):
        raise RuntimeError("not fixed yet")
    return {"ok": True}


@cumulo.schedule("* * * * *")
def every_minute(event: dict, ctx: cumulo.Context) -> dict:
    if event.get("count"):
        return {"fired": ctx.state.list("slot:")}
    # One key per (slot, job): a slot fired twice would leave two keys for one slot, while a
    # redelivery of the same job writes the same key again.
    ctx.state.put(f"slot:{event['data']['slot']}:{ctx.invocation_id}", 1)
    return {}
