"""Worker requests under `ai.` (Platform.handle_rpc): `ctx.ai.embed(texts)`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cumulo.ai.embeddings import check_texts, embed
from cumulo.errors import BadRequest

if TYPE_CHECKING:
    from cumulo.gateway.platform import Platform


async def handle_ai_call(platform: Platform, namespace: str, op: str, args: dict[str, Any]) -> Any:
    if op == "ai.embed":
        vectors, _ = await embed(platform.models, check_texts(args.get("texts")), None)
        return vectors
    raise BadRequest(f"unknown operation {op!r}")
