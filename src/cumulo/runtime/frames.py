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
    elif body:
        frame["ev"] = body
    else:
        frame["q"] = query or {}
    return frame
