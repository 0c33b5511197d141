"""Raises from a helper: a failed invocation with two user frames in its traceback."""

import cumulo


def helper(x: int) -> float:
    return 1 / x


@cumulo.function()
def dx_boom(event: dict[str, int], ctx: cumulo.Context) -> dict[str, float]:
    return {"r": helper(event.get("x", 0))}
