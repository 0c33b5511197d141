"""One behaviour for every `PrivacyRepository` and `SubjectKeyStore`: in memory, SQLite and
PostgreSQL (`-k memory`, `-k sqlite`, `-k postgresql`).

Every `backend.open()` reaches the same data, as a second gateway would. The subject keys
sit where each backend keeps them: `subject-keys.db` beside cumulo.db on SQLite, a second
database on PostgreSQL. PostgreSQL runs on a real cluster (tests/pg.py), never a mock.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cumulo.errors import ConfigError
from cumulo.privacy.data import Rooms, SubjectData
from cumulo.privacy.keystore import SubjectKeyMissing, SubjectKeys
from cumulo.security.crypto import CryptoError, Encryptor, MasterKey
from cumulo.store.memory_privacy import MemoryPrivacyRepository
from cumulo.store.memory_subject_keys import MemoryNamespaceKeys, MemorySubjectKeyStore
from cumulo.store.postgres import PostgresStore
from cumulo.store.postgres_subject_keys import PostgresSubjectKeyStore
from cumulo.store.privacy import PrivacyRepository, SealedInvocation, SealedLog
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.sqlite_privacy import SQLitePrivacyRepository
from cumulo.store.sqlite_subject_keys import SQLiteNamespaceKeys, SQLiteSubjectKeyStore
from cumulo.store.subject_keys import NamespaceKeys, SubjectKeyStore, WrappedKey
from tests.pg import PgCluster

NS, OTHER = "default", "tenant-b"
P, Q = "a" * 64, "b" * 64  # pseudonyms


@dataclass
class Stack:
    repo: PrivacyRepository
    keys: SubjectKeyStore
    ns_keys: NamespaceKeys


@dataclass
class Backend:
    name: str
    open: Callable[[], AbstractAsyncContextManager[Stack]]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    master = MasterKey(os.urandom(32), "memory")
    if request.param == "memory":
        shared = Stack(MemoryPrivacyRepository(), MemorySubjectKeyStore(), MemoryNamespaceKeys())

        @asynccontextmanager
        async def open_memory() -> AsyncIterator[Stack]:
            yield shared

        yield Backend("memory", open_memory)
    elif request.param == "sqlite":

        @asynccontextmanager
        async def open_sqlite() -> AsyncIterator[Stack]:
            encryptor = Encryptor(master)
            store = SQLiteStore(tmp_path / "cumulo.db", encryptor=encryptor)
            store.open()
            keys = SQLiteSubjectKeyStore(tmp_path / "subject-keys.db", store)
            try:
                await store.call(encryptor.open, store)
                repo = SQLitePrivacyRepository(store)
                await repo.open()
                yield Stack(repo, keys, SQLiteNamespaceKeys(store, encryptor))
            finally:
                await keys.aclose()
                store.close()

        yield Backend("sqlite", open_sqlite)
    else:
        dsn = request.getfixturevalue("pg_dsn")
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        key_dsn = cluster.create_database()

        @asynccontextmanager
        async def open_postgres() -> AsyncIterator[Stack]:
            async with PostgresStore(dsn, max_size=4) as store:
                keys = store.subject_keys(key_dsn)
                try:
                    yield Stack(store.privacy(), keys, store.namespace_keys(Encryptor(master)))
                finally:
                    await keys.aclose()

        yield Backend("postgresql", open_postgres)
        cluster.drop_database(key_dsn)


def run(backend: Backend, body: Callable[[Stack], Awaitable[None]]) -> None:
    async def main() -> None:
        async with backend.open() as stack:
            await stack.keys.open()
            await body(stack)

    asyncio.run(main())


# ---------------------------------------------------------------- state
def test_state_update_versions_and_compare_and_set(backend: Backend) -> None:
    async def body(s: Stack) -> None:
        repo = s.repo
        assert await repo.state_get(NS, "fn", P, "k") is None
        assert await repo.state_update(NS, "fn", P, "k", lambda cur, v: b"one", 1.0) == (1, True)
        seen: list[tuple[bytes | None, int]] = []

        def keep(cur: bytes | None, v: int) -> bytes | None:
            seen.append((cur, v))
            return None

        assert await repo.state_update(NS, "fn", P, "k", keep, 2.0) == (1, False)
        assert seen == [(b"one", 1)]
        assert await repo.state_update(NS, "fn", P, "k", lambda c, v: b"two", 3.0) == (2, True)
        assert await repo.state_get(NS, "fn", P, "k") == (b"two", 2)

        def boom(cur: bytes | None, v: int) -> bytes:
            raise ValueError("not an integer")

        with pytest.raises(ValueError, match="not an integer"):
            await repo.state_update(NS, "fn", P, "k", boom, 4.0)
        assert await repo.state_get(NS, "fn", P, "k") == (b"two", 2)
        # Another namespace with the same pseudonym and key sees nothing.
        assert await repo.state_get(OTHER, "fn", P, "k") is None
        assert await repo.subject_state(OTHER, P) == []
        await repo.state_update(NS, "a-fn", P, "k2", lambda c, v: b"x", 5.0)
        rows = await repo.subject_state(NS, P)
        assert [(r.function, r.key_hash, r.value, r.version) for r in rows] == [
            ("a-fn", "k2", b"x", 1),
            ("fn", "k", b"two", 2),
        ]
        assert await repo.state_delete(NS, "fn", P, "k")
        assert not await repo.state_delete(NS, "fn", P, "k")

    run(backend, body)


def test_concurrent_increments_through_two_openings_lose_none(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as a, backend.open() as b:

            def incr(cur: bytes | None, v: int) -> bytes:
                return str(int(cur or b"0") + 1).encode()

            await asyncio.gather(
                *(
                    (a if i % 2 else b).repo.state_update(NS, "fn", P, "n", incr, 1.0)
                    for i in range(20)
                )
            )
            assert await a.repo.state_get(NS, "fn", P, "n") == (b"20", 20)

    asyncio.run(main())


# ---------------------------------------------------------------- logs, invocations, consent
def _log(ns: str, p: str, iid: str, ts: float) -> SealedLog:
    return SealedLog(ns, "fn", p, iid, ts, f"{iid}@{ts}".encode())


def _inv(iid: str, ns: str, p: str, at: float, blob: bytes = b"inv") -> SealedInvocation:
    return SealedInvocation(iid, ns, "fn", p, at, blob)


def test_logs_keep_order_and_invocations_replace(backend: Backend) -> None:
    async def body(s: Stack) -> None:
        repo = s.repo
        await repo.append(
            [_log(NS, P, "i1", 5.0), _log(NS, P, "i1", 1.0)], [_inv("i1", NS, P, 2.0)]
        )
        await repo.append([_log(NS, Q, "i2", 3.0), _log(OTHER, P, "i3", 3.0)], [])
        await repo.append([], [_inv("i1", NS, P, 2.0, b"v2"), _inv("i0", NS, P, 1.0)])
        await repo.append([], [])
        assert [x.blob for x in await repo.subject_logs(NS, P)] == [b"i1@5.0", b"i1@1.0"]
        assert [(i.id, i.blob) for i in await repo.subject_invocations(NS, P)] == [
            ("i0", b"inv"),
            ("i1", b"v2"),
        ]
        assert await repo.subject_invocations(OTHER, P) == []

    run(backend, body)


def test_consent_latest_event_wins(backend: Backend) -> None:
    async def body(s: Stack) -> None:
        repo = s.repo
        await repo.consent_append(NS, P, "marketing", True, b"g", 1.0)
        await repo.consent_append(NS, P, "marketing", False, b"w", 2.0)
        await repo.consent_append(NS, P, "analytics", True, b"a", 3.0)
        await repo.consent_append(OTHER, P, "marketing", True, b"o", 4.0)
        assert await repo.consent_current() == {
            (NS, P, "marketing"): False,
            (NS, P, "analytics"): True,
            (OTHER, P, "marketing"): True,
        }
        rows = await repo.consent_of(NS, P)
        assert [(r.purpose, r.blob) for r in rows] == [
            ("marketing", b"g"),
            ("marketing", b"w"),
            ("analytics", b"a"),
        ]
        assert rows[0].seq < rows[1].seq < rows[2].seq

    run(backend, body)


# ---------------------------------------------------------------- erasure and retention
def test_erase_subject_removes_only_that_subject(backend: Backend) -> None:
    async def body(s: Stack) -> None:
        repo = s.repo
        for ns, p in ((NS, P), (NS, Q), (OTHER, P)):
            await repo.state_update(ns, "fn", p, "k", lambda c, v: b"x", 1.0)
            await repo.append([_log(ns, p, f"{ns}{p}", 1.0)], [_inv(f"{ns}{p}", ns, p, 1.0)])
            await repo.consent_append(ns, p, "marketing", True, b"g", 1.0)
        req = await repo.create_request("dsr_1", NS, "access", "gdpr", P, "received", 1.0, 9.0)
        assert not req.has_result
        await repo.set_request_status("dsr_1", "completed", 2.0, finished=True, result=b"doc")
        assert await repo.request_result("dsr_1") == b"doc"
        counts = await repo.erase_subject(NS, P)
        assert counts == {"state": 1, "logs": 1, "invocations": 1, "consent": 1}
        await repo.scrub()
        assert await repo.subject_state(NS, P) == []
        assert await repo.subject_logs(NS, P) == []
        assert await repo.consent_of(NS, P) == []
        assert await repo.request_result("dsr_1") is None
        found = await repo.get_request("dsr_1")
        assert found is not None
        assert not found.has_result
        assert found.status == "completed"
        for ns, p in ((NS, Q), (OTHER, P)):
            assert len(await repo.subject_state(ns, p)) == 1
            assert len(await repo.subject_logs(ns, p)) == 1
            assert len(await repo.subject_invocations(ns, p)) == 1
        assert await repo.erase_subject(NS, P) == {
            "state": 0,
            "logs": 0,
            "invocations": 0,
            "consent": 0,
        }

    run(backend, body)


def test_purge_and_retention(backend: Backend) -> None:
    async def body(s: Stack) -> None:
        repo = s.repo
        await repo.state_update(NS, "fn", P, "old", lambda c, v: b"x", 1.0)
        await repo.state_update(NS, "fn", P, "new", lambda c, v: b"x", 10.0)
        await repo.append(
            [_log(NS, P, "i", 1.0), _log(NS, P, "i", 10.0), _log(OTHER, P, "i", 1.0)],
            [_inv("i1", NS, P, 1.0), _inv("i2", NS, P, 10.0)],
        )
        assert await repo.purge(NS, 5.0) == {
            "subject_invocations": 1,
            "subject_logs": 1,
            "subject_state": 1,
        }
        assert [r.key_hash for r in await repo.subject_state(NS, P)] == ["new"]
        assert len(await repo.subject_logs(OTHER, P)) == 1
        assert await repo.retention() == {}
        await repo.set_retention("z-ns", 60.0)
        await repo.set_retention("z-ns", 120.0)
        await repo.set_retention("y-ns", 5.0)
        await repo.set_retention("y-ns", None)
        assert await repo.retention() == {"z-ns": 120.0}
        assert await repo.namespaces() == [NS, "z-ns"]

    run(backend, body)


# ---------------------------------------------------------------- requests
def test_requests_list_status_and_overdue_once(backend: Backend) -> None:
    async def body(s: Stack) -> None:
        repo = s.repo
        await repo.create_request("dsr_a", NS, "access", "gdpr", P, "received", 1.0, 5.0)
        await repo.create_request("dsr_b", OTHER, "erasure", "ccpa", Q, "received", 2.0, 50.0)
        await repo.create_request("dsr_c", NS, "portability", "gdpr", Q, "received", 3.0, 4.0)
        assert await repo.get_request("nope") is None
        assert [r.id for r in await repo.list_requests(None)] == ["dsr_c", "dsr_b", "dsr_a"]
        assert [r.id for r in await repo.list_requests(NS, limit=1)] == ["dsr_c"]
        await repo.set_request_status("dsr_c", "completed", 4.5, finished=True, counts='{"x":1}')
        await repo.set_request_status("dsr_a", "processing", 4.6, finished=False)
        a = await repo.get_request("dsr_a")
        c = await repo.get_request("dsr_c")
        assert a is not None
        assert a.status == "processing"
        assert a.completed_at is None
        assert c is not None
        assert c.completed_at == 4.5
        assert c.counts == '{"x":1}'
        await repo.set_request_status("dsr_c", "completed", 4.7, finished=True, error=None)
        c = await repo.get_request("dsr_c")
        assert c is not None
        assert c.counts == '{"x":1}'
        overdue = await repo.newly_overdue(10.0)
        assert [r.id for r in overdue] == ["dsr_a"]
        assert await repo.newly_overdue(10.0) == []
        a = await repo.get_request("dsr_a")
        assert a is not None
        assert a.overdue_alerted

    run(backend, body)


# ---------------------------------------------------------------- subject keys
def test_subject_key_store_contract(backend: Backend) -> None:
    async def body(s: Stack) -> None:
        keys = s.keys
        secret = await keys.open()
        assert len(secret) == 32
        assert await keys.open() == secret
        first = await keys.insert(NS, P, WrappedKey(1, b"w1"), 1.0)
        assert first == WrappedKey(1, b"w1")
        assert await keys.insert(NS, P, WrappedKey(1, b"w2"), 2.0) == first  # the winner stays
        await keys.insert(OTHER, P, WrappedKey(1, b"w3"), 1.0)
        assert await keys.has(NS, P)
        assert not await keys.has(NS, Q)
        assert await keys.counts() == {NS: 1, OTHER: 1}
        assert await keys.destroy(NS, P)
        assert not await keys.destroy(NS, P)
        assert await keys.get(NS, P) is None
        assert await keys.get(OTHER, P) == WrappedKey(1, b"w3")

    run(backend, body)


def test_the_pseudonym_secret_is_shared_by_every_opening(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as a, backend.open() as b:
            assert await a.keys.open() == await b.keys.open()

    asyncio.run(main())


def test_sealed_values_open_only_in_their_namespace_and_not_after_destroy(
    backend: Backend,
) -> None:
    async def body(s: Stack) -> None:
        keys = SubjectKeys(s.keys, s.ns_keys)
        blob = await keys.sealed(NS, P, "state", ("fn", "k"), b"alice's value")
        assert await keys.opened(NS, P, "state", ("fn", "k"), blob) == b"alice's value"
        await keys.sealed(OTHER, P, "state", ("fn", "k"), b"other")  # same pseudonym string
        with pytest.raises(CryptoError):
            await keys.opened(OTHER, P, "state", ("fn", "k"), blob)
        with pytest.raises(CryptoError):
            await keys.opened(NS, P, "state", ("fn", "other-key"), blob)
        assert await keys.destroy(NS, P)
        with pytest.raises(SubjectKeyMissing):
            await keys.opened(NS, P, "state", ("fn", "k"), blob)

    run(backend, body)


# ---------------------------------------------------------------- PostgreSQL only
@asynccontextmanager
async def _gateway(dsn: str, key_dsn: str, master: MasterKey) -> AsyncIterator[SubjectData]:
    """What one gateway holds of the privacy room on PostgreSQL."""
    async with PostgresStore(dsn, max_size=4) as store:
        encryptor = Encryptor(master)
        keys = SubjectKeys(store.subject_keys(key_dsn), store.namespace_keys(encryptor))
        rooms = Rooms(
            store.invocations, store.logs(encryptor), store.control, lambda: store.jobs(None)
        )
        data = SubjectData(store.privacy(), keys, rooms)
        await data.open()
        try:
            yield data
        finally:
            await data.close()


def test_postgres_a_subject_erased_through_one_gateway_is_gone_for_the_other(
    pg_dsn: str, pg_cluster: PgCluster
) -> None:
    master = MasterKey(os.urandom(32), "memory")
    key_dsn = pg_cluster.create_database()

    async def main() -> None:
        async with _gateway(pg_dsn, key_dsn, master) as a, _gateway(pg_dsn, key_dsn, master) as b:
            assert a.pseudo.pseudonym(NS, "user:alice") == b.pseudo.pseudonym(NS, "user:alice")
            await a.state_put(NS, "fn", "user:alice", "email", "alice@example.com", None, 1.0)
            await b.state_put(NS, "fn", "user:bob", "email", "bob@example.com", None, 1.0)
            got = await b.state_get(NS, "fn", "user:alice", "email")
            assert got == {"value": "alice@example.com", "version": 1}  # b holds the key now
            p = a.pseudo.pseudonym(NS, "user:alice")
            counts = await a.erase(NS, p)
            assert counts["state"] == 1
            assert counts["subject_keys_destroyed"] == 1
            assert await b.state_get(NS, "fn", "user:alice", "email") is None
            with pytest.raises(SubjectKeyMissing):
                await b.keys.load(NS, p, create=False)
            assert (await b.export(NS, p))["state"] == []
            assert await b.state_get(NS, "fn", "user:bob", "email") is not None
            # Nothing of the key in the main database; one key (bob's) left in the other.
            async with PostgresStore(pg_dsn, max_size=1) as main_db, main_db.connection() as c:
                cur = await c.execute("SELECT to_regclass('subject_keys') IS NULL")
                assert await cur.fetchone() == (True,)
            assert await b.keys.count() == {NS: 1}

    try:
        asyncio.run(main())
    finally:
        pg_cluster.drop_database(key_dsn)


def test_postgres_two_gateways_creating_one_subject_key_agree(
    pg_dsn: str, pg_cluster: PgCluster
) -> None:
    master = MasterKey(os.urandom(32), "memory")
    key_dsn = pg_cluster.create_database()

    async def main() -> None:
        async with _gateway(pg_dsn, key_dsn, master) as a, _gateway(pg_dsn, key_dsn, master) as b:
            p = a.pseudo.pseudonym(NS, "user:carol")
            blobs = await asyncio.gather(
                *((a if i % 2 else b).keys.sealed(NS, p, "log", (str(i),), b"x") for i in range(8))
            )
            for i, blob in enumerate(blobs):
                assert await (b if i % 2 else a).keys.opened(NS, p, "log", (str(i),), blob) == b"x"

    try:
        asyncio.run(main())
    finally:
        pg_cluster.drop_database(key_dsn)


def test_postgres_subject_keys_refuse_the_main_database(pg_dsn: str) -> None:
    async def main() -> None:
        async with PostgresStore(pg_dsn, max_size=2) as store:
            keys = store.subject_keys(pg_dsn)
            with pytest.raises(ConfigError, match="database of their own"):
                await keys.open()
            alone = PostgresSubjectKeyStore(pg_dsn)  # no main given: the schema gives it away
            with pytest.raises(ConfigError, match="main schema"):
                await alone.open()

    asyncio.run(main())
