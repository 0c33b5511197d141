"""One behaviour for every `ControlRepository`: in memory, SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`). A backend
is opened with `backend.open()`; every opening reaches the same database, as a second
gateway would. The PostgreSQL backend runs on a real cluster (tests/pg.py), never a mock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cumulo.errors import ConfigError, Conflict, StoreUnavailable
from cumulo.store.base import ApiKeyRecord
from cumulo.store.control import ControlRepository
from cumulo.store.memory_control import MemoryControlRepository
from cumulo.store.postgres import MIGRATIONS, PostgresStore
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.sqlite_control import SQLiteControlRepository
from tests.pg import PgCluster, _free_port
from tests.store.backends import BACKENDS, Backend, make_backend, run

NS = "default"


@asynccontextmanager
async def _sqlite(tmp: Path) -> AsyncIterator[ControlRepository]:
    store = SQLiteStore(tmp / "cumulo.db")
    store.open()
    try:
        yield SQLiteControlRepository(store)
    finally:
        store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[ControlRepository]:
    return make_backend(
        request,
        tmp_path,
        memory=MemoryControlRepository,
        sqlite=_sqlite,
        postgres=lambda store: store.control,
    )


async def deploy(
    repo: ControlRepository,
    name: str = "hello",
    *,
    namespace: str = NS,
    sha: str = "a" * 64,
    promote: bool = True,
    now: float = 1000.0,
    config: dict[str, Any] | None = None,
) -> int:
    record = await repo.add_version(
        namespace,
        name,
        bundle_sha=sha,
        module="app",
        attr="handler",
        kind="function",
        config=config if config is not None else {"memory_mb": 256},
        promote=promote,
        now=now,
    )
    return record.version


def key(
    key_id: str, created_at: float, *, namespace: str = NS, scopes: tuple[str, ...] = ("invoke",)
) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=key_id,
        namespace=namespace,
        name=f"key {key_id}",
        scopes=scopes,
        created_at=created_at,
        expires_at=None,
        revoked_at=None,
        key_hash=f"hash-{key_id}".encode(),
    )


# ---------------------------------------------------------------- functions and versions
def test_first_deploy_creates_the_function_with_version_1_live(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        assert await repo.get_function(NS, "hello") is None
        record = await repo.add_version(
            NS,
            "hello",
            bundle_sha="b" * 64,
            module="app",
            attr="main",
            kind="asgi",
            config={"memory_mb": 128, "env": {"A": "1"}, "topics": ["t"], "ratio": 0.25},
            promote=False,  # the first version goes live even without promote
            now=1234.5,
        )
        assert (record.namespace, record.function, record.version) == (NS, "hello", 1)
        fn = await repo.get_function(NS, "hello")
        assert fn is not None
        assert (fn.name, fn.created_at, fn.traffic) == ("hello", 1234.5, {1: 100})
        got = await repo.get_version(NS, "hello", 1)
        assert got == record
        assert got.config == {"memory_mb": 128, "env": {"A": "1"}, "topics": ["t"], "ratio": 0.25}
        assert list(got.config) == ["memory_mb", "env", "topics", "ratio"]  # order kept

    run(backend, body)


def test_versions_count_up_and_only_promote_moves_live(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        assert await deploy(repo, now=1.0) == 1
        assert await deploy(repo, now=2.0, promote=True) == 2
        assert (await repo.get_function(NS, "hello")).traffic == {2: 100}  # type: ignore[union-attr]
        assert await deploy(repo, now=3.0, promote=False) == 3
        fn = await repo.get_function(NS, "hello")
        assert fn is not None
        assert fn.traffic == {2: 100}
        assert fn.created_at == 1.0  # the first deploy's time
        versions = await repo.list_versions(NS, "hello")
        assert [(v.version, v.created_at) for v in versions] == [(1, 1.0), (2, 2.0), (3, 3.0)]
        assert await repo.get_version(NS, "hello", 4) is None
        assert await repo.list_versions(NS, "nope") == []
        # Numbering is per function.
        assert await deploy(repo, "other") == 1

    run(backend, body)


def test_functions_are_listed_by_code_point_within_their_namespace(backend: Backend) -> None:
    names = ["b", "B", "a", "_z", "a-1", "Z"]

    async def body(repo: ControlRepository) -> None:
        for name in names:
            await deploy(repo, name)
        await deploy(repo, "elsewhere", namespace="team")
        listed = await repo.list_functions(NS)
        assert [f.name for f in listed] == sorted(names)
        assert all(f.namespace == NS and f.traffic == {1: 100} for f in listed)
        assert [f.name for f in await repo.list_functions("team")] == ["elsewhere"]
        assert await repo.list_functions("empty") == []
        assert await repo.get_function("team", "a") is None
        assert await repo.list_versions("team", "a") == []

    run(backend, body)


def test_namespaces_are_those_holding_functions_listed_once(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        assert await repo.namespaces() == []
        for namespace in ["team", "B", NS, "a"]:
            await deploy(repo, "one", namespace=namespace)
        await deploy(repo, "two", namespace="team")
        assert await repo.namespaces() == sorted(["team", "B", NS, "a"])
        await repo.delete_function("B", "one")
        assert await repo.namespaces() == sorted(["team", NS, "a"])

    run(backend, body)


def test_returned_records_are_the_callers_own(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        await deploy(repo, config={"env": {"A": "1"}})
        fn = await repo.get_function(NS, "hello")
        assert fn is not None
        fn.traffic[7] = 1
        version = await repo.get_version(NS, "hello", 1)
        assert version is not None
        version.config["env"]["A"] = "changed"
        assert (await repo.get_function(NS, "hello")).traffic == {1: 100}  # type: ignore[union-attr]
        assert (await repo.get_version(NS, "hello", 1)).config == {"env": {"A": "1"}}  # type: ignore[union-attr]

    run(backend, body)


def test_delete_removes_versions_and_history_and_numbering_restarts(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        await deploy(repo, sha="1" * 64)
        await deploy(repo, sha="2" * 64)
        await deploy(repo, "keep", sha="3" * 64)
        assert await repo.delete_function(NS, "hello") is True
        assert await repo.get_function(NS, "hello") is None
        assert await repo.list_versions(NS, "hello") == []
        assert await repo.get_version(NS, "hello", 1) is None
        assert [f.name for f in await repo.list_functions(NS)] == ["keep"]
        assert not await repo.bundle_in_use("1" * 64)
        assert sorted(await repo.bundle_shas()) == ["3" * 64]
        assert await repo.delete_function(NS, "hello") is False
        assert await repo.delete_function("team", "keep") is False  # other namespace
        # A new function of that name starts again, with no history to roll back to.
        assert await deploy(repo) == 1
        assert await repo.rollback(NS, "hello") is None

    run(backend, body)


def test_bundles_in_use_span_namespaces_and_are_listed_once(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        assert await repo.bundle_shas() == []
        await deploy(repo, "a", sha="1" * 64)
        await deploy(repo, "a", sha="1" * 64)
        await deploy(repo, "b", sha="2" * 64, namespace="team")
        assert sorted(await repo.bundle_shas()) == ["1" * 64, "2" * 64]
        assert await repo.bundle_in_use("1" * 64)
        assert await repo.bundle_in_use("2" * 64)
        assert not await repo.bundle_in_use("3" * 64)

    run(backend, body)


# ---------------------------------------------------------------- traffic
def test_set_traffic_then_rollback_walks_back_through_history(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        assert await repo.set_traffic(NS, "hello", {1: 100}) is False
        assert await repo.rollback(NS, "hello") is None
        await deploy(repo)
        assert await repo.rollback(NS, "hello") is None  # nothing before version 1
        await deploy(repo, promote=True)  # history: {1: 100}
        await deploy(repo, promote=False)
        assert await repo.set_traffic(NS, "hello", {2: 90, 3: 10}) is True  # + {2: 100}
        assert await repo.set_traffic(NS, "hello", {2: 90, 3: 10}) is True  # no change
        assert (await repo.get_function(NS, "hello")).traffic == {2: 90, 3: 10}  # type: ignore[union-attr]
        assert await repo.rollback(NS, "hello") == {2: 100}
        assert (await repo.get_function(NS, "hello")).traffic == {2: 100}  # type: ignore[union-attr]
        assert await repo.rollback(NS, "hello") == {1: 100}
        assert (await repo.get_function(NS, "hello")).traffic == {1: 100}  # type: ignore[union-attr]
        assert await repo.rollback(NS, "hello") is None
        assert (await repo.get_function(NS, "hello")).traffic == {1: 100}  # type: ignore[union-attr]

    run(backend, body)


def test_history_is_per_function(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        await deploy(repo, "a")
        await deploy(repo, "a")
        await deploy(repo, "b")
        await deploy(repo, "b", namespace="team")
        await deploy(repo, "b", namespace="team")
        assert await repo.rollback(NS, "b") is None
        assert await repo.rollback("team", "b") == {1: 100}
        assert await repo.rollback(NS, "a") == {1: 100}
        assert (await repo.get_function(NS, "b")).traffic == {1: 100}  # type: ignore[union-attr]

    run(backend, body)


# ---------------------------------------------------------------- keys
def test_keys_insert_list_and_revoke(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        assert await repo.all_keys() == []
        k1, k2, k3 = key("k1", 20.0), key("k2", 10.0, scopes=()), key("k3", 20.0, namespace="t")
        for k in (k1, k2, k3):
            await repo.insert_key(k)
        assert await repo.all_keys() == [k2, k1, k3]  # by created_at, ties in insertion order
        assert await repo.revoke_key("k1", 99.5) is True
        assert await repo.revoke_key("k1", 200.0) is False
        assert await repo.revoke_key("nope", 1.0) is False
        keys = {k.id: k for k in await repo.all_keys()}
        assert keys["k1"].revoked_at == 99.5
        assert keys["k1"].public()["revoked"] is True
        assert keys["k2"].scopes == ()
        assert keys["k3"].revoked_at is None

    run(backend, body)


def test_a_duplicate_key_is_a_conflict(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        await repo.insert_key(key("k1", 1.0))
        same_id = key("k1", 2.0)
        same_hash = ApiKeyRecord("k2", NS, "n", (), 3.0, None, None, b"hash-k1")
        for duplicate in (same_id, same_hash):
            with pytest.raises(Conflict) as raised:
                await repo.insert_key(duplicate)
            assert raised.value.code == "key_exists"
        assert [k.id for k in await repo.all_keys()] == ["k1"]

    run(backend, body)


# ---------------------------------------------------------------- sharing and races
def test_a_second_opening_sees_the_first_ones_writes(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as first:
            await deploy(first)
            await deploy(first, promote=False)
            await first.insert_key(key("k1", 1.0))
        async with backend.open() as second:
            assert [v.version for v in await second.list_versions(NS, "hello")] == [1, 2]
            assert [k.id for k in await second.all_keys()] == ["k1"]
            assert await deploy(second) == 3

    asyncio.run(main())


def test_concurrent_deploys_get_distinct_versions(backend: Backend) -> None:
    async def body(repo: ControlRepository) -> None:
        got = await asyncio.gather(*(deploy(repo, now=float(i)) for i in range(12)))
        assert sorted(got) == list(range(1, 13))
        assert [v.version for v in await repo.list_versions(NS, "hello")] == list(range(1, 13))
        fn = await repo.get_function(NS, "hello")
        assert fn is not None
        assert len(fn.traffic) == 1
        assert next(iter(fn.traffic.values())) == 100

    run(backend, body)


# ---------------------------------------------------------------- PostgreSQL only
def _pg(dsn: str, **kwargs: Any) -> PostgresStore:
    return PostgresStore(dsn, max_size=4, **kwargs)


def test_postgres_deploys_from_two_pools_race_safely(pg_dsn: str) -> None:
    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            repos = [a.control, b.control]
            # Including the very first deploy: both pools may try to create the function.
            got = await asyncio.gather(*(deploy(repos[i % 2], now=float(i)) for i in range(20)))
            assert sorted(got) == list(range(1, 21))
            # Numbers are taken under the function row's lock, held to commit: the newest
            # version committed last, so it is live and every split before it is history.
            fn = await a.control.get_function(NS, "hello")
            assert fn is not None
            assert fn.traffic == {20: 100}
            async with b.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM traffic_history")
                assert (await cur.fetchone()) == (19,)

    asyncio.run(main())


def test_postgres_traffic_changes_from_two_pools_stay_consistent(pg_dsn: str) -> None:
    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            await deploy(a.control)
            await deploy(a.control, promote=False)
            splits = [{1: 50, 2: 50}, {2: 100}, {1: 10, 2: 90}, {1: 100}]
            await asyncio.gather(
                *(
                    (a if i % 2 else b).control.set_traffic(NS, "hello", s)
                    for i, s in enumerate(splits * 3)
                )
            )
            fn = await b.control.get_function(NS, "hello")
            assert fn is not None
            assert fn.traffic in splits
            # Walking the history back never restores a split equal to the one it leaves.
            current = fn.traffic
            while (previous := await a.control.rollback(NS, "hello")) is not None:
                assert previous != current
                current = previous

    asyncio.run(main())


def test_postgres_migrations_are_recorded_and_a_second_run_is_a_no_op(pg_dsn: str) -> None:
    async def main() -> None:
        store = _pg(pg_dsn)
        await store.open(migrate=False)
        try:
            assert await store.schema_version() == 0
            assert await store.migrate() == [m.version for m in MIGRATIONS]
            async with store.connection() as conn:
                cur = await conn.execute("SELECT version, applied_at FROM schema_migrations")
                before = await cur.fetchall()
            assert await store.migrate() == []
            async with _pg(pg_dsn) as again:  # a second gateway starting: open() migrates
                assert await again.migrate() == []
            async with store.connection() as conn:
                cur = await conn.execute("SELECT version, applied_at FROM schema_migrations")
                assert await cur.fetchall() == before
            assert await store.schema_version() == MIGRATIONS[-1].version
        finally:
            await store.close()

    asyncio.run(main())


def test_postgres_concurrent_migrations_from_two_pools_apply_once(pg_dsn: str) -> None:
    async def main() -> None:
        stores = [_pg(pg_dsn), _pg(pg_dsn), _pg(pg_dsn)]
        for store in stores:
            await store.open(migrate=False)
        try:
            results = await asyncio.gather(*(s.migrate() for s in stores))
            assert sorted(results) == [[], [], [m.version for m in MIGRATIONS]]
            assert await deploy(stores[1].control) == 1
        finally:
            for store in stores:
                await store.close()

    asyncio.run(main())


def test_postgres_refuses_a_schema_newer_than_it_knows(pg_dsn: str) -> None:
    async def main() -> None:
        async with _pg(pg_dsn) as store:
            async with store.connection() as conn:
                await conn.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES (999, 'later')"
                )
            with pytest.raises(ConfigError, match="newer than this cumulo knows"):
                await store.migrate()

    asyncio.run(main())


def test_postgres_unreachable_is_store_unavailable() -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{_free_port()}/nothing"

    async def main() -> None:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            await _pg(dsn, timeout=1.0).open()
        assert time.monotonic() - began < 10
        assert raised.value.code == "store_unavailable"
        assert raised.value.status == 503
        assert isinstance(raised.value.__cause__, psycopg.OperationalError)
        assert "refused" in raised.value.message

    asyncio.run(main())


def test_postgres_replaces_terminated_sessions_without_an_error(
    pg_cluster: PgCluster, pg_dsn: str
) -> None:
    async def main() -> None:
        async with _pg(pg_dsn) as store:
            await deploy(store.control)
            assert pg_cluster.terminate_connections(pg_dsn) >= 1
            assert await deploy(store.control) == 2

    asyncio.run(main())


def test_postgres_down_then_back_fails_fast_then_recovers(
    pg_cluster: PgCluster, pg_dsn: str
) -> None:
    async def main() -> None:
        async with _pg(pg_dsn, timeout=1.0) as store:
            await deploy(store.control)
            pg_cluster.stop_server()
            try:
                began = time.monotonic()
                with pytest.raises(StoreUnavailable) as raised:
                    await store.control.list_functions(NS)
                assert time.monotonic() - began < 5
                assert isinstance(raised.value.__cause__, psycopg.OperationalError)
            finally:
                pg_cluster.start_server()
            # The pool reconnects in the background (with backoff): calls fail fast with
            # StoreUnavailable until it has, then succeed with no restart of the store.
            deadline = time.monotonic() + 15
            while True:
                try:
                    names = [f.name for f in await store.control.list_functions(NS)]
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the store never recovered"
                    await asyncio.sleep(0.1)
            assert names == ["hello"]
            assert await deploy(store.control) == 2

    asyncio.run(main())


def test_postgres_back_after_a_long_outage_serves_within_seconds_not_half_the_outage(
    pg_cluster: PgCluster, pg_dsn: str
) -> None:
    """Regression: psycopg_pool doubles its reconnect delay with no cap, so after a 20 s
    outage with calls arriving, the pool slept ~10 s past the server's return (a gateway
    that sat through a restart answered its next call 503)."""

    async def main() -> None:
        async with _pg(pg_dsn, timeout=1.0) as store:
            await deploy(store.control)
            pg_cluster.stop_server()
            try:
                outage_ends = time.monotonic() + 20
                while time.monotonic() < outage_ends:
                    with pytest.raises(StoreUnavailable):
                        await store.control.list_functions(NS)
                    await asyncio.sleep(0.5)
            finally:
                pg_cluster.start_server()
            deadline = time.monotonic() + 5
            while True:
                try:
                    await store.control.list_functions(NS)
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "still down 5 s after the server's return"
                    await asyncio.sleep(0.1)

    asyncio.run(main())
