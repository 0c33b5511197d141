"""Bounds at the HTTP edge, before a request reaches the ASGI app.

uvicorn's httptools protocol accepts any number of connections, waits forever for a request
head and lets httptools buffer a header of any size. `edge_protocol(limits)` returns a
subclass of it (passed to `uvicorn.Config(http=...)`, TLS included: uvloop's SSL transport
hands it decrypted bytes) that

- counts the bytes of each request head while they arrive and answers 431 once they pass
  `max_header_bytes` or the head has more than `max_headers` fields, so what httptools
  buffers never grows past the bound;
- closes a connection that has not completed its request head `header_timeout_s` after it
  opened or after its last response (an idle keep-alive connection included);
- refuses a connection over `max_connections` in total or `max_connections_per_client`
  from one address with a 503 written at once, then closes it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr

log = logging.getLogger("cumulo.gateway.edge")

# File descriptors kept free under RLIMIT_NOFILE for the platform's own sockets and pipes
# (workers, zygotes, the database, logs): at least this many, or a quarter of the limit.
FD_RESERVE_MIN = 256
REFUSAL_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    max_connections: int = 10_000
    max_connections_per_client: int = 1_000

    def problems(self) -> list[str]:
        """What is wrong with these limits, one line each (empty when they are usable)."""
        out = []
        if self.max_header_bytes < 1024:
            out.append("--max-header-kb must be at least 1")
        if self.max_headers < 1:
            out.append("the header count limit must be at least 1")
        if not self.header_timeout_s > 0:
            out.append("--header-timeout must be positive")
        if self.max_connections < 1:
            out.append("--max-connections must be at least 1")
        if self.max_connections_per_client < 1:
            out.append("--max-connections-per-client must be at least 1")
        return out


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # a container may refuse; the cap below follows what is in force
    return soft


def fit_to_fds(limits: EdgeLimits, fd_limit: int) -> EdgeLimits:
    """Lower the connection caps so that open connections leave fds for the platform."""
    room = max(1, fd_limit - max(FD_RESERVE_MIN, fd_limit // 4))
    if limits.max_connections <= room:
        return limits
    log.warning(
        "--max-connections %d lowered to %d: RLIMIT_NOFILE is %d and the platform keeps "
        "%d descriptors for itself",
        limits.max_connections,
        room,
        fd_limit,
        fd_limit - room,
    )
    return EdgeLimits(
        max_header_bytes=limits.max_header_bytes,
        max_headers=limits.max_headers,
        header_timeout_s=limits.header_timeout_s,
        max_connections=room,
        max_connections_per_client=min(limits.max_connections_per_client, room),
    )


def _json_response(status: int, reason: str, code: str, message: str, *extra: bytes) -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = [
        f"HTTP/1.1 {status} {reason}".encode(),
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        *extra,
        b"connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class ConnectionCounts:
    """Open connections of one server, in total and per client address."""

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_client: dict[str, int] = {}
        self.refused = 0
        self._last_report = 0.0

    def admit(self, client: str) -> bytes | None:
        """Count a new connection in; or the 503 to answer when it is over a cap."""
        if self.total >= self.limits.max_connections:
            return self._refuse(_BUSY)
        held = self.per_client.get(client, 0)
        if held >= self.limits.max_connections_per_client:
            return self._refuse(_CLIENT_BUSY)
        self.per_client[client] = held + 1
        self.total += 1
        return None

    def release(self, client: str) -> None:
        self.total -= 1
        held = self.per_client.pop(client) - 1
        if held:
            self.per_client[client] = held

    def _refuse(self, response: bytes) -> bytes:
        # One log line a minute at most: a flood must not become a log flood.
        self.refused += 1
        now = time.monotonic()
        if now - self._last_report >= REFUSAL_LOG_INTERVAL_S:
            self._last_report = now
            log.warning(
                "refused %d connection(s) over the caps (%d open, %d clients)",
                self.refused,
                self.total,
                len(self.per_client),
            )
            self.refused = 0
        return response


_HEAD_TOO_LARGE = _json_response(
    431,
    "Request Header Fields Too Large",
    "headers_too_large",
    "the request head is too large (too many bytes or too many header fields)",
)
_BUSY = _json_response(
    503,
    "Service Unavailable",
    "too_many_connections",
    "the server has too many open connections; retry later",
    b"retry-after: 1",
)
_CLIENT_BUSY = _json_response(
    503,
    "Service Unavailable",
    "too_many_connections",
    "too many open connections from your address; close some and retry",
    b"retry-after: 1",
)


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing at once."""


class EdgeProtocol(HttpToolsProtocol):
    limits: ClassVar[EdgeLimits]
    counts: ClassVar[ConnectionCounts]

    # Set before the parent's __init__ runs: it builds the parser, whose callbacks use them.
    _client_key: str | None = None
    _in_head = True
    _head_room = 0
    _header_count = 0
    _head_too_large = False
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        addr = get_remote_addr(transport)
        key = addr[0] if addr else ""
        refusal = self.counts.admit(key)
        if refusal is not None:
            self.transport = transport
            transport.write(refusal)
            transport.close()
            return
        self._client_key = key
        self._head_room = self.limits.max_header_bytes
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._client_key is not None:
            self.counts.release(self._client_key)
            self._client_key = None
        self._disarm_head_timer()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        """The connection passes to the WebSocket protocol, whose end this protocol never
        sees: the new one gives the connection's count back when it closes."""
        key, self._client_key = self._client_key, None
        self._disarm_head_timer()
        super().handle_websocket_upgrade()
        upgraded = self.transport.get_protocol()
        lost = upgraded.connection_lost
        counts = self.counts

        def connection_lost(exc: Exception | None) -> None:
            if key is not None:
                counts.release(key)
            lost(exc)

        upgraded.connection_lost = connection_lost  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        if self._client_key is None:
            return  # refused: closing
        if self._in_head:
            if len(data) > self._head_room:
                self._feed_bounded(data)
                return
            self._head_room -= len(data)
        self._feed(data)

    def _feed_bounded(self, data: bytes) -> None:
        """Feed a head that may pass its byte budget: never more than the budget at once."""
        view = memoryview(data)
        while view:
            if self._in_head:
                if self._head_room <= 0:
                    self._reject_head()
                    return
                piece, view = view[: self._head_room], view[self._head_room :]
                self._head_room -= len(piece)
            else:
                piece, view = view, view[len(view) :]
            self._feed(piece)
            if self.transport.is_closing():
                return

    def _feed(self, data: bytes | memoryview) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._head_too_large:
                self._reject_head()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _reject_head(self) -> None:
        # A response still being written for an earlier pipelined request would be
        # corrupted by a 431 in the middle of it: then the connection only closes.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_HEAD_TOO_LARGE)
        self.transport.close()

    # parser callbacks
    def on_message_begin(self) -> None:
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._head_too_large = True
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_room = self.limits.max_header_bytes

    def on_response_complete(self) -> None:
        # The next request head (or the connection's end) is due within the timeout; a
        # pipelined request already read, which the parent starts now, needs none.
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm_head_timer()

    # the head timer
    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def edge_protocol(limits: EdgeLimits) -> type[EdgeProtocol]:
    """An `EdgeProtocol` class with its own limits and connection counts (one per server)."""
    counts = ConnectionCounts(limits)

    class BoundEdgeProtocol(EdgeProtocol):
        pass

    BoundEdgeProtocol.limits = limits
    BoundEdgeProtocol.counts = counts
    return BoundEdgeProtocol
