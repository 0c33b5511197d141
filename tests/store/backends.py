"""What every conformance suite in tests/store/ shares: one `Backend` per storage backend,
opened as many times as a test likes (each opening reaches the same data, as a second
gateway would), and `run` to drive an async test body on one opening."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import pytest

from cumulo.store.postgres import PostgresStore

R = TypeVar("R")
BACKENDS = ["memory", "sqlite", "postgresql"]


@dataclass
class Backend(Generic[R]):
    name: str
    open: Callable[[], AbstractAsyncContextManager[R]]


def make_backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    *,
    memory: Callable[[], R],
    sqlite: Callable[[Path], AbstractAsyncContextManager[R]],
    postgres: Callable[[PostgresStore], R],
) -> Backend[R]:
    """The backend `request.param` names. `memory` makes the one fake every opening shares;
    `sqlite` opens the repository over files in the test's tmp dir; `postgres` takes it
    from a `PostgresStore` on the test's own database (tests/store/conftest.py)."""
    name = request.param
    if name == "memory":
        shared = memory()

        @asynccontextmanager
        async def open_memory() -> AsyncIterator[R]:
            yield shared

        return Backend(name, open_memory)
    if name == "sqlite":
        return Backend(name, lambda: sqlite(tmp_path))
    dsn = request.getfixturevalue("pg_dsn")

    @asynccontextmanager
    async def open_postgres() -> AsyncIterator[R]:
        async with PostgresStore(dsn, max_size=4) as store:
            yield postgres(store)

    return Backend(name, open_postgres)


def run(backend: Backend[R], body: Callable[[R], Awaitable[None]]) -> None:
    async def main() -> None:
        async with backend.open() as repo:
            await body(repo)

    asyncio.run(main())
