"""`GET /ai/v1/models[/{model}]`: the OpenAI models API over the embedding models this
platform serves, so `OpenAI(base_url=…/ai/v1).models.list()` finds what
`/ai/v1/embeddings` takes. `invoke` scope, like the embeddings route it describes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from cumulo.ai.system_models import EMBEDDING_ALIASES, EMBEDDING_MODEL
from cumulo.errors import NotFound
from cumulo.security.auth import principal_of

# A built-in model has no deploy time; OpenAI's schema wants an integer, and a fixed one
# keeps the listing stable across restarts.
CREATED = 0


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": "cumulo"}


def build_router() -> APIRouter:
    router = APIRouter(tags=["ai"])

    @router.get("/ai/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        """The embedding models `/ai/v1/embeddings` serves (OpenAI's list shape)."""
        principal_of(request.scope).require("invoke")
        return {"object": "list", "data": [_model(EMBEDDING_MODEL)]}

    def one(request: Request, model: str) -> dict[str, Any]:
        principal_of(request.scope).require("invoke")
        if model not in EMBEDDING_ALIASES:
            raise NotFound(
                f"model {model!r} not found: this platform serves {EMBEDDING_MODEL}",
                code="model_not_found",
            )
        return _model(model)

    @router.get("/ai/v1/models/{model}")
    async def get_model(request: Request, model: str) -> dict[str, Any]:
        return one(request, model)

    # Hugging Face ids have an owner: `sentence-transformers/all-MiniLM-L6-v2`.
    @router.get("/ai/v1/models/{owner}/{model}")
    async def get_owned_model(request: Request, owner: str, model: str) -> dict[str, Any]:
        return one(request, f"{owner}/{model}")

    return router
