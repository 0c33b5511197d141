"""`POST /ai/v1/embeddings` (OpenAI-compatible) and the `ai.embed` worker operation.

Both send each text through the batcher of the built-in embedding model
(ai/system_models.py), so texts from every caller share batches. The gateway only checks
input and shapes the answer: the model runs in its own zygote and workers.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from cumulo.ai.batching import ModelBatching
from cumulo.ai.system_models import EMBEDDING_ALIASES, EMBEDDING_DIMENSIONS, embedding_spec
from cumulo.errors import BadRequest, NotFound
from cumulo.request_body import read_json
from cumulo.security.auth import principal_of

MAX_TEXTS = 2048  # OpenAI's limit on inputs per request
MAX_TEXT_CHARS = 32_768  # the model reads at most 256 tokens; this bounds the tokenizer's work


def check_texts(texts: Any) -> list[str]:
    """A string or a non-empty list of non-empty strings (400 otherwise)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise BadRequest("`input` must be a non-empty string or list of strings")
    if len(texts) > MAX_TEXTS:
        raise BadRequest(f"`input` holds {len(texts)} texts; the limit is {MAX_TEXTS}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(f"`input[{i}]` is not a string (token arrays are not supported)")
        if not text:
            raise BadRequest(f"`input[{i}]` is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise BadRequest(
                f"`input[{i}]` has {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
            )
    return texts


async def embed(
    models: ModelBatching, texts: list[str], key_id: str | None
) -> tuple[list[list[float]], int]:
    """The embeddings of `texts` (already checked) and the tokens they took."""
    answers = await models.predict_many(
        embedding_spec(), [orjson.dumps(text) for text in texts], key_id
    )
    vectors, tokens = [], 0
    for answer in answers:
        item = orjson.loads(answer.body)
        vectors.append(item["embedding"])
        tokens += int(item["tokens"])
    return vectors, tokens


def _base64(vector: list[float]) -> str:
    # OpenAI's encoding: little-endian float32; exact, as the model computes in float32.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def build_router(
    models: ModelBatching, namespace_of: Callable[[Request], str], max_body_bytes: int
) -> APIRouter:
    router = APIRouter(tags=["ai"])

    @router.post("/ai/v1/embeddings", response_class=Response)
    async def embeddings(request: Request) -> Response:
        """OpenAI-compatible embeddings of `input` with `all-MiniLM-L6-v2` (384 floats)."""
        namespace_of(request)  # the `invoke` scope in the caller's namespace
        body = await read_json(request, max_body_bytes)
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("`model` is required (all-MiniLM-L6-v2)")
        if model not in EMBEDDING_ALIASES:
            raise NotFound(
                f"model {model!r} not found: this platform serves all-MiniLM-L6-v2",
                code="model_not_found",
            )
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest("`encoding_format` must be float or base64")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != EMBEDDING_DIMENSIONS:
            raise BadRequest(f"all-MiniLM-L6-v2 has {EMBEDDING_DIMENSIONS} dimensions only")
        texts = check_texts(body.get("input"))
        vectors, tokens = await embed(models, texts, principal_of(request.scope).key_id)
        encode = _base64 if encoding == "base64" else None
        answer = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v) if encode else v}
                for i, v in enumerate(vectors)
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    return router
