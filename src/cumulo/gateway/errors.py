"""Error responses: always `{"error": {"code", "message"}}`, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.types import Scope, Send

from cumulo.errors import ApiError, TooManyRequests, Unauthorized

log = logging.getLogger("cumulo.gateway")


def error_headers(exc: ApiError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if isinstance(exc, TooManyRequests):
        headers.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
    if isinstance(exc, Unauthorized):
        headers.append((b"www-authenticate", b'Bearer realm="cumulo"'))
    return headers


async def send_error(
    send: Send, exc: ApiError, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(exc.to_dict())
    headers = error_headers(exc) + (extra_headers or [])
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_ws_error(
    scope: Scope, send: Send, exc: ApiError, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Refuse a WebSocket handshake: the error's status and JSON body where the server
    supports the ASGI WebSocket Denial Response extension (uvicorn does), else a 403."""
    try:
        if "websocket.http.response" not in (scope.get("extensions") or {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        body = orjson.dumps(exc.to_dict())
        headers = error_headers(exc) + (extra_headers or [])
        headers.append((b"content-length", str(len(body)).encode()))
        await send(
            {"type": "websocket.http.response.start", "status": exc.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    except (OSError, RuntimeError):
        pass  # the client went away first, or the handshake was already answered


def internal_error(exc: BaseException, where: str) -> ApiError:
    """An unexpected platform failure: logged here in full, one line to the client."""
    log.error("internal error in %s", where, exc_info=exc)
    return ApiError("internal error; the platform log has the details", code="internal")


def one_line(errors: list[Any]) -> str:
    """FastAPI validation errors as one readable line."""
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"
