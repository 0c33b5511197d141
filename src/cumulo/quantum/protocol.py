"""Frames between the service and its workers: a 4-byte big-endian length, then msgpack.

Circuits travel inside the frame as QPY bytes (Qiskit's binary circuit format); everything
else is plain data.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30


class FrameError(Exception):
    """The peer sent something that is not a frame."""


def pack(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def _unpack(body: bytes) -> dict[str, Any]:
    message = msgpack.unpackb(body, raw=False)
    if not isinstance(message, dict):
        raise FrameError("frame is not a map")
    return message


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def recv_sync(sock: socket.socket) -> dict[str, Any] | None:
    """The next frame, or None when the peer closed the socket."""
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes is too large")
    body = _recv_exactly(sock, length)
    if body is None:
        return None
    return _unpack(body)


async def recv(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, or None when the peer closed the connection."""
    try:
        header = await reader.readexactly(HEADER.size)
        (length,) = HEADER.unpack(header)
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes is too large")
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return _unpack(body)
