"""One behaviour for every `SecretRepository`: in memory, SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`). The real
backends seal values as the platform runs them (an `Encryptor` over one master key); every
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
from cumulo.store.memory_secrets import MemorySecretRepository
from cumulo.store.postgres import PostgresStore
from cumulo.store.secrets import SecretInfo, SecretRepository
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.sqlite_secrets import SQLiteSecretRepository

NS = "default"


@dataclass
class Backend:
    name: str
    open: Callable[[], AbstractAsyncContextManager[SecretRepository]]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    master = MasterKey(os.urandom(32), "memory")
    if request.param == "memory":
        shared = MemorySecretRepository()

        @asynccontextmanager
        async def open_memory() -> AsyncIterator[SecretRepository]:
            yield shared

        yield Backend("memory", open_memory)
    elif request.param == "sqlite":

        @asynccontextmanager
        async def open_sqlite() -> AsyncIterator[SecretRepository]:
            encryptor = Encryptor(master)
            store = SQLiteStore(tmp_path / "cumulo.db", encryptor=encryptor)
            store.open()
            try:
                await store.call(encryptor.open, store)
                yield SQLiteSecretRepository(store)
            finally:
                store.close()

        yield Backend("sqlite", open_sqlite)
    else:
        dsn = request.getfixturevalue("pg_dsn")

        @asynccontextmanager
        async def open_postgres() -> AsyncIterator[SecretRepository]:
            async with PostgresStore(dsn, max_size=4) as store:
                yield store.secrets(Encryptor(master))

        yield Backend("postgresql", open_postgres)


def run(backend: Backend, body: Callable[[SecretRepository], Awaitable[None]]) -> None:
    async def main() -> None:
        async with backend.open() as repo:
            await body(repo)

    asyncio.run(main())


def test_set_then_values_leaves_unknown_names_out(backend: Backend) -> None:
    async def body(repo: SecretRepository) -> None:
        assert await repo.values(NS, ["TOKEN"]) == {}
        await repo.set(NS, "TOKEN", b"t0ken", 1.0)
        await repo.set(NS, "DSN", b"postgres://x", 2.0)
        assert await repo.values(NS, ["TOKEN", "MISSING"]) == {"TOKEN": b"t0ken"}
        assert await repo.values(NS, iter(["DSN", "TOKEN"])) == {
            "DSN": b"postgres://x",
            "TOKEN": b"t0ken",
        }
        assert await repo.values(NS, []) == {}

    run(backend, body)


def test_set_replaces_the_value_and_its_time(backend: Backend) -> None:
    async def body(repo: SecretRepository) -> None:
        await repo.set(NS, "TOKEN", b"old", 1.0)
        await repo.set(NS, "TOKEN", b"new", 5.0)
        assert await repo.values(NS, ["TOKEN"]) == {"TOKEN": b"new"}
        assert await repo.names(NS) == [SecretInfo("TOKEN", 5.0)]

    run(backend, body)


def test_names_are_listed_in_code_point_order_with_their_times(backend: Backend) -> None:
    async def body(repo: SecretRepository) -> None:
        for i, name in enumerate(["b", "A", "a", "B_2", "Z"]):
            await repo.set(NS, name, b"v", float(i))
        assert await repo.names(NS) == [
            SecretInfo("A", 1.0),
            SecretInfo("B_2", 3.0),
            SecretInfo("Z", 4.0),
            SecretInfo("a", 2.0),
            SecretInfo("b", 0.0),
        ]
        assert await repo.names("empty") == []

    run(backend, body)


def test_delete_removes_once(backend: Backend) -> None:
    async def body(repo: SecretRepository) -> None:
        assert await repo.delete(NS, "TOKEN") is False
        await repo.set(NS, "TOKEN", b"v", 1.0)
        await repo.set(NS, "KEEP", b"k", 1.0)
        assert await repo.delete(NS, "TOKEN") is True
        assert await repo.delete(NS, "TOKEN") is False
        assert await repo.values(NS, ["TOKEN", "KEEP"]) == {"KEEP": b"k"}
        assert [s.name for s in await repo.names(NS)] == ["KEEP"]

    run(backend, body)


def test_namespaces_do_not_share_secrets(backend: Backend) -> None:
    async def body(repo: SecretRepository) -> None:
        await repo.set("a", "S", b"for a", 1.0)
        await repo.set("b", "S", b"for b", 2.0)
        assert await repo.values("a", ["S"]) == {"S": b"for a"}
        assert await repo.names("b") == [SecretInfo("S", 2.0)]
        assert await repo.delete("a", "S") is True
        assert await repo.values("b", ["S"]) == {"S": b"for b"}

    run(backend, body)


def test_values_are_bytes_as_given(backend: Backend) -> None:
    async def body(repo: SecretRepository) -> None:
        value = bytes(range(256))
        await repo.set(NS, "BIN", value, 1.0)
        await repo.set(NS, "EMPTY", b"", 1.0)
        assert await repo.values(NS, ["BIN", "EMPTY"]) == {"BIN": value, "EMPTY": b""}

    run(backend, body)


def test_a_second_opening_reads_the_first_ones_secrets(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as first:
            await first.set(NS, "TOKEN", b"kept", 1.0)
        async with backend.open() as second:
            assert await second.values(NS, ["TOKEN"]) == {"TOKEN": b"kept"}
            assert await second.names(NS) == [SecretInfo("TOKEN", 1.0)]

    asyncio.run(main())


# ---------------------------------------------------------------- PostgreSQL only
def _pg(dsn: str) -> PostgresStore:
    return PostgresStore(dsn, max_size=4)


def test_postgres_a_secret_set_through_one_pool_decrypts_through_another(pg_dsn: str) -> None:
    master = MasterKey(os.urandom(32), "memory")

    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            # Both pools set secrets in a fresh namespace at once: one data key results.
            await asyncio.gather(
                *(
                    (a if i % 2 else b).secrets(Encryptor(master)).set(NS, f"S{i}", b"v%d" % i, 1.0)
                    for i in range(10)
                )
            )
            got = await b.secrets(Encryptor(master)).values(NS, [f"S{i}" for i in range(10)])
            assert got == {f"S{i}": b"v%d" % i for i in range(10)}
            with pytest.raises(CryptoError):
                await a.secrets(Encryptor(MasterKey(os.urandom(32), "memory"))).values(NS, ["S1"])
            async with a.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM data_keys")
                assert await cur.fetchone() == (1,)

    asyncio.run(main())


def test_postgres_secret_rows_hold_no_plaintext_and_do_not_move(pg_dsn: str) -> None:
    master = MasterKey(os.urandom(32), "memory")
    canary = b"canary-secret-93e1"

    async def main() -> None:
        async with _pg(pg_dsn) as store:
            repo = store.secrets(Encryptor(master))
            await repo.set(NS, "TOKEN", canary, 1.0)
            await repo.set(NS, "OTHER", b"other", 1.0)
            async with store.connection() as conn:
                cur = await conn.execute("SELECT namespace, name, value FROM secrets")
                rows = await cur.fetchall()
                assert all(canary not in bytes(r[2]) for r in rows)
                assert canary not in repr(rows).encode()
                # A sealed value copied onto another name does not open there.
                await conn.execute(
                    "UPDATE secrets SET value = (SELECT value FROM secrets WHERE name = 'TOKEN') "
                    "WHERE name = 'OTHER'"
                )
            with pytest.raises(CryptoError):
                await repo.values(NS, ["OTHER"])

    asyncio.run(main())
