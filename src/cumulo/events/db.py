"""The events service's own database thread, and group commits on top of it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 1000


class DbThread:
    """One thread owns the queue's connection; callers `await db.call(fn, ...)`."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cumulo-events-db")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class Batcher(Generic[T, R]):
    """Group commit: items submitted while a write is in flight go together in the next one.

    `flush` takes a batch and returns one result per item, in order; it runs on the database
    thread. Every submitter waits for its own item to be committed (or for the error)."""

    def __init__(
        self, db: DbThread, flush: Callable[[list[T]], list[R]], max_batch: int = MAX_BATCH
    ) -> None:
        self._db = db
        self._flush = flush
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        # A submitter cancelled meanwhile (client gone) cancels only its future: the item
        # stays in the batch and is written all the same.
        return await future

    async def drain(self) -> None:
        """Wait until everything submitted so far is written."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                results = await self._db.call(self._flush, [item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
