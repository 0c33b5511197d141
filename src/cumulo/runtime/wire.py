"""The worker wire protocol: length-prefixed msgpack frames over a Unix stream socket.

Each frame is a 4-byte big-endian length followed by a msgpack map with a type field `t`:

gateway → worker   inv  {id, ev | http, deadline}            run one invocation
                   rpr  {rid, ok, value | error}             reply to a worker rpc
worker → gateway   res  {id, body} | {id, http: [status, headers, body]}
                   err  {id, code, type, message}            the handler raised / failed
                   rpc  {rid, op, args}                      state, secrets, calls, ...
                   log  {id, level, msg, fields}             ctx.log and captured prints
both ways          ws_* (ws_open, ws_msg, ws_close, …)       an app's WebSockets (asgi_ws.py)
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

import msgpack

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 64 * 1024 * 1024

_packer_opts: dict[str, Any] = {"use_bin_type": True}


class FrameTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


def pack(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, **_packer_opts)
    return HEADER.pack(len(body)) + body


def unpack(body: bytes) -> dict[str, Any]:
    message = msgpack.unpackb(body, raw=False)
    if not isinstance(message, dict):
        raise ValueError("frame is not a map")
    return message


class BlockingChannel:
    """The worker's end: blocking reads and writes of whole frames."""

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.sock = sock
        self.max_frame = max_frame
        self._rfile = sock.makefile("rb", buffering=65536)

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(pack(message))

    def recv(self) -> dict[str, Any] | None:
        """The next frame, or None when the gateway closed the socket."""
        header = self._rfile.read(HEADER.size)
        if len(header) < HEADER.size:
            return None
        (size,) = HEADER.unpack(header)
        if size > self.max_frame:
            raise FrameTooLarge(size, self.max_frame)
        body = self._rfile.read(size)
        if len(body) < size:
            return None
        return unpack(body)


class FrameProtocol(asyncio.Protocol):
    """The gateway's end: parses frames as bytes arrive and hands each to `on_frame`."""

    def __init__(
        self,
        on_frame: Callable[[dict[str, Any]], None],
        on_close: Callable[[Exception | None], None],
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self._on_frame = on_frame
        self._on_close = on_close
        self._max_frame = max_frame
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._closed = False
        self._out: list[bytes] = []  # frames sent this loop iteration, written together

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its interface.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        offset = 0
        end = len(buf)
        while end - offset >= 4:
            (size,) = HEADER.unpack_from(buf, offset)
            if size > self._max_frame:
                self._fail(FrameTooLarge(size, self._max_frame))
                return
            if end - offset - 4 < size:
                break
            start = offset + 4
            message = msgpack.unpackb(buf[start : start + size], raw=False)
            offset = start + size
            self._on_frame(message)
        if offset:
            del buf[:offset]

    def _fail(self, exc: Exception) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._report_close(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._report_close(exc)

    def _report_close(self, exc: Exception | None) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(exc)

    def send(self, message: dict[str, Any]) -> None:
        """Queue a frame; the frames of one loop iteration go out in one write (a read of
        many clients' WebSocket messages costs the worker one wake-up, not one each)."""
        if self.transport is not None and not self.transport.is_closing():
            if not self._out:
                asyncio.get_running_loop().call_soon(self._flush)
            self._out.append(pack(message))

    def _flush(self) -> None:
        data, self._out = b"".join(self._out), []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
