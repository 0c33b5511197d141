"""Benchmark function that imports numpy at module level (full cold start cost)."""

import numpy as np

import cumulo


@cumulo.function(concurrency=1, max_instances=10)
def numpy_sum(event: dict, ctx: cumulo.Context) -> dict:
    n = int(event.get("n", 10))
    return {"n": n, "sum": float(np.arange(n).sum())}
