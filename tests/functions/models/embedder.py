"""A function that embeds its texts with the platform's built-in model."""

import cumulo


@cumulo.function(name="embedder")
def embedder(event: dict, ctx: cumulo.Context) -> dict:
    vectors = ctx.ai.embed(event["texts"])
    return {"vectors": vectors}
