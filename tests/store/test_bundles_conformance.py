"""One behaviour for every `BundleRepository`: in memory and PostgreSQL (the embedded
default keeps bundles as files in the data dir and has no repository).

Each opening of a backend reaches the same data, as a second gateway would. PostgreSQL
runs on a real cluster (tests/pg.py), never a mock.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from cumulo.store.bundles import BundleRepository
from cumulo.store.memory_bundles import MemoryBundleRepository
from cumulo.store.postgres import PostgresStore
from tests.store.backends import Backend, run

DAY = 86_400.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["memory", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[BundleRepository]:
    if request.param == "memory":
        shared = MemoryBundleRepository()

        @asynccontextmanager
        async def open_memory() -> AsyncIterator[BundleRepository]:
            yield shared

        return Backend("memory", open_memory)
    dsn = request.getfixturevalue("pg_dsn")

    @asynccontextmanager
    async def open_postgres() -> AsyncIterator[BundleRepository]:
        async with PostgresStore(dsn, max_size=2) as store:
            yield store.bundles

    return Backend("postgresql", open_postgres)


def test_a_stored_bundle_reads_back_byte_for_byte(backend: Backend[BundleRepository]) -> None:
    data = bytes(range(256)) * 64  # every byte value, NULs included

    async def body(repo: BundleRepository) -> None:
        assert await repo.get(sha(data)) is None
        await repo.put(sha(data), data, 1.0)
        assert await repo.get(sha(data)) == data
        async with backend.open() as other:  # another gateway
            assert await other.get(sha(data)) == data

    run(backend, body)


def test_storing_a_bundle_twice_keeps_one_copy(backend: Backend[BundleRepository]) -> None:
    data = b"bundle"

    async def body(repo: BundleRepository) -> None:
        await repo.put(sha(data), data, 1.0)
        await repo.put(sha(data), data, 2.0)
        assert await repo.get(sha(data)) == data
        assert await repo.collect(set(), older_than=1.5) == []  # the second put refreshed it
        assert await repo.collect(set(), older_than=2.5) == [sha(data)]
        assert await repo.get(sha(data)) is None

    run(backend, body)


def test_collection_keeps_referenced_and_recent_bundles(
    backend: Backend[BundleRepository],
) -> None:
    old, kept, recent = b"old", b"kept", b"recent"

    async def body(repo: BundleRepository) -> None:
        await repo.put(sha(old), old, 1.0)
        await repo.put(sha(kept), kept, 1.0)
        await repo.put(sha(recent), recent, DAY)
        removed = await repo.collect({sha(kept)}, older_than=DAY - 1)
        assert removed == [sha(old)]
        assert await repo.get(sha(old)) is None
        assert await repo.get(sha(kept)) == kept
        assert await repo.get(sha(recent)) == recent

    run(backend, body)


def test_postgres_collection_keeps_a_bundle_a_version_names(pg_dsn: str) -> None:
    """A version written on another gateway after this one read its referenced set still
    protects its bundle: the DELETE checks the versions table itself."""
    data = b"named by a version"

    async def main() -> None:
        async with PostgresStore(pg_dsn, max_size=2) as store:
            await store.bundles.put(sha(data), data, 1.0)
            await store.control.add_version(
                "default",
                "f",
                bundle_sha=sha(data),
                module="main",
                attr="handler",
                kind="lambda",
                config={},
                promote=True,
                now=1.0,
            )
            assert await store.bundles.collect(set(), older_than=DAY) == []
            assert await store.bundles.get(sha(data)) == data

    asyncio.run(main())
