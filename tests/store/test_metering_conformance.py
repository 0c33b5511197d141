"""One behaviour for every `MeteringRepository`: in memory, SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`). A backend
is opened with `backend.open()`; every opening reaches the same database, as a second
gateway would. The PostgreSQL backend runs on a real cluster (tests/pg.py), never a mock.
Seconds and GB-seconds are binary fractions, so sums are exact in any order.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cumulo.errors import StoreUnavailable
from cumulo.store.memory_metering import MemoryMeteringRepository
from cumulo.store.metering import INT64_MAX, MeteringRepository, Quota, UsageDelta, UsageRow
from cumulo.store.postgres import PostgresStore
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.sqlite_metering import SQLiteMeteringRepository
from tests.pg import PgCluster
from tests.store.backends import BACKENDS, Backend, make_backend, run

NS = "default"
H = 3600
T0 = 1_700_000_000 // H * H  # an hour's start


@asynccontextmanager
async def _sqlite(tmp: Path) -> AsyncIterator[MeteringRepository]:
    store = SQLiteStore(tmp / "cumulo.db")
    store.open()
    try:
        yield SQLiteMeteringRepository(store)
    finally:
        store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[MeteringRepository]:
    return make_backend(
        request,
        tmp_path,
        memory=MemoryMeteringRepository,
        sqlite=_sqlite,
        postgres=lambda store: store.metering,
    )


def delta(
    function: str = "hello",
    hour: int = T0,
    *,
    namespace: str = NS,
    invocations: int = 1,
    errors: int = 0,
    gb_seconds: float = 0.25,
    cpu_seconds: float = 0.125,
    wall_seconds: float = 0.5,
    bytes_in: int = 10,
    bytes_out: int = 20,
    peak_rss_mb: float = 32.0,
) -> UsageDelta:
    return UsageDelta(
        namespace,
        function,
        hour,
        invocations,
        errors,
        gb_seconds,
        cpu_seconds,
        wall_seconds,
        bytes_in,
        bytes_out,
        peak_rss_mb,
    )


def row(
    function: str = "hello",
    hour: int | None = T0,
    *,
    namespace: str = NS,
    invocations: int = 1,
    errors: int = 0,
    gb_seconds: float = 0.25,
    cpu_seconds: float = 0.125,
    wall_seconds: float = 0.5,
    bytes_in: int = 10,
    bytes_out: int = 20,
    peak_rss_mb: float = 32.0,
) -> UsageRow:
    return UsageRow(
        namespace,
        function,
        hour,
        invocations,
        errors,
        gb_seconds,
        cpu_seconds,
        bytes_in,
        bytes_out,
        wall_seconds,
        peak_rss_mb,
    )


async def everything(repo: MeteringRepository) -> list[UsageRow]:
    return await repo.usage_by_hour(0, INT64_MAX)  # the widest range an hour can be in


def assert_typed(rows: list[UsageRow]) -> None:
    """Ints are ints and floats floats, whatever the driver hands back."""
    for r in rows:
        assert r.hour is None or type(r.hour) is int
        assert all(type(v) is int for v in (r.invocations, r.errors, r.bytes_in, r.bytes_out)), r
        assert all(
            type(v) is float for v in (r.gb_seconds, r.cpu_seconds, r.wall_seconds, r.peak_rss_mb)
        ), r


# ---------------------------------------------------------------- writing usage
def test_deltas_add_to_their_row_and_peak_rss_is_the_larger(backend: Backend) -> None:
    async def body(repo: MeteringRepository) -> None:
        assert await everything(repo) == []
        await repo.add_usage([delta(peak_rss_mb=32.0)])
        assert await everything(repo) == [row()]
        await repo.add_usage([delta(invocations=2, errors=1, peak_rss_mb=16.0)])
        await repo.add_usage([delta(gb_seconds=1.5, bytes_in=0, bytes_out=5, peak_rss_mb=64.5)])
        rows = await everything(repo)
        assert rows == [
            row(
                invocations=4,
                errors=1,
                gb_seconds=2.0,
                cpu_seconds=0.375,
                wall_seconds=1.5,
                bytes_in=20,
                bytes_out=45,
                peak_rss_mb=64.5,
            )
        ]
        assert_typed(rows)

    run(backend, body)


def test_one_call_writes_many_rows_and_repeated_keys_all_add_up(backend: Backend) -> None:
    async def body(repo: MeteringRepository) -> None:
        await repo.add_usage(
            [
                delta("a"),
                delta("b", T0 + H),
                delta("a", peak_rss_mb=48.0),
                delta("a", namespace="team"),
                delta("a", peak_rss_mb=8.0),
            ]
        )
        assert await everything(repo) == [
            row(
                "a",
                invocations=3,
                gb_seconds=0.75,
                cpu_seconds=0.375,
                wall_seconds=1.5,
                bytes_in=30,
                bytes_out=60,
                peak_rss_mb=48.0,
            ),
            row("a", namespace="team"),
            row("b", T0 + H),
        ]

    run(backend, body)


def test_an_empty_call_writes_nothing(backend: Backend) -> None:
    async def body(repo: MeteringRepository) -> None:
        await repo.add_usage([])
        assert await everything(repo) == []
        assert await repo.month_to_date(0) == {}

    run(backend, body)


def test_a_failing_call_writes_none_of_its_deltas(backend: Backend) -> None:
    async def body(repo: MeteringRepository) -> None:
        await repo.add_usage([delta("a")])
        good = [delta("a"), delta("b")]  # an existing row and a new one, before the bad one
        with pytest.raises(ValueError, match="signed 64-bit"):
            await repo.add_usage([*good, delta("c", invocations=INT64_MAX + 1)])
        assert await everything(repo) == [row("a")]
        # The caller retries what did not fail: counted once.
        await repo.add_usage(good)
        assert await everything(repo) == [
            row(
                "a",
                invocations=2,
                gb_seconds=0.5,
                cpu_seconds=0.25,
                wall_seconds=1.0,
                bytes_in=20,
                bytes_out=40,
            ),
            row("b"),
        ]
        # The largest 64-bit count is stored as it is.
        await repo.add_usage([delta("big", invocations=INT64_MAX, bytes_out=INT64_MAX)])
        big = await repo.usage_by_function(0, 2**62, NS)
        assert [(r.function, r.invocations, r.bytes_out) for r in big][-1] == (
            "big",
            INT64_MAX,
            INT64_MAX,
        )

    run(backend, body)


def test_concurrent_calls_all_add_up(backend: Backend) -> None:
    async def body(repo: MeteringRepository) -> None:
        await asyncio.gather(
            *(repo.add_usage([delta("a"), delta("b", peak_rss_mb=float(i))]) for i in range(24))
        )
        rows = await everything(repo)
        assert [(r.function, r.invocations, r.bytes_in) for r in rows] == [
            ("a", 24, 240),
            ("b", 24, 240),
        ]
        assert rows[1].peak_rss_mb == 23.0
        assert rows[0].gb_seconds == 6.0

    run(backend, body)


# ---------------------------------------------------------------- reading usage
def test_usage_by_function_sums_the_hours_of_a_range(backend: Backend) -> None:
    async def body(repo: MeteringRepository) -> None:
        await repo.add_usage(
            [
                delta("f", T0 - H),  # before the range
                delta("f", T0, peak_rss_mb=10.0),
                delta("f", T0 + H, errors=1, peak_rss_mb=30.0),
                delta("f", T0 + 2 * H, peak_rss_mb=20.0),
                delta("f", T0 + 3 * H),  # at `until`: outside
                delta("g", T0 + H),
            ]
        )
        rows = await repo.usage_by_function(T0, T0 + 3 * H)
        assert rows == [
            row(
                "f",
                None,
                invocations=3,
                errors=1,
                gb_seconds=0.75,
                cpu_seconds=0.375,
                wall_seconds=1.5,
                bytes_in=30,
                bytes_out=60,
                peak_rss_mb=30.0,
            ),
            row("g", None),
        ]
        assert_typed(rows)
        # `since` counts, `until` does not: one second either way moves an hour in or out.
        assert [r.invocations for r in await repo.usage_by_function(T0 + 1, T0 + 3 * H)] == [
            2,
            1,
        ]
        assert [r.invocations for r in await repo.usage_by_function(T0, T0 + 3 * H + 1)] == [
            4,
            1,
        ]
        assert await repo.usage_by_function(T0 + 4 * H, T0 + 9 * H) == []
        assert await repo.usage_by_function(T0 + H, T0 + H) == []

    run(backend, body)


def test_usage_is_ordered_by_namespace_then_function_in_code_points(backend: Backend) -> None:
    names = ["b", "B", "a", "_z", "a-1", "Z", "é"]

    async def body(repo: MeteringRepository) -> None:
        await repo.add_usage([delta(n, namespace=ns) for ns in ("team", "Team", NS) for n in names])
        rows = await repo.usage_by_function(T0, T0 + H)
        want = [(ns, n) for ns in sorted(("team", "Team", NS)) for n in sorted(names)]
        assert [(r.namespace, r.function) for r in rows] == want
        hourly = await repo.usage_by_hour(T0, T0 + H)
        assert [(r.namespace, r.function) for r in hourly] == want

    run(backend, body)


def test_usage_by_hour_is_ordered_by_hour_then_namespace_then_function(
    backend: Backend,
) -> None:
    async def body(repo: MeteringRepository) -> None:
        await repo.add_usage(
            [
                delta("b", T0 + H),
                delta("a", T0 + H, namespace="team"),
                delta("z", T0),
                delta("a", T0 + H),
                delta("a", T0 + 5 * H, invocations=3),
                delta("a", T0 - H),
            ]
        )
        rows = await repo.usage_by_hour(T0, T0 + 6 * H)
        assert [(r.hour, r.namespace, r.function) for r in rows] == [
            (T0, NS, "z"),
            (T0 + H, NS, "a"),
            (T0 + H, NS, "b"),
            (T0 + H, "team", "a"),
            (T0 + 5 * H, NS, "a"),
        ]
        assert rows[-1] == row("a", T0 + 5 * H, invocations=3)
        assert_typed(rows)

    run(backend, body)


def test_reads_of_one_namespace_leave_the_others_out(backend: Backend) -> None:
    async def body(repo: MeteringRepository) -> None:
        await repo.add_usage(
            [delta("f"), delta("f", namespace="team", invocations=5), delta("g", T0 + H)]
        )
        team = await repo.usage_by_function(T0, T0 + 2 * H, "team")
        assert team == [row("f", None, namespace="team", invocations=5)]
        assert [(r.function, r.hour) for r in await repo.usage_by_hour(T0, T0 + 2 * H, NS)] == [
            ("f", T0),
            ("g", T0 + H),
        ]
        assert await repo.usage_by_hour(T0, T0 + 2 * H, "nobody") == []
        assert await repo.usage_by_function(T0, T0 + 2 * H, "nobody") == []
        assert len(await repo.usage_by_function(T0, T0 + 2 * H)) == 3

    run(backend, body)


def test_month_to_date_sums_each_namespace_from_the_months_start(backend: Backend) -> None:
    async def body(repo: MeteringRepository) -> None:
        assert await repo.month_to_date(T0) == {}
        await repo.add_usage(
            [
                delta("f", T0 - H, invocations=100, gb_seconds=64.0),  # last month
                delta("f", T0, invocations=2, gb_seconds=0.5),
                delta("g", T0 + 7 * H, invocations=3, gb_seconds=1.25),
                delta("f", T0 + 999 * H, invocations=4, gb_seconds=2.0),  # no upper bound
                delta("f", T0, namespace="team", invocations=1, gb_seconds=0.0),
                delta("f", T0 - H, namespace="old", invocations=9),
            ]
        )
        used = await repo.month_to_date(T0)
        assert set(used) == {NS, "team"}  # "old" has nothing this month: absent
        assert (used[NS].invocations, used[NS].gb_seconds) == (9, 3.75)
        assert (used["team"].invocations, used["team"].gb_seconds) == (1, 0.0)
        assert type(used[NS].invocations) is int
        assert type(used["team"].gb_seconds) is float
        assert (await repo.month_to_date(T0 - H))["old"].invocations == 9

    run(backend, body)


# ---------------------------------------------------------------- quotas
def test_quotas_are_set_replaced_and_removed(backend: Backend) -> None:
    async def body(repo: MeteringRepository) -> None:
        assert await repo.all_quotas() == {}
        await repo.set_quota(NS, Quota(gb_seconds=100.5, invocations=1000), now=1.0)
        await repo.set_quota("team", Quota(invocations=0), now=2.0)
        await repo.set_quota("lab", Quota(gb_seconds=2.0), now=3.0)
        quotas = await repo.all_quotas()
        assert quotas == {
            NS: Quota(100.5, 1000),
            "team": Quota(None, 0),
            "lab": Quota(2.0, None),
        }
        assert type(quotas[NS].invocations) is int
        assert type(quotas["lab"].gb_seconds) is float
        quotas.clear()  # the caller's own dict
        await repo.set_quota(NS, Quota(gb_seconds=7.0), now=4.0)  # replaced whole
        await repo.set_quota("team", Quota(), now=5.0)  # empty: removed
        await repo.set_quota("nobody", Quota(), now=6.0)  # removing nothing is fine
        assert await repo.all_quotas() == {NS: Quota(7.0, None), "lab": Quota(2.0, None)}

    run(backend, body)


def test_a_quota_out_of_range_is_a_value_error_and_changes_nothing(backend: Backend) -> None:
    async def body(repo: MeteringRepository) -> None:
        await repo.set_quota(NS, Quota(invocations=5), now=1.0)
        with pytest.raises(ValueError, match="signed 64-bit"):
            await repo.set_quota(NS, Quota(invocations=INT64_MAX + 1), now=2.0)
        await repo.set_quota("team", Quota(invocations=INT64_MAX), now=3.0)
        assert await repo.all_quotas() == {NS: Quota(None, 5), "team": Quota(None, INT64_MAX)}

    run(backend, body)


# ---------------------------------------------------------------- sharing
def test_a_second_opening_sees_the_first_ones_writes(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as first:
            await first.add_usage([delta("f"), delta("g", T0 + H)])
            await first.set_quota(NS, Quota(invocations=10), now=1.0)
        async with backend.open() as second:
            await second.add_usage([delta("f")])
            assert [(r.function, r.invocations) for r in await everything(second)] == [
                ("f", 2),
                ("g", 1),
            ]
            assert await second.all_quotas() == {NS: Quota(None, 10)}
            assert (await second.month_to_date(T0))[NS].invocations == 3

    asyncio.run(main())


# ---------------------------------------------------------------- SQLite only
OLD_SCHEMA = """
CREATE TABLE usage_hourly (
    namespace TEXT NOT NULL, function TEXT NOT NULL, hour INTEGER NOT NULL,
    invocations INTEGER NOT NULL, errors INTEGER NOT NULL, gb_seconds REAL NOT NULL,
    cpu_seconds REAL NOT NULL, wall_seconds REAL NOT NULL, bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL, peak_rss_mb REAL NOT NULL,
    PRIMARY KEY (namespace, function, hour));
CREATE INDEX usage_hourly_by_hour ON usage_hourly (hour);
CREATE TABLE quotas (
    namespace TEXT PRIMARY KEY, gb_seconds REAL, invocations INTEGER, updated_at REAL NOT NULL);
"""


def test_sqlite_keeps_using_a_data_dir_from_before_the_repository(tmp_path: Path) -> None:
    """The tables as metering created them before there was a seam, rows and all."""
    path = tmp_path / "cumulo.db"
    store = SQLiteStore(path)
    store.open()
    store.close()
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO usage_hourly VALUES ('default', 'f', ?, 5, 1, 1.5, 0.5, 2.0, 7, 8, 40.0)",
            (T0,),
        )
        db.execute("INSERT INTO quotas VALUES ('default', NULL, 50, 1.0)")
    db.close()

    async def main() -> None:
        store = SQLiteStore(path)
        store.open()
        try:
            repo = SQLiteMeteringRepository(store)
            assert await repo.all_quotas() == {NS: Quota(None, 50)}
            await repo.add_usage([delta("f", peak_rss_mb=41.0)])
            assert await everything(repo) == [
                row(
                    "f",
                    invocations=6,
                    errors=1,
                    gb_seconds=1.75,
                    cpu_seconds=0.625,
                    wall_seconds=2.5,
                    bytes_in=17,
                    bytes_out=28,
                    peak_rss_mb=41.0,
                ),
            ]
        finally:
            store.close()

    asyncio.run(main())


def test_sqlite_creates_its_tables_in_the_platform_database(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(tmp_path / "cumulo.db")
        store.open()
        try:
            await SQLiteMeteringRepository(store).add_usage([delta()])
        finally:
            store.close()

    asyncio.run(main())
    with sqlite3.connect(tmp_path / "cumulo.db") as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        assert (
            db.execute("SELECT namespace, function, hour, invocations FROM usage_hourly").fetchall()
        ) == [(NS, "hello", T0, 1)]
    db.close()
    assert {"usage_hourly", "usage_hourly_by_hour", "quotas", "functions"} <= names


# ---------------------------------------------------------------- PostgreSQL only
def _pg(dsn: str, **kwargs: Any) -> PostgresStore:
    return PostgresStore(dsn, max_size=4, **kwargs)


def test_postgres_flushes_from_two_pools_into_the_same_hour_rows_add_up(pg_dsn: str) -> None:
    """Two gateways flushing at once, into the same rows, in opposite orders."""
    functions = [f"f{i}" for i in range(6)]

    def flush(i: int) -> list[UsageDelta]:
        names = functions if i % 2 else functions[::-1]
        return [delta(n, invocations=1, gb_seconds=0.5, peak_rss_mb=float(i)) for n in names]

    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            began = time.monotonic()
            await asyncio.gather(
                *((a if i % 2 else b).metering.add_usage(flush(i)) for i in range(60))
            )
            assert time.monotonic() - began < 30
            rows = await b.metering.usage_by_hour(T0, T0 + H)
            assert [r.function for r in rows] == functions
            for r in rows:
                assert (r.invocations, r.gb_seconds, r.bytes_in) == (60, 30.0, 600)
                assert r.peak_rss_mb == 59.0
            assert (await a.metering.month_to_date(T0))[NS].invocations == 360

    asyncio.run(main())


def test_postgres_a_reader_never_sees_half_a_flush_from_another_pool(pg_dsn: str) -> None:
    """Each flush adds one invocation to two rows: every read sees both or neither."""

    async def main() -> None:
        async with _pg(pg_dsn) as writer, _pg(pg_dsn) as reader:
            done = asyncio.Event()

            async def write() -> None:
                try:
                    for _ in range(80):
                        await writer.metering.add_usage([delta("a"), delta("b", T0 + H)])
                finally:
                    done.set()

            seen: set[int] = set()

            async def read() -> None:
                while not done.is_set():
                    rows = await reader.metering.usage_by_hour(T0, T0 + 2 * H)
                    counts = [r.invocations for r in rows]
                    assert len(counts) in (0, 2), counts
                    assert len(set(counts)) <= 1, counts
                    seen.add(counts[0] if counts else 0)

            await asyncio.gather(write(), read())
            assert [r.invocations for r in await reader.metering.usage_by_hour(0, 2**62)] == [
                80,
                80,
            ]
            assert len(seen) > 1  # the reader did run while the writer wrote

    asyncio.run(main())


def test_postgres_migration_2_makes_the_metering_tables(pg_dsn: str) -> None:
    async def main() -> None:
        store = _pg(pg_dsn)
        await store.open(migrate=False)
        try:
            assert 2 in await store.migrate()
            async with store.connection() as conn:
                cur = await conn.execute(
                    "SELECT to_regclass('usage_hourly') IS NOT NULL, "
                    "to_regclass('metering_quotas') IS NOT NULL, "
                    "(SELECT description FROM schema_migrations WHERE version = 2)"
                )
                assert await cur.fetchone() == (
                    True,
                    True,
                    "metering: hourly usage per function, monthly quotas",
                )
            await store.metering.add_usage([delta()])
            assert await store.migrate() == []
            assert await everything(store.metering) == [row()]
        finally:
            await store.close()

    asyncio.run(main())


def test_postgres_down_is_store_unavailable_and_a_retried_flush_counts_once(
    pg_cluster: PgCluster, pg_dsn: str
) -> None:
    async def main() -> None:
        async with _pg(pg_dsn, timeout=1.0) as store:
            repo = store.metering
            await repo.add_usage([delta()])
            pg_cluster.stop_server()
            try:
                with pytest.raises(StoreUnavailable) as raised:
                    await repo.add_usage([delta(), delta("g")])
                assert isinstance(raised.value.__cause__, psycopg.OperationalError)
            finally:
                pg_cluster.start_server()
            deadline = time.monotonic() + 15
            while True:  # the pool reconnects in the background, with backoff
                try:
                    await repo.add_usage([delta(), delta("g")])  # the flusher's retry
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the store never recovered"
                    await asyncio.sleep(0.1)
            assert [(r.function, r.invocations) for r in await everything(repo)] == [
                ("g", 1),
                ("hello", 2),
            ]

    asyncio.run(main())
