"""HTTP routes for async invocations and dead letters.

- `POST /async/{namespace}/{name}` → 202 `{"id": …}` once the job is stored durably.
  `Idempotency-Key: K` (per namespace): the same key with the same function and body gives
  the same id again (and no second job); with a different request, 409.
- `GET /v1/invocations/{id}` → status (queued | running | succeeded | failed | dead),
  attempts, the result once succeeded, the last error once an attempt failed.
- `GET /v1/namespaces/{namespace}/dead-letters` → jobs that ended without success: `dead`
  (attempts used up) and `failed` (a permanent error: a 4xx other than 408/429).
- `POST /v1/namespaces/{namespace}/dead-letters/{id}/replay` → 202, queued again under the
  same id with fresh attempts.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response

from cumulo.errors import NotFound, require_json
from cumulo.events.queue import JobView
from cumulo.events.service import EventsService
from cumulo.privacy.http import subject_of
from cumulo.request_body import read_limited
from cumulo.sdk.spec import validate_name
from cumulo.security.auth import principal_of

FunctionExists = Callable[[str, str], Awaitable[bool]]
SealSubject = Callable[[str, str, str, bytes], Awaitable[bytes]]  # (ns, fn, subject, body)
OpenSubject = Callable[[str, str, bytes], Awaitable[tuple[str, bytes]]]  # -> (subject, body)

DEFAULT_MAX_BODY = 6 * 1024 * 1024
MAX_ID_LENGTH = 64


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def view_json(view: JobView, *, with_result: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": view.id,
        "namespace": view.namespace,
        "function": view.function,
        "source": view.source,
        "status": view.status,
        "attempts": view.attempts,
        "max_attempts": view.max_attempts,
        "replays": view.replays,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
        "finished_at": view.finished_at,
        "next_attempt_at": view.next_attempt_at,
        "result_status": view.result_status,
        "error": view.error,
    }
    if with_result and view.result is not None:
        try:
            data["result"] = orjson.loads(view.result)
        except orjson.JSONDecodeError:
            # A Request-style function may answer with any bytes: pass them on losslessly.
            data["result_base64"] = base64.b64encode(view.result).decode()
    return data


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # the CLI and most clients send JSON without saying so
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def build_router(
    service: EventsService,
    function_exists: FunctionExists,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    seal_subject: SealSubject | None = None,
    open_subject: OpenSubject | None = None,
) -> APIRouter:
    router = APIRouter(tags=["async"])

    @router.post("/async/{namespace}/{name}", status_code=202)
    async def enqueue(namespace: str, name: str, request: Request) -> Response:
        """Queue an invocation; it runs at least once, retried on 429/5xx up to the
        function's `max_attempts`. Poll `GET /v1/invocations/{id}` for the outcome."""
        principal = principal_of(request.scope)
        validate_name(namespace, "namespace")
        principal.require("invoke", namespace)
        validate_name(name)
        if not await function_exists(namespace, name):
            raise NotFound(f"function {name!r} not found", code="function_not_found")
        body = await read_limited(request, max_body_bytes)
        if body and _is_json(request.headers.get("content-type")):
            require_json(body)
        subject = subject_of(request.scope)
        if subject is not None and seal_subject is not None:
            # The body is the data subject's: sealed under its key (export finds it,
            # erasure shreds it), and the worker's ctx.subject comes back out of it.
            body = await seal_subject(namespace, name, subject, body)
        key = request.headers.get("idempotency-key")
        result = await service.enqueue(
            namespace,
            name,
            body,
            key,
            traceparent=request.headers.get("traceparent"),
            tracestate=request.headers.get("tracestate"),
        )
        headers = {"location": f"/v1/invocations/{result.id}"}
        if not result.created:
            headers["idempotent-replayed"] = "true"
        return _json({"id": result.id}, 202, headers)

    @router.get("/v1/invocations/{invocation_id}")
    async def get_invocation(invocation_id: str, request: Request) -> Response:
        """An async invocation's status, attempts, result (succeeded) and last error."""
        principal = principal_of(request.scope)
        principal.require("read")
        view = await service.get(invocation_id) if len(invocation_id) <= MAX_ID_LENGTH else None
        # Another tenant's job answers exactly like a missing one: no existence oracle.
        if view is None or not principal.can_see(view.namespace):
            raise NotFound(f"invocation {invocation_id!r} not found", code="invocation_not_found")
        if open_subject is not None and view.result is not None and view.result[:3] == b"\xffCJ":
            # A data subject's job: its result is sealed to the subject (cumulo.privacy).
            _, result = await open_subject(view.namespace, view.function, view.result)
            view = dataclasses.replace(view, result=result)
        return _json(view_json(view))

    @router.get("/v1/namespaces/{namespace}/dead-letters")
    async def dead_letters(
        namespace: str,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[str | None, Query(max_length=MAX_ID_LENGTH)] = None,
        function: Annotated[str | None, Query(max_length=63)] = None,
    ) -> Response:
        """Jobs that ended without success, oldest first; page with `after` = the last id."""
        principal = principal_of(request.scope)
        validate_name(namespace, "namespace")
        principal.require("read", namespace)
        if function is not None:
            validate_name(function)
        views = await service.dead_letters(namespace, limit, after, function)
        page = [view_json(v, with_result=False) for v in views]
        return _json({"dead_letters": page, "next": page[-1]["id"] if len(page) == limit else None})

    @router.post("/v1/namespaces/{namespace}/dead-letters/{invocation_id}/replay", status_code=202)
    async def replay(namespace: str, invocation_id: str, request: Request) -> Response:
        """Queue a failed or dead job again: same id, attempts from zero."""
        principal = principal_of(request.scope)
        validate_name(namespace, "namespace")
        principal.require("invoke", namespace)
        if len(invocation_id) > MAX_ID_LENGTH:
            raise NotFound(f"invocation {invocation_id!r} not found", code="invocation_not_found")
        view = await service.replay(namespace, invocation_id)
        return _json(view_json(view, with_result=False), 202)

    return router
