"""Function logs and invocation records: buffered off the hot path, flushed in batches,
and fanned out live to `cumulo logs -f` followers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from cumulo.observability import memory
from cumulo.observability.log_limits import LogLimiter, LogLimits, record_size
from cumulo.observability.outcomes import Outcome
from cumulo.store.base import InvocationRecord, LogRecord
from cumulo.store.invocations import InvocationRepository
from cumulo.store.logs import LogRepository
from cumulo.tasks import cancel_and_wait

FLUSH_INTERVAL_S = 0.2
MAX_BUFFER = 50_000
FOLLOWER_QUEUE = 1000
TRIM_AFTER_BYTES = 4 * 1024 * 1024  # a flush this big is a burst: give the heap back after


class LogGuard(Protocol):
    """The privacy room (cumulo.privacy.service): redacts lines before they are stored or
    followed, and keeps a data subject's lines (None) for its own sealed storage."""

    def log(self, record: LogRecord) -> LogRecord | None: ...

    def invocation(self, record: InvocationRecord) -> None: ...


class Recorder:
    def __init__(
        self,
        logs: LogRepository,
        invocations: InvocationRepository,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        limits: LogLimits | None = None,
    ) -> None:
        # Where flushed lines and records go (store/logs.py, store/invocations.py).
        self.log_repo = logs
        self.invocation_repo = invocations
        self._interval = flush_interval_s
        # Every log line of every function passes here first (the one sink): the caps.
        self.limiter = LogLimiter(limits)
        self._logs: list[LogRecord] = []
        self._buffered = 0  # bytes in self._logs
        self._since_trim = 0
        self._invocations: list[InvocationRecord] = []
        self._followers: dict[tuple[str, str], set[asyncio.Queue[LogRecord]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.guard: LogGuard | None = None
        # Invocation records arrive as outcomes in batches (Platform.drain_outcomes): a
        # flush, which readers call before a query, first takes in what is pending.
        self.catch_up: Callable[[], None] = lambda: None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.flush()

    def log(self, record: LogRecord) -> None:
        admitted = self.limiter.admit(record, time.monotonic())
        if admitted is None:
            return
        record = admitted
        if self.guard is not None:
            guarded = self.guard.log(record)
            if guarded is None:
                return
            record = guarded
        size = record_size(record)
        if (
            len(self._logs) < MAX_BUFFER
            and self._buffered + size <= self.limiter.limits.buffer_bytes
        ):
            self._logs.append(record)
            self._buffered += size
        else:
            self.dropped += 1
        for queue in self._followers.get((record.namespace, record.function), ()):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(record)

    def observe(self, o: Outcome) -> None:
        """The outcome observer: a finished invocation becomes its stored record."""
        self.invocation(
            InvocationRecord(
                id=o.id,
                namespace=o.namespace,
                function=o.function,
                version=o.version,
                status=o.status,
                code=o.code,
                cold=o.cold,
                started_at=o.started_at,
                duration_ms=o.duration_s * 1000,
            )
        )

    def invocation(self, record: InvocationRecord) -> None:
        if self.guard is not None:
            self.guard.invocation(record)
        if len(self._invocations) < MAX_BUFFER:
            self._invocations.append(record)
        else:
            self.dropped += 1

    async def flush(self) -> None:
        self.catch_up()
        logs, self._logs = self._logs, []
        flushed, self._buffered = self._buffered, 0
        invocations, self._invocations = self._invocations, []
        limits = self.limiter.limits
        if logs:
            await self.log_repo.append(
                logs, retain_rows=limits.retain_rows, retain_bytes=limits.retain_bytes
            )
        if invocations:
            await self.invocation_repo.append(invocations)
        self._since_trim += flushed
        if self._since_trim >= TRIM_AFTER_BYTES and not self._logs:
            # The burst is over (nothing new came in meanwhile): return its pages.
            self._since_trim = 0
            del logs
            # The store's caches (SQLite's page cache), then the C heap, back to the OS;
            # malloc_trim off the event loop, as it ran on the store thread before.
            await self.log_repo.shrink_memory()
            await asyncio.to_thread(memory.trim)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def follow(self, namespace: str, function: str) -> AsyncIterator[LogRecord]:
        queue: asyncio.Queue[LogRecord] = asyncio.Queue(FOLLOWER_QUEUE)
        key = (namespace, function)
        self._followers.setdefault(key, set()).add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._followers[key].discard(queue)
            if not self._followers[key]:
                del self._followers[key]
