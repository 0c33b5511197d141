"""Returns its event unchanged: the function the throughput benchmark measures."""

import cumulo


@cumulo.function(concurrency=1, max_instances=4)
def echo(event: dict, ctx: cumulo.Context) -> dict:
    return event
