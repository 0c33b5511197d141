"""One WebSocket connection of an ASGI app, on the worker's side.

The gateway terminates the client's WebSocket and relays it as frames (runtime/frames.py):

gateway → worker   ws_open  {id, ws: [path, headers, query, subprotocols], cl, sc}
                   ws_msg   {id, d}            a client message: d is str (text) or bytes
                   ws_close {id, code, reason} the client closed, or the connection's time
                                               ran out: the app's receive gets disconnect
                   ws_ack   {id, n}            n of the app's messages reached the client
worker → gateway   ws_accept {id, sp, h}       the app accepted (subprotocol, headers)
                   ws_msg   {id, d}            an app message
                   ws_close {id, code, reason} the app closed (before accepting: a 403)
                   ws_ack   {id, n}            the app consumed n client messages
                   ws_end   {id, u, err, tb}   the app's coroutine returned (or raised)

Flow control is a window of WS_WINDOW messages each way: the app's `send` waits for
credit, and the gateway sends a client message only with credit, so neither side queues
more than the window however slowly the other reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cumulo.runtime.frames import WS_ACK_EVERY, WS_WINDOW
from cumulo.runtime.loader import user_traceback

if TYPE_CHECKING:
    from cumulo.runtime.asgi import AsgiRunner

# After the client is gone (or the connection's time is up) the app's handler has this
# long to return before its task is cancelled.
WS_DRAIN_S = 2.0
MESSAGE_TOO_BIG = 1009


class ClientGone(OSError):
    """The app sent on a WebSocket whose client is gone (Starlette turns an OSError from
    `send` into WebSocketDisconnect, as under uvicorn)."""


class MessageTooLarge(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the WebSocket message is {size} bytes; the limit is {limit} bytes")


@dataclass(frozen=True, slots=True)
class _Closed:
    code: int
    reason: str


class WsConnection:
    def __init__(self, runner: AsgiRunner, message: dict[str, Any]) -> None:
        self.runner = runner
        self.iid = str(message["id"])
        self.open = message
        self.inbox: asyncio.Queue[str | bytes | _Closed] = asyncio.Queue()
        self.credit = WS_WINDOW
        self.credit_ready = asyncio.Event()
        self.consumed = 0
        self.connect_sent = False
        self.state = "connecting"  # → accepted → closed
        self.gone = False  # the gateway said the client is gone: sends fail
        self.task: asyncio.Task[None] | None = None

    def _send(self, frame: dict[str, Any]) -> None:
        self.runner.send_frame(frame)

    # ------------------------------------------------------------- gateway frames
    def deliver(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "ws_msg":
            data = message.get("d")
            if isinstance(data, str | bytes):
                self.inbox.put_nowait(data)
        elif kind == "ws_ack":
            self.credit = min(WS_WINDOW, self.credit + int(message.get("n", 0)))
            self.credit_ready.set()
        elif kind == "ws_close":
            self.gone = True
            self.credit_ready.set()
            code = int(message.get("code", 1005))
            self.inbox.put_nowait(_Closed(code, str(message.get("reason", ""))))
            self.runner.loop.call_later(WS_DRAIN_S, self._cancel)

    def _cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # ------------------------------------------------------------- the app's side
    async def receive(self) -> dict[str, Any]:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        item = await self.inbox.get()
        if isinstance(item, _Closed):
            self.inbox.put_nowait(item)  # every later receive sees the disconnect too
            return {"type": "websocket.disconnect", "code": item.code, "reason": item.reason}
        self.consumed += 1
        if self.consumed >= WS_ACK_EVERY:
            self._send({"t": "ws_ack", "id": self.iid, "n": self.consumed})
            self.consumed = 0
        if isinstance(item, str):
            return {"type": "websocket.receive", "text": item}
        return {"type": "websocket.receive", "bytes": item}

    async def send(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "websocket.send":
            await self._send_message(event)
        elif kind == "websocket.accept":
            if self.state != "connecting":
                raise RuntimeError("websocket.accept sent twice or after websocket.close")
            if self.gone:
                raise ClientGone("the client is gone")
            raw = event.get("headers") or []
            headers = [[bytes(k).decode("latin-1"), bytes(v).decode("latin-1")] for k, v in raw]
            sub = event.get("subprotocol")
            self._send({"t": "ws_accept", "id": self.iid, "sp": sub, "h": headers})
            self.state = "accepted"
        elif kind == "websocket.close":
            if self.state == "closed":
                return
            code = int(event.get("code", 1000))
            reason = str(event.get("reason") or "")
            self._close(code, reason)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on a WebSocket")

    async def _send_message(self, event: dict[str, Any]) -> None:
        if self.state == "connecting":
            raise RuntimeError("websocket.send before websocket.accept")
        if self.gone or self.state == "closed":
            raise ClientGone("the client is gone")
        data: str | bytes | None = event.get("bytes")
        if data is None:
            data = event.get("text")
        if data is None:
            raise RuntimeError("websocket.send needs 'bytes' or 'text'")
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        limit = self.runner.max_body
        # A str's UTF-8 size is at most 4 bytes a character: encode only when it may be over.
        big = isinstance(data, str) and len(data) * 4 > limit
        size = len(data.encode()) if big and isinstance(data, str) else len(data)
        if size > limit:
            self._close(MESSAGE_TOO_BIG, f"a message of {size} bytes is over the limit")
            raise MessageTooLarge(size, limit)
        while self.credit <= 0 and not self.gone:
            self.credit_ready.clear()
            await self.credit_ready.wait()
        if self.gone:
            raise ClientGone("the client is gone")
        self.credit -= 1
        self._send({"t": "ws_msg", "id": self.iid, "d": data})

    def _close(self, code: int, reason: str) -> None:
        self.state = "closed"
        self._send({"t": "ws_close", "id": self.iid, "code": code, "reason": reason[:120]})
        self.inbox.put_nowait(_Closed(code, reason))

    # ------------------------------------------------------------- the connection
    def scope(self) -> dict[str, Any]:
        message = self.open
        path, headers, query_string, subprotocols = message["ws"]
        root = self.runner.root_path
        client = message.get("cl")
        return {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "wss" if message.get("sc") in ("https", "wss") else "ws",
            # As uvicorn behind a proxy with --root-path: `path` includes the root path.
            "path": root + path,
            "raw_path": (root + path).encode(),
            "root_path": root,
            "query_string": str(query_string).encode("latin-1"),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            "client": (str(client[0]), int(client[1])) if client else None,
            "server": None,
            "subprotocols": [str(s) for s in subprotocols],
            "state": {},
        }

    async def run(self, app: Callable[[dict[str, Any], Any, Any], Awaitable[None]]) -> None:
        end: dict[str, Any] = {"t": "ws_end", "id": self.iid}
        try:
            await app(self.scope(), self.receive, self.send)
        except asyncio.CancelledError:
            pass  # the client was gone for WS_DRAIN_S: the handler was stopped
        except Exception as exc:
            if not self.gone:
                end["err"] = f"{type(exc).__name__}: {exc}"
                end["tb"] = user_traceback(exc, self.runner.code_dir)
        finally:
            self.runner.sockets.pop(self.iid, None)
            with contextlib.suppress(OSError):
                self._send({**end, "u": self.runner.usage()})
