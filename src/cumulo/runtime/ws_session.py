"""One WebSocket connection of an ASGI app, on the gateway's side of the worker socket.

A session holds one concurrency slot of its worker from `ws_open` until the worker's
`ws_end` (or the worker's death): the pool counts it in the worker's load. The frames are
described in runtime/asgi_ws.py. The worker runs tenant code, so nothing it sends is
trusted: credit it grants is capped at the window, and a worker that sends past its
window has its socket paused (as a streamed HTTP response's is) instead of queueing here.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from cumulo.runtime.frames import WS_ACK_EVERY, WS_WINDOW

if TYPE_CHECKING:
    from cumulo.runtime.pool import WorkerHandle

# After asking the app to finish (client gone, time up), how long to wait for `ws_end`
# before the worker is killed: the worker cancels the handler after WS_DRAIN_S itself
# (asgi_ws.py), so only an app that blocks its event loop gets here.
END_GRACE_S = 4.0


def wire_size(data: str | bytes) -> int:
    """A message's size as metered: its bytes (UTF-8 for text)."""
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode())


class WsSession:
    def __init__(self, worker: WorkerHandle, iid: str, cold: bool) -> None:
        self.worker = worker
        self.iid = iid
        self.cold = cold
        # ws_accept, ws_msg, ws_close, ws_end from the worker; {"t": "lost"} if it died.
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.credit = WS_WINDOW  # client messages the app may still be sent
        self.credit_ready = asyncio.Event()
        self.written = 0  # app messages written to the client since the last ws_ack
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.end: dict[str, Any] = {}
        self.lost_reason = ""
        self.told = False  # the app was told its connection is over
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------- from the worker
    def from_worker(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "ws_ack":
            n = message.get("n")
            if type(n) is int and n > 0:
                self.credit = min(WS_WINDOW, self.credit + n)
                self.credit_ready.set()
            return
        if kind == "ws_end":
            self.end = message
            self._finish()
        self.events.put_nowait(message)
        if self.events.qsize() > 2 * WS_WINDOW:
            self.worker.pause()  # past its window: the worker ignores flow control

    def lost(self, reason: str) -> None:
        """The worker died (crash, memory, kill) with this connection open."""
        if not self.ended.done():
            self.lost_reason = reason
            self.events.put_nowait({"t": "lost"})
            self._finish()

    def _finish(self) -> None:
        self.credit_ready.set()
        if not self.ended.done():
            self.ended.set_result(None)
        self.worker.pool.ws_ended(self)

    # ------------------------------------------------------------- to the worker
    async def send_in(self, data: str | bytes) -> bool:
        """Relay a client message; waits for credit. False: the app is gone."""
        while self.credit <= 0 and not self.ended.done():
            self.credit_ready.clear()
            await self.credit_ready.wait()
        if self.ended.done():
            return False
        self.credit -= 1
        self.bytes_in += wire_size(data)
        self.worker.protocol.send({"t": "ws_msg", "id": self.iid, "d": data})
        return True

    def delivered(self, size: int) -> None:
        """An app message reached the client's socket: grant credit back in batches."""
        self.bytes_out += size
        self.written += 1
        if self.written >= WS_ACK_EVERY:
            self.worker.protocol.send({"t": "ws_ack", "id": self.iid, "n": self.written})
            self.written = 0
        if self.events.qsize() <= WS_WINDOW:
            self.worker.resume()

    def close_app(self, code: int, reason: str = "") -> None:
        """Tell the app its client is gone (or its time is up): its receive disconnects."""
        if not self.ended.done() and not self.told:
            self.told = True
            frame = {"t": "ws_close", "id": self.iid, "code": code, "reason": reason}
            self.worker.protocol.send(frame)

    async def wait_end(self) -> None:
        """Wait for the app's handler to return; kill the worker if it never does."""
        try:
            await asyncio.wait_for(asyncio.shield(self.ended), END_GRACE_S)
        except TimeoutError:
            self.worker.pool.ws_stuck(self)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.ended), END_GRACE_S)
