"""`ANY /fn/{namespace}/{name}[/{subpath}]`: the hot path, as a bare ASGI app.

It touches no database: the route comes from the in-memory cache, the invocation record
and metrics are buffered.
"""

from __future__ import annotations

import random
import time
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from cumulo.errors import (
    ApiError,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    require_json,
)
from cumulo.gateway.auth import PRINCIPAL, principal_of
from cumulo.gateway.errors import internal_error, send_error
from cumulo.gateway.headers import FUNCTION_SECURITY_HEADERS, HSTS
from cumulo.gateway.platform import Platform
from cumulo.gateway.websocket import WebSocketInvoke
from cumulo.observability.tracing import CURRENT_INVOCATION
from cumulo.privacy.http import subject_of
from cumulo.runtime.frames import invocation_frame
from cumulo.runtime.lambda_events import FORMAT_RAW
from cumulo.runtime.loader import (
    KIND_ASGI,
    KIND_CONTAINER,
    KIND_LAMBDA,
    KIND_MODEL,
    KIND_PROCESS,
    KIND_REQUEST,
)
from cumulo.runtime.pool import InvokeResult
from cumulo.runtime.spec import VersionSpec
from cumulo.security.auth import Principal
from cumulo.store.base import LogRecord

PREFIX = "/fn/"
JSON_HEADERS = [(b"content-type", b"application/json")]
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer"}
)
# Set by the platform on every function response; a function cannot override them.
OWN_HEADERS = frozenset(k.decode() for k, _ in (*FUNCTION_SECURITY_HEADERS, HSTS))
# Set by the platform on every function response; a function cannot override them.
OWN_HEADERS = frozenset(k.decode() for k, _ in (*FUNCTION_SECURITY_HEADERS, HSTS))


class ClientGone(Exception):
    pass


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise BadRequest("invalid Content-Length header") from None
            if declared > limit:
                raise PayloadTooLarge(
                    f"the request body is {declared} bytes; the limit is {limit} bytes"
                )
            break
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def new_invocation_id() -> str:
    """24 hex digits: microseconds since the epoch, then 40 random bits.

    Time-ordered ids append to the end of the invocations index instead of landing at
    random pages, which keeps recording cheap as the table grows."""
    # Unguessable ids are not needed (every lookup is scoped to its namespace); a syscall
    # per request for os.urandom would be.
    return f"{time.time_ns() // 1000:014x}{random.getrandbits(40):010x}"


class InvokeApp:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.limit = platform.options.runtime.max_request_bytes
        self.limiter = platform.function_limiter  # shared with other gateways' (platform.py)
        self.tracing = platform.tracing
        self.websockets = WebSocketInvoke(self)
        self.meta_headers = list(FUNCTION_SECURITY_HEADERS)
        if platform.options.tls:
            self.meta_headers.append(HSTS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        invocation_id = new_invocation_id()
        if scope["type"] == "websocket":
            await self.websockets(scope, receive, send, invocation_id)
            return
        if self.tracing.enabled:
            await self._traced(scope, receive, send, invocation_id)
            return
        await self._serve(scope, receive, send, invocation_id)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, invocation_id: str) -> None:
        """`_serve` inside the invocation's `gateway` span (its parent: the request's
        traceparent); Platform.invoke finds the span through CURRENT_INVOCATION."""
        span = self.tracing.start_gateway(scope, invocation_id)
        token = CURRENT_INVOCATION.set(span)
        try:
            await self._serve(scope, receive, self.tracing.gateway_send(send, span), invocation_id)
        finally:
            CURRENT_INVOCATION.reset(token)
            span.end()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, invocation_id: str) -> None:
        id_header = (b"x-cumulo-invocation-id", invocation_id.encode())
        try:
            await self._invoke(scope, receive, send, invocation_id, id_header)
        except ApiError as exc:
            if exc.status in (401, 403):
                self.platform.denied(scope, exc.status)
            await send_error(send, exc, [*self.meta_headers, id_header])
        except ClientGone:
            return
        except Exception as exc:
            await send_error(send, internal_error(exc, "invoke"), [*self.meta_headers, id_header])

    async def _invoke(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        invocation_id: str,
        id_header: tuple[bytes, bytes],
    ) -> None:
        spec, subpath = await self.resolve(scope)
        body = await read_body(scope, receive, self.limit)
        if spec.kind == KIND_MODEL:
            await self._predict(send, spec, body, scope.get(PRINCIPAL))
            return
        method = scope["method"]
        raw_query = scope["query_string"]
        query = dict(parse_qsl(raw_query.decode("latin-1"))) if raw_query else {}
        headers: dict[str, str] | None = None
        pairs: list[tuple[str, str]] | None = None
        # A Lambda handler gets the request as API Gateway would give it, in the format its
        # version was deployed with (none stored: deployed before formats, the JSON body).
        event_format = ""
        if spec.kind == KIND_LAMBDA and spec.config.event_format != FORMAT_RAW:
            event_format = spec.config.event_format
        if spec.kind in (KIND_REQUEST, KIND_ASGI, KIND_PROCESS, KIND_CONTAINER) or event_format:
            pairs = self.user_headers(scope)
            headers = dict(pairs)
        elif body:
            require_json(body)
        frame = invocation_frame(
            invocation_id,
            spec.kind,
            method=method,
            path=subpath,
            headers=headers,
            query=query,
            body=body,
            raw_headers=pairs,
            query_string=scope["query_string"].decode("latin-1"),
            event_format=event_format,
            source_ip=client[0] if (client := scope.get("client")) else "",
            client=scope.get("client"),
            scheme=scope.get("scheme", "http"),
        )
        principal = scope.get(PRINCIPAL)
        try:
            result = await self.platform.invoke(
                spec,
                frame,
                key_id=principal.key_id if principal is not None else None,
                subject=subject_of(scope),
            )
        except ApiError as exc:
            if exc.status >= 500:
                self.log_failure(spec, invocation_id, exc)
            raise
        await self._respond(send, result, spec.version, id_header)

    def user_headers(self, scope: Scope) -> list[tuple[str, str]]:
        # The platform key is ours: it never reaches user code.
        pairs = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k != b"authorization"
        ]
        if self.tracing.enabled:
            pairs = self.tracing.user_headers(pairs)
        return pairs

    async def resolve(self, scope: Scope) -> tuple[VersionSpec, str]:
        """The version a request reaches and the app's sub-path, with authorization and
        the function's rate limit applied (HTTP invokes and WebSockets alike)."""
        parts = scope["path"][len(PREFIX) :].split("/", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise NotFound("use /fn/{namespace}/{function}", code="function_not_found")
        namespace, name = parts[0], parts[1]
        subpath = "/" + parts[2] if len(parts) > 2 else "/"
        anonymous = scope.get(PRINCIPAL) is None
        if not anonymous:
            principal_of(scope).require("invoke", namespace)
        route = await self.platform.control.routes.get(namespace, name)
        if anonymous and (route is None or not route.public):
            # The same answer for private and missing functions: no existence oracle.
            principal_of(scope)
        if route is None:
            raise NotFound(f"function {name!r} not found", code="function_not_found")
        if route.rate is not None:
            wait = self.limiter.take((namespace, name), route.rate)
            if wait > 0:
                raise TooManyRequests(
                    f"{name} is over its rate limit of {route.rate.per_s:g}/s",
                    code="function_rate_limited",
                    retry_after=wait,
                )
        return route.pick(), subpath

    def log_failure(self, spec: VersionSpec, invocation_id: str, exc: ApiError) -> None:
        """A failed invocation is a line in the function's log (`cumulo logs`), with the
        user's traceback the caller got."""
        trace = exc.details.get("traceback")
        message = f"invocation failed: {exc.status} {exc.code}: {exc.message}"
        if isinstance(trace, str) and trace:
            message += "\n" + trace.rstrip()
        self.platform.recorder.log(
            LogRecord(
                spec.namespace,
                spec.function,
                spec.version,
                invocation_id,
                time.time(),
                "error",
                message,
                {},
            )
        )

    async def _predict(
        self, send: Send, spec: VersionSpec, body: bytes, principal: Principal | None
    ) -> None:
        """A model takes one JSON instance; it rides in a batch (ai/batching.py) whose
        invocation id the response carries."""
        if not body:
            raise BadRequest("a model takes one JSON instance as the request body")
        require_json(body)
        key = principal.key_id if principal is not None else None
        answer = await self.platform.models.predict(spec, body, key)
        result = InvokeResult(body=answer.body, http=None, cold=answer.cold, worker_pid=0)
        batch_id = (b"x-cumulo-invocation-id", answer.invocation_id.encode())
        size = (b"x-cumulo-batch-size", str(answer.batch_size).encode())
        await self._respond(send, result, spec.version, batch_id, size)

    async def _respond(
        self,
        send: Send,
        result: InvokeResult,
        version: int,
        id_header: tuple[bytes, bytes],
        *extra: tuple[bytes, bytes],
    ) -> None:
        meta = [
            *self.meta_headers,
            id_header,
            (b"x-cumulo-start", b"cold" if result.cold else b"warm"),
            (b"x-cumulo-version", str(version).encode()),
            *extra,
        ]
        if result.http is not None:
            status, headers, body = result.http
            items = headers.items() if isinstance(headers, dict) else headers
            raw_headers = [
                (str(k).lower().encode("latin-1"), str(v).encode("latin-1"))
                for k, v in items
                if k.lower() not in HOP_BY_HOP
                and k.lower() not in OWN_HEADERS
                and not k.lower().startswith("x-cumulo-")
            ]
        else:
            status, raw_headers, body = 200, list(JSON_HEADERS), result.body or b""
        raw_headers += meta
        if result.stream is not None:
            # Streamed (SSE): no length; each chunk goes out as the function produces it.
            await send({"type": "http.response.start", "status": status, "headers": raw_headers})
            async for chunk in result.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        raw_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})
