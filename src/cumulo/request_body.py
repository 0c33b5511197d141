"""Request bodies on the admin-side routes (async, topics, quantum, embeddings, KServe):
read within a byte limit, decoded as JSON, with one-line 413 and 400 errors.

The invoke fast path reads raw ASGI messages itself (gateway/invoke.py `read_body`), with
the same limit and messages."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from cumulo.errors import PayloadTooLarge, load_json


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes (from
    Content-Length, else while streaming): an oversized body is never held in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    """The body within `limit` bytes, decoded (400 `invalid_json` when it is not JSON)."""
    return load_json(await read_limited(request, limit))
