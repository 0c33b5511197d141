"""`ws://…/fn/{namespace}/{name}[/{subpath}]`: a WebSocket to a `cumulo.app` function.

The gateway terminates the client's WebSocket (uvicorn) and relays it to the app's
`websocket` scope in a worker as frames (runtime/asgi_ws.py). Authorization, the
function's rate limit and the namespace quota are an HTTP invoke's; the connection holds
one concurrency slot of its worker for its life and is one invocation in the records and
in metering, with its duration. Its time is the function's timeout, for the whole
connection (as Cloud Run applies its request timeout): at the deadline the client gets
close 1001 and the app a disconnect. A refused handshake is an HTTP error (JSON, as an
invoke's); after the handshake a crash is close 1011 and an oversized message 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from cumulo.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    FunctionCrashed,
    FunctionError,
    FunctionTimeout,
)
from cumulo.gateway.errors import internal_error, send_ws_error
from cumulo.privacy.http import subject_of
from cumulo.runtime.frames import ws_open_frame
from cumulo.runtime.loader import KIND_ASGI
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.ws_session import WsSession, wire_size
from cumulo.security.auth import PRINCIPAL

if TYPE_CHECKING:
    from cumulo.gateway.invoke import InvokeApp

# Close codes an app may send (RFC 6455 §7.4): the registered ones an endpoint may send,
# and the 3000-4999 ranges for libraries and applications.
SENDABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})
GOING_AWAY = 1001
INTERNAL_ERROR = 1011
MAX_REASON_BYTES = 120  # a close frame's payload is at most 125 bytes, the code included
MAX_APP_HEADERS = 50
# What an app may not set on the handshake's 101 response.
RESERVED_HEADERS = ("sec-websocket-", "x-cumulo-", "connection", "upgrade", "content-length")


def _latin1(value: str) -> bytes:
    return value.encode("latin-1", "replace")


def _reason(value: Any) -> str:
    raw = str(value or "").encode()[:MAX_REASON_BYTES]
    return raw.decode(errors="ignore")


class WebSocketInvoke:
    def __init__(self, invoke: InvokeApp) -> None:
        self.invoke = invoke
        self.platform = invoke.platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send, iid: str) -> None:
        id_header = (b"x-cumulo-invocation-id", iid.encode())
        spec: VersionSpec | None = None
        try:
            connect = await receive()
            if connect.get("type") != "websocket.connect":
                return
            spec, subpath = await self.invoke.resolve(scope)
            if spec.kind != KIND_ASGI:
                raise BadRequest(
                    f"{spec.function} is not an ASGI app: WebSockets reach only cumulo.app "
                    "functions",
                    code="not_an_app",
                )
            frame = ws_open_frame(
                iid,
                path=subpath,
                raw_headers=self.invoke.user_headers(scope),
                query_string=scope["query_string"].decode("latin-1"),
                subprotocols=[str(s) for s in scope.get("subprotocols") or ()],
                client=scope.get("client"),
                scheme=scope.get("scheme", "ws"),
            )
            relay = Relay(self, scope, receive, send, spec, iid)
            principal = scope.get(PRINCIPAL)
            await self.platform.websocket(
                spec,
                frame,
                relay.run,
                key_id=principal.key_id if principal is not None else None,
                subject=subject_of(scope),
            )
        except ApiError as exc:
            if exc.status in (401, 403):
                self.platform.denied(scope, exc.status)
            if exc.status >= 500 and spec is not None:
                self.invoke.log_failure(spec, iid, exc)
            await send_ws_error(scope, send, exc, [*self.invoke.meta_headers, id_header])
        except Exception as exc:
            error = internal_error(exc, "websocket")
            await send_ws_error(scope, send, error, [*self.invoke.meta_headers, id_header])


class Relay:
    """One connection: the handshake, then messages both ways until either side closes,
    the app ends, its worker dies, or the function's timeout passes."""

    def __init__(
        self,
        owner: WebSocketInvoke,
        scope: Scope,
        receive: Receive,
        send: Send,
        spec: VersionSpec,
        iid: str,
    ) -> None:
        self.owner = owner
        self.scope = scope
        self.receive = receive
        self.send = send
        self.spec = spec
        self.iid = iid
        self.timeout = spec.config.timeout_s

    async def run(self, session: WsSession) -> tuple[int, str]:
        try:
            return await self._run(session)
        finally:
            # The slot is the app's until its handler returns (or its worker is killed).
            session.close_app(GOING_AWAY, "the connection is over")
            await session.wait_end()

    async def _run(self, session: WsSession) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            first = await asyncio.wait_for(session.events.get(), self.timeout)
        except TimeoutError:
            session.close_app(GOING_AWAY, "timed out before accepting")
            return await self._refuse(
                FunctionTimeout(
                    f"{self.spec.function} did not accept the WebSocket within {self.timeout:g}s",
                    code="function_timeout",
                )
            )
        kind = first.get("t")
        if kind == "ws_close":
            return await self._refuse(
                Forbidden("the app refused the WebSocket", code="websocket_rejected")
            )
        if kind != "ws_accept":
            return await self._refuse(self._ended_error(session, first, "before accepting"))
        await self._accept(session, first)
        client = loop.create_task(self._from_client(session))
        app = loop.create_task(self._from_app(session))
        try:
            done, _ = await asyncio.wait(
                {client, app}, timeout=deadline - loop.time(), return_when="FIRST_COMPLETED"
            )
            if not done:
                reason = f"the connection reached its {self.timeout:g}s limit"
                session.close_app(GOING_AWAY, reason)
                await self._close_client(GOING_AWAY, reason)
                return 504, "function_timeout"
            ended = app.result() if app in done else None
            if ended is not None:
                return ended
            # The client closed (or vanished): the app's receive gets its code.
            code, reason = client.result() if client in done else (1006, "")
            session.close_app(code, reason)
            return 101, "ok"
        finally:
            for task in (client, app):
                task.cancel()
            await asyncio.gather(client, app, return_exceptions=True)

    def _ended_error(self, session: WsSession, event: dict[str, Any], when: str) -> ApiError:
        if event.get("t") == "lost":
            return FunctionCrashed(session.lost_reason, code="function_crashed")
        err = event.get("err")
        if isinstance(err, str) and err:
            trace = event.get("tb")
            return FunctionError(
                f"{err[:500]} ({when})",
                code="function_error",
                details={"traceback": trace if isinstance(trace, str) else ""},
            )
        return FunctionError(f"the app returned {when}", code="function_error")

    async def _refuse(self, error: ApiError) -> tuple[int, str]:
        if error.status >= 500:
            self.owner.invoke.log_failure(self.spec, self.iid, error)
        headers = [*self.owner.invoke.meta_headers, (b"x-cumulo-invocation-id", self.iid.encode())]
        await send_ws_error(self.scope, self.send, error, headers)
        return error.status, error.code

    async def _accept(self, session: WsSession, event: dict[str, Any]) -> None:
        offered = self.scope.get("subprotocols") or []
        chosen = event.get("sp")
        headers: list[tuple[bytes, bytes]] = []
        raw = event.get("h")
        for pair in raw[:MAX_APP_HEADERS] if isinstance(raw, list) else ():
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair):
                name, value = pair[0].lower(), pair[1]
                if not name.startswith(RESERVED_HEADERS) and "\n" not in value + name:
                    headers.append((name.encode("latin-1", "replace"), _latin1(value)))
        headers += [
            (b"x-cumulo-invocation-id", self.iid.encode()),
            (b"x-cumulo-start", b"cold" if session.cold else b"warm"),
            (b"x-cumulo-version", str(self.spec.version).encode()),
        ]
        await self.send(
            {
                "type": "websocket.accept",
                # Only one the client offered: anything else would fail its handshake.
                "subprotocol": chosen if isinstance(chosen, str) and chosen in offered else None,
                "headers": headers,
            }
        )

    async def _from_client(self, session: WsSession) -> tuple[int, str]:
        while True:
            message = await self.receive()
            kind = message.get("type")
            if kind == "websocket.receive":
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await session.send_in(data)  # waits while the app has a window unread
            elif kind == "websocket.disconnect":
                return int(message.get("code") or 1005), _reason(message.get("reason"))

    async def _from_app(self, session: WsSession) -> tuple[int, str] | None:
        """Relay the app's side; its outcome, or None once the client is gone."""
        try:
            while True:
                event = await session.events.get()
                kind = event.get("t")
                if kind == "ws_msg":
                    data = event.get("d")
                    if isinstance(data, str):
                        await self.send({"type": "websocket.send", "text": data})
                    elif isinstance(data, bytes):
                        await self.send({"type": "websocket.send", "bytes": data})
                    else:
                        continue
                    session.delivered(wire_size(data))
                elif kind == "ws_close":
                    code = event.get("code")
                    code = code if type(code) is int and code in SENDABLE else INTERNAL_ERROR
                    await self._close_client(code, _reason(event.get("reason")))
                    return 101, "ok"
                elif kind in ("ws_end", "lost"):
                    if kind == "ws_end" and not event.get("err"):
                        await self._close_client(1000, "")
                        return 101, "ok"
                    error = self._ended_error(session, event, "on an open WebSocket")
                    self.owner.invoke.log_failure(self.spec, self.iid, error)
                    await self._close_client(INTERNAL_ERROR, _reason(error.message))
                    return error.status, error.code
        except OSError:
            return None  # the client is gone; its disconnect ends the connection

    async def _close_client(self, code: int, reason: str) -> None:
        with contextlib.suppress(OSError):
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
