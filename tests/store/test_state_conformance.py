"""One behaviour for every `StateRepository`: in memory, SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`). The real
backends seal at rest as the platform runs them (an `Encryptor` over one master key); every
`backend.open()` reaches the same database with an Encryptor of its own, as a second
gateway would. PostgreSQL runs on a real cluster (tests/pg.py), never a mock.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cumulo.security.crypto import CryptoError, Encryptor, MasterKey
from cumulo.store.memory_state import MemoryStateRepository
from cumulo.store.postgres import PostgresStore
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.sqlite_state import SQLiteStateRepository
from cumulo.store.state import StateRepository

NS, FN = "default", "counter"


@dataclass
class Backend:
    name: str
    open: Callable[[], AbstractAsyncContextManager[StateRepository]]


@asynccontextmanager
async def sqlite_state(path: Path, master: MasterKey) -> AsyncIterator[SQLiteStateRepository]:
    encryptor = Encryptor(master)
    store = SQLiteStore(path, encryptor=encryptor)
    store.open()
    try:
        await store.call(encryptor.open, store)  # as Platform.start does
        yield SQLiteStateRepository(store)
    finally:
        store.close()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    master = MasterKey(os.urandom(32), "memory")
    if request.param == "memory":
        shared = MemoryStateRepository()

        @asynccontextmanager
        async def open_memory() -> AsyncIterator[StateRepository]:
            yield shared

        yield Backend("memory", open_memory)
    elif request.param == "sqlite":

        def open_sqlite() -> AbstractAsyncContextManager[StateRepository]:
            return sqlite_state(tmp_path / "cumulo.db", master)

        yield Backend("sqlite", open_sqlite)
    else:
        dsn = request.getfixturevalue("pg_dsn")

        @asynccontextmanager
        async def open_postgres() -> AsyncIterator[StateRepository]:
            async with PostgresStore(dsn, max_size=4) as store:
                yield store.state(Encryptor(master))

        yield Backend("postgresql", open_postgres)


def run(backend: Backend, body: Callable[[StateRepository], Awaitable[None]]) -> None:
    async def main() -> None:
        async with backend.open() as repo:
            await body(repo)

    asyncio.run(main())


# ---------------------------------------------------------------- get and put
def test_an_unset_key_reads_none_and_writes_count_versions_up(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        assert await repo.get(NS, FN, "doc") is None
        assert await repo.put(NS, FN, "doc", b'{"a": 1}', None, 1.0) == (True, 1)
        assert await repo.put(NS, FN, "doc", b'{"a": 2}', None, 2.0) == (True, 2)
        record = await repo.get(NS, FN, "doc")
        assert record is not None
        assert (record.value, record.version) == (b'{"a": 2}', 2)

    run(backend, body)


def test_compare_and_set_writes_only_at_the_expected_version(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        # 0 means "not set": create-if-absent.
        assert await repo.put(NS, FN, "k", b"1", 0, 1.0) == (True, 1)
        assert await repo.put(NS, FN, "k", b"2", 0, 1.0) == (False, 1)
        assert await repo.put(NS, FN, "k", b"3", 1, 1.0) == (True, 2)
        assert await repo.put(NS, FN, "k", b"4", 1, 1.0) == (False, 2)  # stale
        assert await repo.put(NS, FN, "k", b"5", 7, 1.0) == (False, 2)  # ahead
        record = await repo.get(NS, FN, "k")
        assert record is not None
        assert (record.value, record.version) == (b"3", 2)
        # A mismatch on an unset key reports 0 and creates nothing.
        assert await repo.put(NS, FN, "absent", b"1", 3, 1.0) == (False, 0)
        assert await repo.get(NS, FN, "absent") is None

    run(backend, body)


def test_values_are_bytes_as_given(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        value = bytes(range(256)) * 4
        await repo.put(NS, FN, "bin", value, None, 1.0)
        await repo.put(NS, FN, "empty", b"", None, 1.0)
        got, empty = await repo.get(NS, FN, "bin"), await repo.get(NS, FN, "empty")
        assert got is not None
        assert got.value == value
        assert empty is not None
        assert empty.value == b""

    run(backend, body)


# ---------------------------------------------------------------- delete
def test_delete_reports_the_version_it_removed(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        assert await repo.delete(NS, FN, "k", None) == (False, 0)
        assert await repo.delete(NS, FN, "k", 0) == (False, 0)
        assert await repo.delete(NS, FN, "k", 2) == (False, 0)
        await repo.put(NS, FN, "k", b"1", None, 1.0)
        await repo.put(NS, FN, "k", b"2", None, 1.0)
        assert await repo.delete(NS, FN, "k", 1) == (False, 2)  # kept
        assert (await repo.get(NS, FN, "k")) is not None
        assert await repo.delete(NS, FN, "k", 2) == (True, 2)
        assert await repo.get(NS, FN, "k") is None
        await repo.put(NS, FN, "j", b"1", None, 1.0)
        assert await repo.delete(NS, FN, "j", None) == (True, 1)
        assert await repo.delete(NS, FN, "j", None) == (False, 0)

    run(backend, body)


def test_a_key_written_after_its_delete_starts_again_at_version_1(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        for _ in range(3):
            await repo.put(NS, FN, "k", b"1", None, 1.0)
        await repo.delete(NS, FN, "k", None)
        assert await repo.put(NS, FN, "k", b"2", 0, 2.0) == (True, 1)
        assert await repo.list_keys(NS, FN, "", 10) == ["k"]

    run(backend, body)


# ---------------------------------------------------------------- incr
def test_incr_counts_from_zero_and_bumps_the_version(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        assert await repo.incr(NS, FN, "hits", 1, 1.0) == (1, 1)
        assert await repo.incr(NS, FN, "hits", 5, 1.0) == (6, 2)
        assert await repo.incr(NS, FN, "hits", -10, 1.0) == (-4, 3)
        record = await repo.get(NS, FN, "hits")
        assert record is not None
        assert (record.value, record.version) == (b"-4", 3)  # a JSON integer
        await repo.put(NS, FN, "n", b"40", None, 1.0)
        assert await repo.incr(NS, FN, "n", 2, 1.0) == (42, 2)

    run(backend, body)


def test_incr_takes_what_int_takes_and_refuses_the_rest(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        # Today's SQLite behaviour, kept on every backend: int() of the JSON value.
        await repo.put(NS, FN, "f", b"2.9", None, 1.0)
        assert await repo.incr(NS, FN, "f", 1, 1.0) == (3, 2)
        await repo.put(NS, FN, "s", b'"7"', None, 1.0)
        assert await repo.incr(NS, FN, "s", 1, 1.0) == (8, 2)
        for key, value in [("text", b'"abc"'), ("null", b"null"), ("list", b"[1]")]:
            await repo.put(NS, FN, key, value, None, 1.0)
            with pytest.raises((ValueError, TypeError)):
                await repo.incr(NS, FN, key, 1, 1.0)
            record = await repo.get(NS, FN, key)
            assert record is not None
            assert (record.value, record.version) == (value, 1)  # nothing written

    run(backend, body)


def test_concurrent_increments_lose_nothing(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        got = await asyncio.gather(*(repo.incr(NS, FN, "hits", 1, 1.0) for _ in range(25)))
        assert sorted(v for v, _ in got) == list(range(1, 26))
        assert sorted(v for _, v in got) == list(range(1, 26))

    run(backend, body)


# ---------------------------------------------------------------- list
def test_list_filters_by_prefix_in_code_point_order_up_to_limit(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        names = ["user:b", "user:a", "user:é", "user:Z", "User:c", "order:1", "user:a:2"]
        for name in names:
            await repo.put(NS, FN, name, b"1", None, 1.0)
        assert await repo.list_keys(NS, FN, "user:", 100) == [
            "user:Z",
            "user:a",
            "user:a:2",
            "user:b",
            "user:é",
        ]
        assert await repo.list_keys(NS, FN, "user:", 2) == ["user:Z", "user:a"]
        assert await repo.list_keys(NS, FN, "", 100) == sorted(names)
        assert await repo.list_keys(NS, FN, "User", 100) == ["User:c"]  # case-sensitive
        assert await repo.list_keys(NS, FN, "nothing", 100) == []

    run(backend, body)


def test_list_takes_percent_and_underscore_literally(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        for name in ["a_b", "axb", "a%c", "abc", "a\\d"]:
            await repo.put(NS, FN, name, b"1", None, 1.0)
        assert await repo.list_keys(NS, FN, "a_", 10) == ["a_b"]
        assert await repo.list_keys(NS, FN, "a%", 10) == ["a%c"]
        assert await repo.list_keys(NS, FN, "a\\", 10) == ["a\\d"]

    run(backend, body)


def test_functions_and_namespaces_do_not_share_keys(backend: Backend) -> None:
    async def body(repo: StateRepository) -> None:
        await repo.put(NS, FN, "k", b'"mine"', None, 1.0)
        await repo.put(NS, "other-fn", "k", b'"theirs"', None, 1.0)
        await repo.put("other-ns", FN, "k", b'"far"', None, 1.0)
        await repo.put("other-ns", FN, "k", b'"far2"', None, 1.0)
        mine = await repo.get(NS, FN, "k")
        assert mine is not None
        assert (mine.value, mine.version) == (b'"mine"', 1)
        assert await repo.list_keys(NS, FN, "", 10) == ["k"]
        assert await repo.delete(NS, "other-fn", "k", None) == (True, 1)
        assert await repo.get(NS, FN, "k") is not None
        far = await repo.get("other-ns", FN, "k")
        assert far is not None
        assert far.version == 2

    run(backend, body)


def test_a_second_opening_reads_the_first_ones_writes(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as first:
            await first.put(NS, FN, "doc", b'"kept"', None, 1.0)
            await first.incr(NS, FN, "n", 3, 1.0)
        async with backend.open() as second:
            doc = await second.get(NS, FN, "doc")
            assert doc is not None
            assert doc.value == b'"kept"'
            assert await second.incr(NS, FN, "n", 1, 2.0) == (4, 2)
            assert await second.list_keys(NS, FN, "", 10) == ["doc", "n"]

    asyncio.run(main())


# ---------------------------------------------------------------- PostgreSQL only
def _pg(dsn: str) -> PostgresStore:
    return PostgresStore(dsn, max_size=4)


def test_postgres_compare_and_set_from_two_pools_has_one_winner_per_version(pg_dsn: str) -> None:
    master = MasterKey(os.urandom(32), "memory")

    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            repos = [a.state(Encryptor(master)), b.state(Encryptor(master))]
            for expected in range(5):
                got = await asyncio.gather(
                    *(
                        repos[i % 2].put(NS, FN, "k", f"{expected}-{i}".encode(), expected, 1.0)
                        for i in range(10)
                    )
                )
                winners = [i for i, (ok, _) in enumerate(got) if ok]
                assert len(winners) == 1, got
                assert all(v == expected + 1 for _, v in got)  # losers see the winner's
                record = await repos[expected % 2].get(NS, FN, "k")
                assert record is not None
                assert record.value == f"{expected}-{winners[0]}".encode()
                assert record.version == expected + 1

    asyncio.run(main())


def test_postgres_increments_from_two_pools_lose_nothing(pg_dsn: str) -> None:
    master = MasterKey(os.urandom(32), "memory")

    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            # A fresh namespace: both pools may race to create its data key, and the key row.
            repos = [a.state(Encryptor(master)), b.state(Encryptor(master))]
            got = await asyncio.gather(
                *(repos[i % 2].incr("fresh", FN, "hits", 1, 1.0) for i in range(40))
            )
            assert sorted(v for v, _ in got) == list(range(1, 41))
            assert sorted(v for _, v in got) == list(range(1, 41))
            async with a.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM data_keys WHERE namespace = 'fresh'")
                assert await cur.fetchone() == (1,)

    asyncio.run(main())


def test_postgres_a_value_written_through_one_pool_decrypts_through_another(
    pg_dsn: str,
) -> None:
    master = MasterKey(os.urandom(32), "memory")

    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            await a.state(Encryptor(master)).put(NS, FN, "doc", b'"hello"', None, 1.0)
            other = b.state(Encryptor(master))
            record = await other.get(NS, FN, "doc")
            assert record is not None
            assert record.value == b'"hello"'
            assert await other.list_keys(NS, FN, "", 10) == ["doc"]
            # Under another master nothing opens, and no second data key appears.
            stranger = b.state(Encryptor(MasterKey(os.urandom(32), "memory")))
            with pytest.raises(CryptoError):
                await stranger.get(NS, FN, "doc")
            async with b.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM data_keys")
                assert await cur.fetchone() == (1,)

    asyncio.run(main())


def test_postgres_rows_hold_no_plaintext(pg_dsn: str) -> None:
    master = MasterKey(os.urandom(32), "memory")
    canary_key, canary_value = "canary-key-0b1f", b'"canary-value-77ae"'

    async def main() -> None:
        async with _pg(pg_dsn) as store:
            repo = store.state(Encryptor(master))
            await repo.put(NS, FN, canary_key, canary_value, None, 1.0)
            await repo.incr(NS, FN, "canary-counter-5c2d", 123456789, 1.0)
            async with store.connection() as conn:
                cur = await conn.execute("SELECT * FROM state")
                rows = await cur.fetchall()
                cur = await conn.execute("SELECT * FROM data_keys")
                keys = await cur.fetchall()
        assert len(rows) == 2
        dump = repr(rows).encode() + b"".join(
            bytes(c) for r in rows for c in r if isinstance(c, (bytes, memoryview))
        )
        for needle in [canary_key.encode(), canary_value, b"canary", b"123456789"]:
            assert needle not in dump
        assert all(len(r[2]) == 64 for r in rows)  # the key column is a keyed hash
        assert b"canary" not in repr(keys).encode()

    asyncio.run(main())


def test_postgres_loads_a_data_key_version_created_after_it_started(pg_dsn: str) -> None:
    master = MasterKey(os.urandom(32), "memory")

    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            old = a.state(Encryptor(master))
            await old.put(NS, FN, "before", b"1", None, 1.0)
            # Another gateway's rotation: version 2 appears; a new gateway writes under it.
            wrapped = master.wrap(os.urandom(32), NS, 2)
            async with b.connection() as conn:
                await conn.execute(
                    "INSERT INTO data_keys VALUES (%s, 2, %s, %s, 0)", (NS, master.key_id, wrapped)
                )
            await b.state(Encryptor(master)).put(NS, FN, "after", b"2", None, 1.0)
            record = await old.get(NS, FN, "after")
            assert record is not None
            assert record.value == b"2"
            assert await old.list_keys(NS, FN, "", 10) == ["after", "before"]
            assert await old.incr(NS, FN, "after", 1, 1.0) == (3, 2)

    asyncio.run(main())


def test_state_ids_and_sealed_rows_match_sqlite_under_the_same_keys(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Same master and same data keys (copied from SQLite, as a migration would): the
    keyed hashes agree, and SQLite's sealed rows open on PostgreSQL unchanged."""
    master = MasterKey(os.urandom(32), "memory")

    async def main() -> None:
        async with sqlite_state(tmp_path / "cumulo.db", master) as lite:
            await lite.put(NS, FN, "doc", b'"from sqlite"', None, 1.0)
            await lite.incr(NS, FN, "n", 5, 1.0)
            db = lite.store.db
            data_keys = db.execute("SELECT * FROM data_keys").fetchall()
            rows = db.execute(
                "SELECT namespace, function, key, key_sealed, value, version, updated_at FROM state"
            ).fetchall()
            sid = lite.store.state_id(NS, FN, "doc")
        async with _pg(pg_dsn) as store:
            async with store.connection() as conn:
                for r in data_keys:
                    await conn.execute("INSERT INTO data_keys VALUES (%s,%s,%s,%s,%s)", r)
            repo = store.state(Encryptor(master))
            await repo.put(NS, FN, "fresh", b"1", None, 1.0)
            async with store.connection() as conn:
                cur = await conn.execute("SELECT key FROM state")
                pg_ids = {r[0] for r in await cur.fetchall()}
                assert pg_ids == {lite_id(master, data_keys, "fresh")}
                for r in rows:
                    await conn.execute("INSERT INTO state VALUES (%s,%s,%s,%s,%s,%s,%s)", r)
            assert sid in {r[2] for r in rows}
            doc = await repo.get(NS, FN, "doc")
            assert doc is not None
            assert (doc.value, doc.version) == (b'"from sqlite"', 1)
            assert await repo.incr(NS, FN, "n", 1, 2.0) == (6, 2)
            assert await repo.list_keys(NS, FN, "", 10) == ["doc", "fresh", "n"]

    def lite_id(master: MasterKey, data_keys: list[tuple[object, ...]], name: str) -> str:
        # What SQLite would store `name` under, given those data keys.
        path = tmp_path / "other.db"
        encryptor = Encryptor(master)
        other = SQLiteStore(path, encryptor=encryptor)
        other.open()
        try:
            for r in data_keys:
                other.db.execute("INSERT INTO data_keys VALUES (?,?,?,?,?)", r)
            return other.state_id(NS, FN, name)
        finally:
            other.close()

    asyncio.run(main())
