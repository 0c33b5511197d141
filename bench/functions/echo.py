"""Benchmark function: return the event unchanged (JSON in, JSON out)."""
# Annotated exactly as in the function-author contract (`event: dict`): the platform may read
# the annotations to pick the calling convention.

import cumulo


@cumulo.function(concurrency=1, max_instances=10)
def echo(event: dict, ctx: cumulo.Context) -> dict:
    return event
