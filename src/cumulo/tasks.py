"""Background loops (flushers, reapers, refreshers): one way to stop them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has stopped: a stop that returns while a flusher
    is still mid-write would close the database under it. None: nothing to stop."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class TaskSet:
    """Tasks started in the background and held until they finish: the event loop keeps
    only weak references to tasks, and one collected mid-flight would lose its work (a
    worker's reply, a spawn, a batch)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def pending(self) -> list[asyncio.Task[Any]]:
        return list(self._tasks)

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait until each has stopped."""
        for task in self.pending():
            await cancel_and_wait(task)
