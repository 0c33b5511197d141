"""One behaviour for every `ChangeFeed`: in memory, SQLite and PostgreSQL.

"Two gateways" are two feeds opened on one database (the memory fake: one instance); each
test can fail by a change not arriving, arriving twice, out of order, or at the wrong feed.
The PostgreSQL cases run on a real cluster (tests/pg.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from cumulo.store import sqlite_changes
from cumulo.store.changes import RESYNC, Change, ChangeFeed, MemoryChangeFeed, Subscription
from cumulo.store.postgres import PostgresStore
from cumulo.store.sqlite_changes import SQLiteChangeFeed
from tests.pg import PgCluster

# Far above the contract's "about a second": a slow CI box must not fail a correct feed.
ARRIVAL_S = 10.0
QUIET_S = 0.5  # how long "nothing more arrives" is watched


@dataclass
class Backend:
    name: str
    open: Callable[[], AbstractAsyncContextManager[ChangeFeed]]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        shared = MemoryChangeFeed()

        @asynccontextmanager
        async def open_memory() -> AsyncIterator[ChangeFeed]:
            yield shared

        yield Backend("memory", open_memory)
    elif request.param == "sqlite":

        @asynccontextmanager
        async def open_sqlite() -> AsyncIterator[ChangeFeed]:
            feed = SQLiteChangeFeed(tmp_path / "cumulo.db", poll_s=0.02)
            try:
                yield feed
            finally:
                feed.close()

        yield Backend("sqlite", open_sqlite)
    else:
        dsn = request.getfixturevalue("pg_dsn")

        @asynccontextmanager
        async def open_postgres() -> AsyncIterator[ChangeFeed]:
            async with PostgresStore(dsn, max_size=2) as store:
                yield store.changes(check_s=0.2)

        yield Backend("postgresql", open_postgres)


async def received(subscription: Subscription, count: int) -> list[Change]:
    return [await asyncio.wait_for(subscription.next(), ARRIVAL_S) for _ in range(count)]


async def nothing_more(subscription: Subscription) -> None:
    try:
        extra = await asyncio.wait_for(subscription.next(), QUIET_S)
    except TimeoutError:
        return
    pytest.fail(f"unexpected {extra}")


def two_gateways(
    backend: Backend, body: Callable[[ChangeFeed, ChangeFeed], Awaitable[None]]
) -> None:
    async def main() -> None:
        async with backend.open() as one, backend.open() as two:
            await body(one, two)

    asyncio.run(main())


def test_a_change_reaches_every_gateway_once_and_in_order(backend: Backend) -> None:
    changes = [
        Change("function", "default", "hello"),
        Change("keys"),
        Change("secrets", "team"),
        Change("function", "default", "hello"),  # the same change twice is two signals
    ]

    async def body(one: ChangeFeed, two: ChangeFeed) -> None:
        async with await one.subscribe() as mine, await two.subscribe() as theirs:
            for change in changes:
                await one.publish(change)
            assert await received(theirs, 4) == changes
            assert await received(mine, 4) == changes  # the publisher's own gateway too
            await nothing_more(theirs)

    two_gateways(backend, body)


def test_a_subscription_sees_only_what_is_published_after_it_opens(backend: Backend) -> None:
    async def body(one: ChangeFeed, two: ChangeFeed) -> None:
        await one.publish(Change("quota", "early"))
        async with await two.subscribe() as late:
            await one.publish(Change("quota", "late"))
            assert await received(late, 1) == [Change("quota", "late")]
            await nothing_more(late)

    two_gateways(backend, body)


def test_publishers_on_both_gateways_reach_both(backend: Backend) -> None:
    async def body(one: ChangeFeed, two: ChangeFeed) -> None:
        async with await one.subscribe() as first, await two.subscribe() as second:

            async def publish_five(feed: ChangeFeed, namespace: str) -> None:
                for i in range(5):  # one after another: their order is defined
                    await feed.publish(Change("function", namespace, str(i)))

            await asyncio.gather(publish_five(one, "a"), publish_five(two, "b"))
            for subscription in (first, second):
                got = await received(subscription, 10)
                assert sorted((c.namespace, c.name) for c in got) == sorted(
                    [("a", str(i)) for i in range(5)] + [("b", str(i)) for i in range(5)]
                )
                # Per publisher, in publish order.
                assert [c.name for c in got if c.namespace == "a"] == [str(i) for i in range(5)]

    two_gateways(backend, body)


def test_a_closed_subscription_receives_nothing_and_others_still_do(backend: Backend) -> None:
    async def body(one: ChangeFeed, two: ChangeFeed) -> None:
        gone = await two.subscribe()
        await gone.aclose()
        await gone.aclose()  # idempotent
        async with await two.subscribe() as kept:
            await one.publish(Change("keys"))
            assert await received(kept, 1) == [Change("keys")]

    two_gateways(backend, body)


def test_changes_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="unknown change topic 'routes'"):
        Change("routes")
    with pytest.raises(ValueError, match="limited to 200 characters"):
        Change("function", "n" * 201)


# ---------------------------------------------------------------- SQLite specifics
def test_sqlite_subscriber_left_behind_by_pruning_resyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_changes, "KEEP_ROWS", 3)

    async def main() -> None:
        feed = SQLiteChangeFeed(tmp_path / "cumulo.db", poll_s=0.02)
        try:
            async with await feed.subscribe() as behind:
                for i in range(10):
                    await feed.publish(Change("function", "default", str(i)))
                got = await received(behind, 4)
                assert got[0] == RESYNC
                assert [c.name for c in got[1:]] == ["7", "8", "9"]  # what is still kept
                await nothing_more(behind)
        finally:
            feed.close()

    asyncio.run(main())


# ---------------------------------------------------------------- PostgreSQL specifics
def test_postgres_listener_cut_off_resyncs_then_hears_again(
    pg_cluster: PgCluster, pg_dsn: str
) -> None:
    async def main() -> None:
        async with PostgresStore(pg_dsn) as store:
            feed = store.changes(check_s=0.2)
            async with await feed.subscribe() as listener:
                # Every session of the database, the listener's among them.
                assert pg_cluster.terminate_connections(pg_dsn) >= 1
                assert await received(listener, 1) == [RESYNC]
                await feed.publish(Change("keys"))
                assert await received(listener, 1) == [Change("keys")]

    asyncio.run(main())


def test_postgres_epoch_moved_without_a_notification_resyncs(pg_dsn: str) -> None:
    async def main() -> None:
        async with PostgresStore(pg_dsn) as store:
            feed = store.changes(check_s=0.1)
            async with await feed.subscribe() as listener:
                # What a lost notification looks like to a listener: the epoch moved.
                async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as c:
                    await c.execute("UPDATE control_epoch SET epoch = epoch + 1")
                assert await received(listener, 1) == [RESYNC]
                await nothing_more(listener)  # once, not on every check

    asyncio.run(main())


def test_postgres_ignores_foreign_payloads_on_the_channel(pg_dsn: str) -> None:
    async def main() -> None:
        async with PostgresStore(pg_dsn) as store:
            feed = store.changes(check_s=5.0)
            async with await feed.subscribe() as listener:
                async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as c:
                    await c.execute("NOTIFY cumulo_changes, 'not json'")
                    later = '{"t": "later-topic", "ns": "", "n": "", "e": 0}'
                    await c.execute(f"NOTIFY cumulo_changes, '{later}'")
                await feed.publish(Change("secrets", "team"))
                assert await received(listener, 1) == [Change("secrets", "team")]

    asyncio.run(main())
