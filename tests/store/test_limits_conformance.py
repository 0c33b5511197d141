"""One behaviour for every `LimitRepository`: in memory, SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`); every
opening reaches the same data, as a second gateway would. A fake clock drives windows and
expiries on all three (PostgreSQL's database clock has its own cases at the end).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from cumulo.errors import StoreUnavailable
from cumulo.store.limits import (
    MAX_NAME,
    WINDOW_S,
    LimitExchange,
    LimitRepository,
    LimitTotals,
    window_of,
)
from cumulo.store.memory_limits import MemoryLimitRepository
from cumulo.store.postgres import PostgresStore
from cumulo.store.postgres_limits import PostgresLimitRepository
from cumulo.store.sqlite_limits import SQLiteLimitRepository
from tests.store.backends import BACKENDS, Backend, make_backend, run

T0 = 1_700_000_000.0  # a window's start (a multiple of WINDOW_S)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> Backend[LimitRepository]:
    @asynccontextmanager
    async def sqlite(tmp: Path) -> AsyncIterator[LimitRepository]:
        async with SQLiteLimitRepository(tmp / "limits.db", clock) as repo:
            yield repo

    return make_backend(
        request,
        tmp_path,
        memory=lambda: MemoryLimitRepository(clock),
        sqlite=sqlite,
        postgres=lambda store: PostgresLimitRepository(store, clock),
    )


W0 = window_of(T0)


def report(gateway: str, used: dict[str, int] | None = None, **inflight: int) -> LimitExchange:
    return LimitExchange(gateway, used or {}, inflight)


def test_usage_is_summed_per_key_and_window_without_the_callers_own(
    backend: Backend[LimitRepository], clock: Clock
) -> None:
    async def body(repo: LimitRepository) -> None:
        assert await repo.exchange(report("a", {"k1": 3, "k2": 1})) == LimitTotals({}, {})
        await repo.exchange(report("a", {"k1": 2}))
        await repo.exchange(report("b", {"k1": 4, "k3": 0}))
        seen_by_c = await repo.exchange(report("c"))
        assert seen_by_c.used == {("k1", W0): 9, ("k2", W0): 1}  # zero counts are no rows
        seen_by_a = await repo.exchange(report("a"))
        assert seen_by_a.used == {("k1", W0): 4}
        clock.now += WINDOW_S  # the next window: both are kept
        await repo.exchange(report("b", {"k1": 1}))
        assert (await repo.exchange(report("a"))).used == {("k1", W0): 4, ("k1", W0 + 1): 1}

    run(backend, body)


def test_windows_older_than_the_previous_one_are_deleted(
    backend: Backend[LimitRepository], clock: Clock
) -> None:
    async def body(repo: LimitRepository) -> None:
        await repo.exchange(report("a", {"k": 5}))
        clock.now += 2 * WINDOW_S
        await repo.exchange(report("a", {"k": 1}))
        assert (await repo.exchange(report("b"))).used == {("k", W0 + 2): 1}
        clock.now += 10 * WINDOW_S  # a gateway long gone: nothing of it is left
        assert (await repo.exchange(report("b"))).used == {}

    run(backend, body)


def test_inflight_rows_are_replaced_by_each_exchange_and_summed(
    backend: Backend[LimitRepository], clock: Clock
) -> None:
    async def body(repo: LimitRepository) -> None:
        await repo.exchange(report("a", team=3, other=1))
        await repo.exchange(report("b", team=2, idle=0))
        assert (await repo.exchange(report("c"))).inflight == {"team": 5, "other": 1}
        assert (await repo.exchange(report("a", team=1))).inflight == {"team": 2}
        assert (await repo.exchange(report("c"))).inflight == {"team": 3}  # a's other: gone
        await repo.exchange(report("b"))  # nothing in flight: no rows
        assert (await repo.exchange(report("c"))).inflight == {"team": 1}

    run(backend, body)


def test_inflight_rows_expire_unless_refreshed(
    backend: Backend[LimitRepository], clock: Clock
) -> None:
    async def body(repo: LimitRepository) -> None:
        await repo.exchange(LimitExchange("dead", {}, {"team": 2}, ttl_s=5.0))
        await repo.exchange(LimitExchange("live", {}, {"team": 1}, ttl_s=5.0))
        clock.now += 4.0
        await repo.exchange(LimitExchange("live", {}, {"team": 1}, ttl_s=5.0))  # a heartbeat
        assert (await repo.exchange(report("c"))).inflight == {"team": 3}
        clock.now += 2.0  # dead's rows are 6 s old, live's 2 s
        assert (await repo.exchange(report("c"))).inflight == {"team": 1}
        await repo.exchange(LimitExchange("x", {}, {"team": 7}, ttl_s=0.0))
        assert (await repo.exchange(report("c"))).inflight == {"team": 1}  # ttl 0: expired

    run(backend, body)


def test_leave_withdraws_inflight_rows_and_keeps_usage(
    backend: Backend[LimitRepository], clock: Clock
) -> None:
    async def body(repo: LimitRepository) -> None:
        await repo.exchange(report("a", {"k": 2}, team=4))
        await repo.leave("a")
        await repo.leave("nobody")  # not an error
        assert await repo.exchange(report("b")) == LimitTotals({("k", W0): 2}, {})

    run(backend, body)


def test_a_second_opening_sees_the_first_ones_rows(backend: Backend[LimitRepository]) -> None:
    async def main() -> None:
        async with backend.open() as one, backend.open() as two:
            await one.exchange(report("one", {"fn:é ✓": 1}, **{"ns-ü": 2}))
            totals = await two.exchange(report("two"))
            assert totals == LimitTotals({("fn:é ✓", W0): 1}, {"ns-ü": 2})

    asyncio.run(main())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (LimitExchange(""), "gateway id"),
        (LimitExchange("g" * (MAX_NAME + 1)), "gateway id"),
        (LimitExchange("g", {"": 1}), "limit key"),
        (LimitExchange("g", {"k" * (MAX_NAME + 1): 1}), "limit key"),
        (LimitExchange("g", {"k": -1}), "integer >= 0"),
        (LimitExchange("g", {"k": 2**63}), "integer >= 0"),
        (LimitExchange("g", {"k": 1.5}), "integer >= 0"),  # type: ignore[dict-item]
        (LimitExchange("g", {}, {"ns": -2}), "integer >= 0"),
        (LimitExchange("g", {}, {"": 1}), "namespace"),
        (LimitExchange("g", ttl_s=float("nan")), "ttl_s"),
        (LimitExchange("g", ttl_s=-1.0), "ttl_s"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(
    backend: Backend[LimitRepository], bad: LimitExchange, message: str
) -> None:
    async def body(repo: LimitRepository) -> None:
        with pytest.raises(ValueError, match=message):
            await repo.exchange(
                LimitExchange(bad.gateway, {"ok": 1, **bad.used}, bad.inflight, bad.ttl_s)
            )
        assert await repo.exchange(report("other")) == LimitTotals({}, {})

    run(backend, body)


def test_sqlite_in_a_missing_directory_is_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        async with SQLiteLimitRepository(tmp_path / "missing" / "limits.db") as repo:
            with pytest.raises(StoreUnavailable, match="limits database"):
                await repo.exchange(report("a", {"k": 1}))

    asyncio.run(main())


# ------------------------------------------------------------ PostgreSQL only


def test_postgres_two_pools_racing_add_up(pg_dsn: str) -> None:
    """Four gateways over two pools (two machines), each exchanging 25 times at once."""

    async def main() -> None:
        async with PostgresStore(pg_dsn, max_size=4) as p1, PostgresStore(pg_dsn, max_size=4) as p2:
            repos = [p1.limits, p2.limits, p1.limits, p2.limits]

            async def gateway(i: int) -> None:
                for _ in range(25):
                    await repos[i].exchange(report(f"g{i}", {"k": 1, f"own{i}": 2}, team=i + 1))

            await asyncio.gather(*(gateway(i) for i in range(4)))
            totals = await p1.limits.exchange(report("reader"))
            used: dict[str, int] = {}
            for (key, _), count in totals.used.items():  # a window may have turned meanwhile
                used[key] = used.get(key, 0) + count
            assert used == {"k": 100, "own0": 50, "own1": 50, "own2": 50, "own3": 50}
            assert totals.inflight == {"team": 1 + 2 + 3 + 4}

    asyncio.run(main())


def test_postgres_uses_the_database_clock(pg_dsn: str) -> None:
    async def main() -> None:
        async with PostgresStore(pg_dsn) as store:
            async with store.connection() as conn:
                cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
                row = await cur.fetchone()
            assert row is not None
            repo = store.limits
            await repo.exchange(LimitExchange("a", {"k": 1}, {"team": 2}, ttl_s=60.0))
            await repo.exchange(LimitExchange("b", {}, {"team": 5}, ttl_s=0.0))
            totals = await repo.exchange(report("c"))
            assert totals.inflight == {"team": 2}
            (key, window), count = next(iter(totals.used.items()))
            assert (key, count) == ("k", 1)
            assert abs(window - window_of(float(row[0]))) <= 1

    asyncio.run(main())
