"""One behaviour for every `InvocationRepository`: in memory, SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`). A backend
is opened with `backend.open()`; every opening reaches the same database, as a second
gateway would. The PostgreSQL backend runs on a real cluster (tests/pg.py), never a mock.
Durations are binary fractions, so they come back exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from cumulo.store.base import InvocationRecord
from cumulo.store.invocations import InvocationRepository
from cumulo.store.memory_invocations import MemoryInvocationRepository
from cumulo.store.postgres import PostgresStore
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.sqlite_invocations import SQLiteInvocationRepository
from tests.store.backends import BACKENDS, Backend, make_backend, run

NS, FN = "default", "hello"


def record(
    i: int,
    *,
    function: str = FN,
    namespace: str = NS,
    status: int = 200,
    code: str = "ok",
    cold: bool = False,
    started_at: float | None = None,
) -> InvocationRecord:
    return InvocationRecord(
        f"inv-{i:05d}",
        namespace,
        function,
        1 + i % 3,
        status,
        code,
        cold,
        1_700_000_000.0 + i if started_at is None else started_at,
        0.5 + i / 4,
    )


@asynccontextmanager
async def _sqlite(tmp: Path) -> AsyncIterator[InvocationRepository]:
    store = SQLiteStore(tmp / "cumulo.db")
    store.open()
    try:
        yield SQLiteInvocationRepository(store)
    finally:
        store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[InvocationRepository]:
    return make_backend(
        request,
        tmp_path,
        memory=MemoryInvocationRepository,
        sqlite=_sqlite,
        postgres=lambda store: store.invocations,
    )


def test_a_record_comes_back_as_stored_in_its_namespace_only(
    backend: Backend[InvocationRepository],
) -> None:
    async def body(repo: InvocationRepository) -> None:
        assert await repo.get(NS, "inv-00001") is None
        cold = record(1, cold=True, status=500, code="handler_error")
        warm = record(2)
        await repo.append([cold, warm])
        assert await repo.get(NS, "inv-00001") == cold
        assert await repo.get(NS, "inv-00002") == warm
        assert await repo.get("other", "inv-00001") is None
        assert await repo.get(NS, "inv-99999") is None
        got = await repo.get(NS, "inv-00001")
        assert got is not None
        assert got.cold is True
        assert got.duration_ms == 0.75

    run(backend, body)


def test_a_later_record_of_an_id_replaces_it(backend: Backend[InvocationRepository]) -> None:
    async def body(repo: InvocationRepository) -> None:
        first = record(1)
        await repo.append([first])
        later = dataclasses.replace(first, status=504, code="timeout", duration_ms=30_000.0)
        await repo.append([later])
        assert await repo.get(NS, first.id) == later
        # Within one batch the last one wins too.
        a, b = record(2, code="a"), record(2, code="b")
        await repo.append([a, record(3), b])
        assert await repo.get(NS, a.id) == b
        assert len(await repo.recent(NS, FN, 100)) == 3

    run(backend, body)


def test_recent_lists_the_latest_started_first_up_to_limit(
    backend: Backend[InvocationRepository],
) -> None:
    async def body(repo: InvocationRepository) -> None:
        # Appended out of order: listing follows started_at, not arrival.
        records = [record(i) for i in (3, 0, 4, 1, 2)]
        await repo.append(records)
        assert [r.id for r in await repo.recent(NS, FN, 100)] == [
            f"inv-{i:05d}" for i in (4, 3, 2, 1, 0)
        ]
        assert [r.id for r in await repo.recent(NS, FN, 2)] == ["inv-00004", "inv-00003"]
        assert await repo.recent(NS, FN, 100) == sorted(
            records, key=lambda r: r.started_at, reverse=True
        )

    run(backend, body)


def test_functions_and_namespaces_keep_their_own_records(
    backend: Backend[InvocationRepository],
) -> None:
    async def body(repo: InvocationRepository) -> None:
        await repo.append(
            [record(1), record(2, function="other"), record(3, namespace="far"), record(4)]
        )
        assert [r.id for r in await repo.recent(NS, FN, 10)] == ["inv-00004", "inv-00001"]
        assert [r.id for r in await repo.recent(NS, "other", 10)] == ["inv-00002"]
        assert [r.id for r in await repo.recent("far", FN, 10)] == ["inv-00003"]
        assert await repo.recent("far", "other", 10) == []

    run(backend, body)


def test_an_empty_append_does_nothing(backend: Backend[InvocationRepository]) -> None:
    async def body(repo: InvocationRepository) -> None:
        await repo.append([])
        assert await repo.recent(NS, FN, 10) == []

    run(backend, body)


def test_a_big_batch_is_stored_whole(backend: Backend[InvocationRepository]) -> None:
    async def body(repo: InvocationRepository) -> None:
        batch = [record(i) for i in range(5000)]
        await repo.append(batch)
        got = await repo.recent(NS, FN, 10_000)
        assert len(got) == 5000
        assert got[0] == batch[-1]
        assert got[-1] == batch[0]

    run(backend, body)


def test_a_second_opening_reads_the_first_ones_records(
    backend: Backend[InvocationRepository],
) -> None:
    async def main() -> None:
        async with backend.open() as first:
            await first.append([record(1), record(2)])
        async with backend.open() as second:
            assert await second.get(NS, "inv-00001") == record(1)
            await second.append([record(3)])
            assert [r.id for r in await second.recent(NS, FN, 10)] == [
                "inv-00003",
                "inv-00002",
                "inv-00001",
            ]

    asyncio.run(main())


# ---------------------------------------------------------------- PostgreSQL only
def test_postgres_two_pools_upserting_overlapping_ids_agree(pg_dsn: str) -> None:
    async def main() -> None:
        async with PostgresStore(pg_dsn, max_size=4) as a, PostgresStore(pg_dsn, max_size=4) as b:
            repos = [a.invocations, b.invocations]

            async def gateway(g: int) -> None:
                for n in range(20):
                    # Overlapping ids in opposite orders: no deadlock, no lost record.
                    ids = range(50) if g == 0 else reversed(range(50))
                    await repos[g].append([record(i, code=f"g{g}-{n}") for i in ids])

            await asyncio.gather(gateway(0), gateway(1))
            got = await repos[0].recent(NS, FN, 1000)
            assert sorted(r.id for r in got) == [f"inv-{i:05d}" for i in range(50)]
            assert {r.code for r in got} <= {"g0-19", "g1-19"}  # each id: a last write

    asyncio.run(main())
