"""Running a whole ASGI application inside a worker.

The app lives on one event loop in its own thread (started once per worker, with the
app's lifespan startup), which also reads the worker's socket (`serve`).
A response whose body arrives in one piece goes back as one `res` frame; a streamed one
(SSE, StreamingResponse) as `hdr`, then `chunk` frames as the app produces them, then `end`.
A WebSocket is a `ws_open` frame and the frames after it (runtime/asgi_ws.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cumulo.runtime.asgi_ws import WsConnection
from cumulo.runtime.loader import user_traceback
from cumulo.runtime.wire import HEADER, BlockingChannel, FrameTooLarge, pack, unpack

Reply = Callable[[dict[str, Any]], None]  # an rpc reply (rpr) for the worker's transport
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

log = logging.getLogger("cumulo.asgi")


class AsgiRunner:
    def __init__(
        self,
        app: ASGIApp,
        send_bytes: Callable[[bytes], None],
        root_path: str,
        code_dir: Any,
        max_body: int,
    ) -> None:
        self.app = app
        self._send_bytes = send_bytes
        self._out: list[bytes] = []  # frames packed this loop iteration, not yet written
        self.root_path = root_path
        self.code_dir = code_dir
        self.max_body = max_body
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="asgi", daemon=True)
        self._lifespan_done: asyncio.Future[None] | None = None
        self._cpu_mark = time.process_time()
        self.sockets: dict[str, WsConnection] = {}  # open WebSockets by invocation id
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._lifespan_startup(), self.loop).result()

    def send_frame(self, message: dict[str, Any]) -> None:
        """Send a frame from the app's loop: the frames of one loop iteration (replies to
        the several requests or WebSocket messages one read brought) go in one write."""
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out.append(pack(message))

    def _flush(self) -> None:
        data, self._out = b"".join(self._out), []
        with contextlib.suppress(OSError):  # the gateway is gone: the read side ends us
            self._send_bytes(data)

    def serve(self, channel: BlockingChannel, on_reply: Reply) -> None:
        """Read the gateway's frames on the app's own loop until the gateway closes the
        socket: a frame reaches the app without a hop from a reader thread (and its wait
        for the GIL), which a WebSocket pays per message. Sends stay blocking `sendall`s
        (recv uses MSG_DONTWAIT, so the socket itself stays blocking: asyncio's own loop,
        not uvloop, whose add_reader would make it non-blocking under those sendalls).
        An app gets no Context, so nothing on this loop waits for an rpc reply."""
        sock, limit = channel.sock, channel.max_frame
        buf = bytearray()
        closed = threading.Event()

        def stop() -> None:
            self.loop.remove_reader(sock.fileno())
            closed.set()

        def readable() -> None:
            try:
                data = sock.recv(1 << 18, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                stop()
                return
            buf.extend(data)
            offset = 0
            while len(buf) - offset >= HEADER.size:
                (size,) = HEADER.unpack_from(buf, offset)
                if size > limit:
                    log.warning("%s", FrameTooLarge(size, limit))
                    stop()
                    return
                start = offset + HEADER.size
                if len(buf) - start < size:
                    break
                message = unpack(bytes(buf[start : start + size]))
                offset = start + size
                self._dispatch(message, on_reply)
            del buf[:offset]

        self.loop.call_soon_threadsafe(self.loop.add_reader, sock.fileno(), readable)
        closed.wait()

    def _dispatch(self, message: dict[str, Any], on_reply: Reply) -> None:
        kind = message.get("t")
        if kind == "inv":
            task = self.loop.create_task(self.handle(message))
            self._tasks.add(task)  # the loop holds tasks weakly
            task.add_done_callback(self._tasks.discard)
        elif kind == "rpr":
            on_reply(message)
        elif isinstance(kind, str) and kind.startswith("ws_"):
            self._ws_frame(message)

    def _ws_frame(self, message: dict[str, Any]) -> None:
        # On the loop, in arrival order: a connection exists before its first message.
        iid = str(message.get("id", ""))
        if message.get("t") == "ws_open":
            if iid not in self.sockets:
                opened = self.sockets[iid] = WsConnection(self, message)
                opened.task = self.loop.create_task(opened.run(self.app))
            return
        conn = self.sockets.get(iid)
        if conn is not None:
            conn.deliver(message)

    async def _lifespan_startup(self) -> None:
        """Run the app's startup once per worker; apps without lifespan support are fine."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        started: asyncio.Future[None] = self.loop.create_future()
        await queue.put({"type": "lifespan.startup"})

        async def receive() -> dict[str, Any]:
            return await queue.get()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] in ("lifespan.startup.complete", "lifespan.startup.failed"):
                if not started.done():
                    started.set_result(None)
                if message["type"] == "lifespan.startup.failed":
                    log.warning("the app's startup failed: %s", message.get("message", ""))

        async def run() -> None:
            try:
                await self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
            except Exception as exc:
                # An app without lifespan support raises here; it serves requests all the same.
                log.debug("no lifespan: %s", exc)
            finally:
                if not started.done():
                    started.set_result(None)

        self._lifespan_task = self.loop.create_task(run())
        await started

    async def handle(self, message: dict[str, Any]) -> None:
        iid = message["id"]
        method, path, headers, query_string, body = message["http"]
        client = message.get("cl")
        # As uvicorn behind a proxy with --root-path gives it: `path` includes the root
        # path, so request.url and url_for carry /fn/{ns}/{name}; routing strips it.
        full_path = self.root_path + path
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https" if message.get("sc") == "https" else "http",
            "path": full_path,
            "raw_path": full_path.encode(),
            "root_path": self.root_path,
            "query_string": query_string.encode() if isinstance(query_string, str) else b"",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            "client": (str(client[0]), int(client[1])) if client else None,
            "server": None,
            "state": {},
        }
        done = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        start: dict[str, Any] | None = None
        streaming = False
        size = 0

        async def send(event: dict[str, Any]) -> None:
            nonlocal start, streaming, size
            kind = event["type"]
            if kind == "http.response.start":
                start = event
                return
            if kind != "http.response.body" or start is None:
                return
            chunk = bytes(event.get("body", b""))
            more = bool(event.get("more_body", False))
            size += len(chunk)
            status = int(start["status"])
            raw = start.get("headers", [])
            pairs = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in raw]
            if not streaming and not more:
                if size > self.max_body:
                    raise ResponseTooLarge(size, self.max_body)
                self.send_frame(
                    {"t": "res", "id": iid, "http": [status, pairs, chunk], "u": self.usage()}
                )
                done.set()
                return
            if not streaming:
                streaming = True
                frame = {"t": "hdr", "id": iid, "http": [status, pairs, b""], "u": self.usage()}
                self.send_frame(frame)
            if chunk:
                self.send_frame({"t": "chunk", "id": iid, "data": chunk})
            if not more:
                self.send_frame({"t": "end", "id": iid})
                done.set()

        try:
            await self.app(scope, receive, send)
        except ResponseTooLarge as exc:
            self._fail(iid, "payload_too_large", "ResponseTooLarge", str(exc), "")
        except Exception as exc:
            if streaming:
                self.send_frame({"t": "end", "id": iid, "error": f"{type(exc).__name__}: {exc}"})
            else:
                tb = user_traceback(exc, self.code_dir)
                self._fail(iid, "function_error", type(exc).__name__, str(exc), tb)
        else:
            if start is None:
                self._fail(iid, "function_error", "RuntimeError", "the app sent no response", "")
            elif streaming and not done.is_set():
                self.send_frame({"t": "end", "id": iid})
        finally:
            done.set()

    def _fail(self, iid: str, code: str, type_name: str, message: str, tb: str) -> None:
        with contextlib.suppress(OSError):
            frame = {"t": "err", "id": iid, "code": code, "type": type_name, "message": message}
            self.send_frame({**frame, "tb": tb, "u": self.usage()})

    def usage(self) -> list[float]:
        """[process CPU seconds since the previous reply, peak RSS in KB], for metering.
        The app's requests share one event loop, so no per-request CPU clock exists: CPU is
        billed reply by reply. Totals are exact; with overlapping requests one request's
        share may land on its neighbour, and a stream's body on the worker's next reply."""
        now = time.process_time()
        used, self._cpu_mark = now - self._cpu_mark, now
        return [used, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]


class ResponseTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the response is over {size} bytes; the limit is {limit} bytes")
