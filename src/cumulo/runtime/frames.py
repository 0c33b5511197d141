"""Invocation frames: one builder for every path that invokes (HTTP, async queue, schedules)."""

from __future__ import annotations

import time
from typing import Any

from cumulo.runtime.loader import KIND_ASGI, KIND_CONTAINER, KIND_PROCESS, KIND_REQUEST


def invocation_frame(
    invocation_id: str,
    kind: str,
    *,
    method: str = "POST",
    path: str = "/",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    body: bytes = b"",
    raw_headers: list[tuple[str, str]] | None = None,
    query_string: str = "",
    event_format: str = "",
    source_ip: str = "",
    client: tuple[str, int] | None = None,
    scheme: str = "http",
) -> dict[str, Any]:
    """A `request` handler gets the whole HTTP request; an event handler gets the JSON body
    (already validated by the caller) or, without one, the query as a dict. A Lambda
    handler with an `event_format` gets the request as API Gateway would give it (the
    worker builds that event: runtime/lambda_events.py)."""
    frame: dict[str, Any] = {"t": "inv", "id": invocation_id}
    if event_format:
        frame["http"] = [method, path, raw_headers or [], query_string, body]
        frame["lf"] = event_format
        frame["ip"] = source_ip
        frame["at"] = time.time()
    elif kind == KIND_REQUEST:
        frame["http"] = [method, path, headers or {}, query or {}, body]
    elif kind in (KIND_ASGI, KIND_PROCESS, KIND_CONTAINER):
        # An app or a process gets header pairs (repeats kept) and the raw query string.
        frame["http"] = [method, path, raw_headers or [], query_string, body]
        if kind == KIND_ASGI:
            _add_peer(frame, client, scheme)
    elif body:
        frame["ev"] = body
    else:
        frame["q"] = query or {}
    return frame


# WebSockets (runtime/asgi_ws.py in the worker, runtime/ws_session.py in the gateway).
# Each side may have at most WS_WINDOW messages sent that the other has not yet consumed
# (the app's `receive`, the client's socket); consumption is acknowledged every
# WS_ACK_EVERY messages with a `ws_ack` frame. A slow reader thus stops its sender
# instead of growing a queue: at most WS_WINDOW messages are ever buffered each way.
WS_WINDOW = 16
WS_ACK_EVERY = WS_WINDOW // 2


def ws_open_frame(
    invocation_id: str,
    *,
    path: str,
    raw_headers: list[tuple[str, str]],
    query_string: str,
    subprotocols: list[str],
    client: tuple[str, int] | None,
    scheme: str,
) -> dict[str, Any]:
    """Open an app's `websocket` scope (the app then gets `websocket.connect`)."""
    frame: dict[str, Any] = {
        "t": "ws_open",
        "id": invocation_id,
        "ws": [path, raw_headers, query_string, subprotocols],
    }
    _add_peer(frame, client, scheme)
    return frame


def _add_peer(frame: dict[str, Any], client: tuple[str, int] | None, scheme: str) -> None:
    # The caller's address (ASGI `client`) and the URL scheme the caller used.
    if client is not None:
        frame["cl"] = [str(client[0]), int(client[1])]
    frame["sc"] = scheme
