"""Group commits over the job repository: backend-neutral batching of writes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 1000


class Batcher(Generic[T, R]):
    """Group commit: items submitted while a write is in flight go together in the next one.

    `flush` takes a batch and returns one result per item, in order (one repository call:
    one transaction). Every submitter waits for its own item to be committed (or for the
    error)."""

    def __init__(
        self, flush: Callable[[list[T]], Awaitable[list[R]]], max_batch: int = MAX_BATCH
    ) -> None:
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
                results = await self._flush([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
