"""A cumulo function (decorated): --event-format is not for it."""

import cumulo


@cumulo.function()
def plain(event: dict, ctx: cumulo.Context) -> dict:
    return event
