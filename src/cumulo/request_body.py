"""Request bodies on the admin-side routes (async, topics, quantum, embeddings, KServe):
read within a byte limit, decoded as JSON, with one-line 413 and 400 errors; and the one
check every admin route gets for text that is not valid Unicode (lone surrogates).

The invoke fast path reads raw ASGI messages itself (gateway/invoke.py `read_body`), with
the same limit and messages."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from cumulo.errors import BadRequest, PayloadTooLarge, load_json


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


def lone_surrogate_at(value: Any, where: str) -> str | None:
    """Where in decoded JSON (or a parameter) a string holds a lone UTF-16 surrogate
    (`"\\ud800"`): text no store, hash or encoder can take. None when there is none."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = lone_surrogate_at(key, where) or lone_surrogate_at(item, f"{where}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = lone_surrogate_at(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


async def reject_lone_surrogates(request: Request) -> None:
    """An app-wide dependency: 400 `invalid_input` when a path or query parameter, or the
    JSON body FastAPI decoded for the route, holds a lone surrogate. The stdlib JSON
    decoder FastAPI uses accepts `"\\ud800"` (and raw surrogate bytes); orjson (load_json,
    read_json) refuses both already. Only a body FastAPI has already read is inspected, so a
    route that streams its body within a limit (read_limited) still does."""
    found = lone_surrogate_at(dict(request.path_params), "path") or lone_surrogate_at(
        {k: v for k, v in request.query_params.multi_items()}, "query"
    )
    route = request.scope.get("route")
    if found is None and getattr(route, "body_field", None) is not None:
        # FastAPI has already read and decoded this route's body (Starlette keeps both):
        # no second read, and what is checked is exactly what the route gets.
        try:
            decoded = await request.json()
        except ValueError:
            decoded = None  # not JSON: FastAPI answers that itself
        found = lone_surrogate_at(decoded, "body")
    if found is not None:
        raise BadRequest(
            f"{found} holds a lone UTF-16 surrogate (like \\ud800): text must be valid Unicode",
            code="invalid_input",
        )
