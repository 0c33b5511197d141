"""`ctx.ai` inside a function: the platform's built-in AI models, over the worker socket."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class AiClient:
    """`ctx.ai.embed(texts)`: sentence embeddings (all-MiniLM-L6-v2, 384 floats each),
    batched with every other caller of the platform's embedding model."""

    __slots__ = ("_call",)

    def __init__(self, call: Callable[[str, dict[str, Any]], Any]) -> None:
        self._call = call

    def embed(self, texts: str | Sequence[str]) -> list[list[float]]:
        batch = [texts] if isinstance(texts, str) else list(texts)
        return [list(map(float, v)) for v in self._call("ai.embed", {"texts": batch})]
