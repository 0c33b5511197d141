"""One behaviour for every `AlertRepository`: in memory, SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`). A backend
is opened with `backend.open()`; every opening reaches the same database, as a second
gateway would. The PostgreSQL backend runs on a real cluster (tests/pg.py), never a mock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cumulo.errors import Conflict
from cumulo.store.alerts import MAX_ALERTS, Alert, AlertRepository
from cumulo.store.memory_alerts import MemoryAlertRepository
from cumulo.store.postgres import PostgresStore
from cumulo.store.postgres_alerts import PostgresAlertRepository
from cumulo.store.sqlite_alerts import SQLiteAlertRepository

NS = "beta"


@dataclass
class Backend:
    name: str
    # max_alerts: how many the opened repository keeps (MAX_ALERTS when None).
    open: Callable[..., AbstractAsyncContextManager[AlertRepository]]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        shared: list[MemoryAlertRepository] = []

        @asynccontextmanager
        async def open_memory(max_alerts: int = MAX_ALERTS) -> AsyncIterator[AlertRepository]:
            if not shared:
                shared.append(MemoryAlertRepository(max_alerts=max_alerts))
            shared[0].max_alerts = max_alerts
            yield shared[0]

        yield Backend("memory", open_memory)
    elif request.param == "sqlite":

        @asynccontextmanager
        async def open_sqlite(max_alerts: int = MAX_ALERTS) -> AsyncIterator[AlertRepository]:
            async with SQLiteAlertRepository(
                tmp_path / "insights.db", max_alerts=max_alerts
            ) as repo:
                yield repo

        yield Backend("sqlite", open_sqlite)
    else:
        dsn = request.getfixturevalue("pg_dsn")

        @asynccontextmanager
        async def open_postgres(max_alerts: int = MAX_ALERTS) -> AsyncIterator[AlertRepository]:
            async with PostgresStore(dsn, max_size=4) as store:
                if max_alerts == MAX_ALERTS:
                    yield store.alerts
                else:
                    yield PostgresAlertRepository(store, max_alerts=max_alerts)

        yield Backend("postgresql", open_postgres)


def run(
    backend: Backend, body: Callable[[AlertRepository], Awaitable[None]], **open_args: Any
) -> None:
    async def main() -> None:
        async with backend.open(**open_args) as repo:
            await body(repo)

    asyncio.run(main())


def alert(
    alert_id: str,
    ts: float,
    *,
    namespace: str = NS,
    reasons: list[str] | None = None,
    observed: dict[str, Any] | None = None,
) -> Alert:
    return Alert(
        id=alert_id,
        ts=ts,
        namespace=namespace,
        kind="caller",
        entity=f"key_{alert_id}",
        reasons=reasons if reasons is not None else ["auth_failures"],
        score=0.75,
        window_start=ts - 60.0,
        window_s=60.0,
        observed=observed
        if observed is not None
        else {"requests": 0, "errors": 0, "denials": 80, "distinct": 0, "latency_ms": 1.5},
    )


def ids(alerts: list[Alert]) -> list[str]:
    return [a.id for a in alerts]


# ---------------------------------------------------------------- add and list
def test_nothing_stored_lists_nothing(backend: Backend) -> None:
    async def body(repo: AlertRepository) -> None:
        assert await repo.list(None) == []
        assert await repo.list(NS, since=0.0, limit=10) == []
        await repo.add([])
        assert await repo.list(None) == []

    run(backend, body)


def test_alerts_come_back_as_stored_newest_first(backend: Backend) -> None:
    async def body(repo: AlertRepository) -> None:
        first = alert("a1", 100.0, reasons=["rate_spike", "many_functions"])
        second = alert(
            "a2",
            300.0,
            reasons=[],
            observed={"requests": 900, "nested": {"z": [1, 2.5, None]}, "a": "x"},
        )
        third = alert("a3", 200.0, namespace="*")
        await repo.add([first, second])
        await repo.add([third])
        got = await repo.list(None)
        assert got == [second, third, first]
        assert all(isinstance(a.ts, float) and isinstance(a.score, float) for a in got)
        assert list(got[0].observed) == ["requests", "nested", "a"]  # as JSON gives it
        assert got[0].public() == {
            "id": "a2",
            "ts": 300.0,
            "namespace": NS,
            "kind": "caller",
            "entity": "key_a2",
            "reasons": [],
            "score": 0.75,
            "window_start": 240.0,
            "window_s": 60.0,
            "observed": {"requests": 900, "nested": {"z": [1, 2.5, None]}, "a": "x"},
        }

    run(backend, body)


def test_list_filters_by_namespace_since_and_limit(backend: Backend) -> None:
    async def body(repo: AlertRepository) -> None:
        await repo.add(
            [
                alert("b1", 10.0),
                alert("o1", 15.0, namespace="other"),
                alert("p1", 20.0, namespace="*"),
                alert("b2", 30.0),
                alert("b3", 40.0),
            ]
        )
        assert ids(await repo.list(None)) == ["b3", "b2", "p1", "o1", "b1"]
        assert ids(await repo.list(NS)) == ["b3", "b2", "b1"]
        assert ids(await repo.list("*")) == ["p1"]  # the platform's, not everyone's
        assert ids(await repo.list("nobody")) == []
        assert ids(await repo.list(NS, since=30.0)) == ["b3", "b2"]  # since is inclusive
        assert ids(await repo.list(None, since=15.0)) == ["b3", "b2", "p1", "o1"]
        assert ids(await repo.list(None, since=41.0)) == []
        assert ids(await repo.list(None, limit=2)) == ["b3", "b2"]
        assert ids(await repo.list(NS, since=10.0, limit=2)) == ["b3", "b2"]
        assert await repo.list(None, limit=0) == []

    run(backend, body)


def test_equal_times_list_the_latest_added_first(backend: Backend) -> None:
    async def body(repo: AlertRepository) -> None:
        await repo.add([alert("t1", 50.0), alert("t2", 50.0)])
        await repo.add([alert("t3", 50.0)])
        await repo.add([alert("t0", 49.0), alert("t4", 51.0)])
        assert ids(await repo.list(None)) == ["t4", "t3", "t2", "t1", "t0"]
        assert ids(await repo.list(NS, since=50.0)) == ["t4", "t3", "t2", "t1"]

    run(backend, body)


def test_returned_and_stored_alerts_are_the_callers_own(backend: Backend) -> None:
    async def body(repo: AlertRepository) -> None:
        given = alert("m1", 1.0)
        await repo.add([given])
        given.reasons.append("changed after add")
        given.observed["requests"] = 12345
        got = (await repo.list(None))[0]
        got.reasons.clear()
        got.observed.clear()
        again = (await repo.list(None))[0]
        assert again.reasons == ["auth_failures"]
        assert again.observed["requests"] == 0

    run(backend, body)


# ---------------------------------------------------------------- atomicity and retention
def test_a_taken_id_is_a_conflict_and_stores_none_of_the_batch(backend: Backend) -> None:
    async def body(repo: AlertRepository) -> None:
        await repo.add([alert("d1", 1.0)])
        with pytest.raises(Conflict) as taken:
            await repo.add([alert("d2", 2.0), alert("d1", 3.0)])
        assert taken.value.code == "alert_exists"
        with pytest.raises(Conflict):
            await repo.add([alert("d3", 4.0), alert("d3", 5.0)])  # twice in one batch
        assert ids(await repo.list(None)) == ["d1"]
        await repo.add([alert("d2", 6.0)])  # the failed adds left nothing half done
        assert ids(await repo.list(None)) == ["d2", "d1"]

    run(backend, body)


def test_the_oldest_beyond_max_alerts_are_dropped(backend: Backend) -> None:
    async def body(repo: AlertRepository) -> None:
        await repo.add([alert("r1", 10.0), alert("r2", 20.0), alert("r3", 30.0)])
        assert ids(await repo.list(None)) == ["r3", "r2", "r1"]
        # One batch over the limit, one of it older than what is kept: dropped at once.
        await repo.add([alert("r4", 40.0), alert("r0", 5.0)])
        assert ids(await repo.list(None)) == ["r4", "r3", "r2"]
        # Across namespaces: the limit is the repository's, not a namespace's.
        await repo.add([alert("x1", 35.0, namespace="other")])
        assert ids(await repo.list(None)) == ["r4", "x1", "r3"]
        # Equal times: the earliest added goes first.
        await repo.add([alert("e1", 50.0), alert("e2", 50.0), alert("e3", 50.0)])
        assert ids(await repo.list(None)) == ["e3", "e2", "e1"]
        await repo.add([alert("e4", 50.0)])
        assert ids(await repo.list(None)) == ["e4", "e3", "e2"]

    run(backend, body, max_alerts=3)


def test_a_second_opening_sees_the_first_ones_writes(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as first:
            await first.add([alert("s1", 1.0), alert("s2", 2.0)])
        async with backend.open() as second:
            assert ids(await second.list(None)) == ["s2", "s1"]
            await second.add([alert("s3", 3.0)])
            with pytest.raises(Conflict):
                await second.add([alert("s1", 4.0)])
        async with backend.open() as third:
            assert ids(await third.list(NS)) == ["s3", "s2", "s1"]

    asyncio.run(main())


def test_concurrent_adds_all_land_and_retention_holds(backend: Backend) -> None:
    async def body(repo: AlertRepository) -> None:
        batches = [[alert(f"c{i}a", float(i)), alert(f"c{i}b", i + 0.5)] for i in range(12)]
        await asyncio.gather(*(repo.add(b) for b in batches))
        assert (
            ids(await repo.list(None, limit=100))
            == [a.id for b in reversed(batches) for a in reversed(b)][:10]
        )

    run(backend, body, max_alerts=10)


# ---------------------------------------------------------------- SQLite only
OLD_ROW = (
    "alr_0123456789abcdef",
    1700000000.5,
    NS,
    "function",
    "beta/echo",
    '["error_storm"]',
    0.9,
    1699999940.0,
    60.0,
    '{"requests":45,"errors":40}',
)


def test_sqlite_reads_an_insights_db_written_before_the_seam(tmp_path: Path) -> None:
    path = tmp_path / "insights.db"
    # The file as cumulo.ai.alerts created it: its DDL, then a row as it inserted them.
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE alerts (id TEXT PRIMARY KEY, ts REAL NOT NULL, "
            "namespace TEXT NOT NULL, kind TEXT NOT NULL, entity TEXT NOT NULL, "
            "reasons TEXT NOT NULL, score REAL NOT NULL, window_start REAL NOT NULL, "
            "window_s REAL NOT NULL, observed TEXT NOT NULL);"
            "CREATE INDEX alerts_ns_ts ON alerts (namespace, ts);"
            "CREATE INDEX alerts_ts ON alerts (ts);"
        )
        db.execute("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", OLD_ROW)
    db.close()

    async def main() -> None:
        async with SQLiteAlertRepository(path) as repo:
            [old] = await repo.list(NS)
            assert old.id == OLD_ROW[0]
            assert old.reasons == ["error_storm"]
            assert old.observed == {"requests": 45, "errors": 40}
            await repo.add([alert("new", 1700000100.0)])
            assert ids(await repo.list(None)) == ["new", OLD_ROW[0]]

    asyncio.run(main())
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert names == {"alerts", "alerts_ns_ts", "alerts_ts", "sqlite_autoindex_alerts_1"}


def test_sqlite_creates_its_file_on_the_first_add_private(tmp_path: Path) -> None:
    path = tmp_path / "insights.db"

    async def main() -> None:
        async with SQLiteAlertRepository(path) as repo:
            assert await repo.list(None) == []
            await repo.add([])
            assert not path.exists()  # listing and empty adds create nothing
            await repo.add([alert("f1", 1.0)])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    asyncio.run(main())


# ---------------------------------------------------------------- PostgreSQL only
def test_postgres_adds_from_two_pools_keep_the_newest_max_alerts(pg_dsn: str) -> None:
    async def main() -> None:
        async with PostgresStore(pg_dsn, max_size=4) as a, PostgresStore(pg_dsn, max_size=4) as b:
            repos = [PostgresAlertRepository(s, max_alerts=7) for s in (a, b)]
            # Interleaved times, so that each gateway's adds displace the other's.
            batches = [[alert(f"g{i}x", float(i)), alert(f"g{i}y", i + 40.5)] for i in range(40)]
            await asyncio.gather(*(repos[i % 2].add(bt) for i, bt in enumerate(batches)))
            everything = sorted((x for bt in batches for x in bt), key=lambda x: -x.ts)
            assert ids(await repos[0].list(None, limit=100)) == ids(everything[:7])
            async with a.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM ai_alerts")
                assert await cur.fetchone() == (7,)

    asyncio.run(main())


def test_postgres_one_id_raced_from_two_pools_is_stored_once(pg_dsn: str) -> None:
    async def main() -> None:
        async with PostgresStore(pg_dsn, max_size=4) as a, PostgresStore(pg_dsn, max_size=4) as b:
            results = await asyncio.gather(
                a.alerts.add([alert("same", 1.0), alert("only-a", 2.0)]),
                b.alerts.add([alert("same", 3.0), alert("only-b", 4.0)]),
                return_exceptions=True,
            )
            conflicts = [r for r in results if isinstance(r, Conflict)]
            assert len(conflicts) == 1
            assert results.count(None) == 1
            got = ids(await b.alerts.list(None))
            assert got in (["only-a", "same"], ["only-b", "same"])

    asyncio.run(main())
