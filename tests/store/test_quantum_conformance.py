"""One behaviour for every `QuantumJobRepository`: in memory, SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`). A backend
is opened with `backend.open()`; every opening reaches the same database, as a restarted
(or a second) gateway would. PostgreSQL runs on a real cluster (tests/pg.py), never a mock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from cumulo.errors import Conflict, StoreUnavailable
from cumulo.store.memory_quantum import MemoryQuantumJobRepository
from cumulo.store.postgres import PostgresStore
from cumulo.store.quantum import (
    CONFLICT_IDEMPOTENCY_KEY,
    CONFLICT_JOB_ID,
    TERMINAL,
    JobRow,
    QuantumJobRepository,
)
from cumulo.store.sqlite_quantum import SQLiteQuantumJobRepository
from tests.pg import PgCluster
from tests.store.backends import BACKENDS, Backend, make_backend, run

NS = "default"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[QuantumJobRepository]:
    return make_backend(
        request,
        tmp_path,
        memory=MemoryQuantumJobRepository,
        sqlite=lambda tmp: SQLiteQuantumJobRepository(tmp / "quantum" / "quantum.db"),
        postgres=lambda store: store.quantum,
    )


def job(
    job_id: str,
    created_at: float = 1000.0,
    *,
    namespace: str = NS,
    key: str | None = None,
    state: str = "queued",
    result: bytes | None = None,
) -> JobRow:
    return JobRow(
        id=job_id,
        namespace=namespace,
        state=state,
        created_at=created_at,
        started_at=None,
        finished_at=None,
        idempotency_key=key,
        request_hash=f"sha-{job_id}",
        request=b'{"pubs":[]}',
        method="statevector",
        device="CPU",
        estimated_bytes=1 << 34,  # past 32 bits
        num_pubs=2,
        seed=2**31 - 1,
        timeout_s=300.0,
        attempts=0,
        events=[{"at": "2024-01-01T00:00:00.000Z", "state": "queued", "message": "admitted"}],
        error=None,
        result=result,
    )


def ids(rows: list[JobRow]) -> list[str]:
    return [r.id for r in rows]


# ---------------------------------------------------------------- insert and read back
def test_a_job_reads_back_as_inserted_with_or_without_its_result(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        blob = orjson.dumps({"schema": "x", "bytes": "\x00é✓"}) + b"\x00\xff"
        row = dataclasses.replace(
            job("qj_1", 1000.25, key="k1"),
            started_at=1001.5,
            finished_at=1002.75,
            attempts=2,
            events=[
                {"at": "t0", "state": "queued", "message": "admitted ✓"},
                {"at": "t1", "state": "running", "message": 'quote " and \\ slash'},
            ],
            error={"code": "time_limit", "message": "late"},
            request=b'{"a":1}\x00',
            method=None,
            device=None,
            estimated_bytes=None,
            result=blob,
        )
        await repo.insert(row)
        assert await repo.get("qj_1") == row
        assert await repo.get("qj_1", with_result=True) == row
        assert await repo.get("qj_1", with_result=False) == dataclasses.replace(row, result=None)
        assert await repo.get("nope") is None
        assert await repo.get("nope", with_result=False) is None

    run(backend, body)


def test_a_fresh_job_has_no_result_and_its_values_keep_their_types(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        row = job("qj_1")
        await repo.insert(row)
        got = await repo.get("qj_1")
        assert got == row
        assert got is not None
        assert (got.result, got.error, got.started_at) == (None, None, None)
        assert type(got.request) is bytes
        assert (type(got.created_at), type(got.timeout_s)) == (float, float)
        assert type(got.seed) is int
        assert got.estimated_bytes == 1 << 34

    run(backend, body)


# ---------------------------------------------------------------- uniqueness
def test_an_idempotency_key_is_unique_per_namespace(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        await repo.insert(job("qj_1", key="k"))
        with pytest.raises(Conflict) as raised:
            await repo.insert(job("qj_2", key="k"))
        assert raised.value.code == CONFLICT_IDEMPOTENCY_KEY
        assert raised.value.status == 409
        assert await repo.get("qj_2") is None  # a refused insert stores nothing
        await repo.insert(job("qj_3", key="k", namespace="team"))  # another namespace
        await repo.insert(job("qj_4"))  # no key never clashes
        await repo.insert(job("qj_5"))
        assert sorted(ids(await repo.list_jobs(NS, None, 10))) == ["qj_1", "qj_4", "qj_5"]
        assert ids(await repo.list_jobs("team", None, 10)) == ["qj_3"]

    run(backend, body)


def test_a_duplicate_job_id_is_a_conflict(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        first = job("qj_1", key="a")
        await repo.insert(first)
        for duplicate in (job("qj_1", 5.0, key="b"), job("qj_1", namespace="team")):
            with pytest.raises(Conflict) as raised:
                await repo.insert(duplicate)
            assert raised.value.code == CONFLICT_JOB_ID
        assert await repo.get("qj_1") == first
        assert await repo.by_idempotency_key(NS, "b") is None

    run(backend, body)


def test_by_idempotency_key_finds_the_namespaces_job_without_its_result(
    backend: Backend,
) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        row = job("qj_1", key="k", result=b'{"r":1}')
        await repo.insert(row)
        await repo.insert(job("qj_2", key="k", namespace="team"))
        assert await repo.by_idempotency_key(NS, "k") == dataclasses.replace(row, result=None)
        found = await repo.by_idempotency_key("team", "k")
        assert found is not None
        assert found.id == "qj_2"
        assert await repo.by_idempotency_key(NS, "other") is None
        assert await repo.by_idempotency_key("elsewhere", "k") is None

    run(backend, body)


# ---------------------------------------------------------------- listing
def test_list_jobs_is_newest_first_then_by_id_filtered_and_limited(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        # Equal timestamps order by id in code points: "Z" < "_" < "a" (no locale order).
        rows = [
            job("qj_a", 10.0),
            job("qj_Z", 10.0, state="succeeded", result=b"{}"),
            job("qj__", 10.0),
            job("qj_old", 1.0, state="failed"),
            job("qj_new", 20.0, state="succeeded"),
            job("qj_other", 15.0, namespace="team"),
        ]
        for row in rows:
            await repo.insert(row)
        listed = await repo.list_jobs(NS, None, 50)
        assert ids(listed) == ["qj_new", "qj_a", "qj__", "qj_Z", "qj_old"]
        assert all(r.result is None for r in listed)
        assert listed[3] == dataclasses.replace(rows[1], result=None)
        assert ids(await repo.list_jobs(NS, None, 2)) == ["qj_new", "qj_a"]
        assert ids(await repo.list_jobs(NS, "succeeded", 50)) == ["qj_new", "qj_Z"]
        assert ids(await repo.list_jobs(NS, "succeeded", 1)) == ["qj_new"]
        assert ids(await repo.list_jobs(NS, "queued", 50)) == ["qj_a", "qj__"]
        assert await repo.list_jobs(NS, "cancelling", 50) == []
        assert ids(await repo.list_jobs("team", None, 50)) == ["qj_other"]
        assert await repo.list_jobs("empty", None, 50) == []

    run(backend, body)


def test_active_lists_unfinished_jobs_of_every_namespace_oldest_first(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        assert await repo.active() == []
        for row in [
            job("qj_b", 5.0, state="running"),
            job("qj_done", 1.0, state="succeeded"),
            job("qj_a", 5.0, namespace="team", result=b"{}"),
            job("qj_c", 2.0, state="cancelling"),
            job("qj_f", 0.5, state="failed"),
            job("qj_x", 0.5, state="cancelled"),
            job("qj_A", 5.0),
        ]:
            await repo.insert(row)
        active = await repo.active()
        assert ids(active) == ["qj_c", "qj_A", "qj_a", "qj_b"]
        assert [r.state for r in active] == ["cancelling", "queued", "queued", "running"]
        assert all(r.result is None for r in active)
        await repo.update("qj_c", state="cancelled", events=[])
        await repo.update("qj_A", state="running", events=[])
        assert ids(await repo.active()) == ["qj_A", "qj_a", "qj_b"]

    run(backend, body)


# ---------------------------------------------------------------- updates
def test_update_replaces_given_fields_and_keeps_the_rest(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        row = dataclasses.replace(job("qj_1", result=b"r0"), error={"code": "c", "message": "m"})
        await repo.insert(row)
        running = [*row.events, {"at": "t1", "state": "running", "message": "go"}]
        assert await repo.update(
            "qj_1", state="running", events=running, started_at=7.5, attempts=1
        )
        got = await repo.get("qj_1")
        assert got == dataclasses.replace(
            row, state="running", events=running, started_at=7.5, attempts=1
        )
        # None keeps what is stored; events are always replaced.
        assert await repo.update("qj_1", state="queued", events=[])
        assert await repo.get("qj_1") == dataclasses.replace(
            row, state="queued", events=[], started_at=7.5, attempts=1
        )
        error = {"code": "time_limit", "message": "late"}
        assert await repo.update(
            "qj_1", state="failed", events=running, finished_at=9.0, error=error, result=b"[1]"
        )
        assert await repo.get("qj_1") == dataclasses.replace(
            row,
            state="failed",
            events=running,
            started_at=7.5,
            finished_at=9.0,
            attempts=1,
            error=error,
            result=b"[1]",
        )
        assert await repo.update("nope", state="running", events=[]) is False
        assert await repo.get("nope") is None

    run(backend, body)


@pytest.mark.parametrize("terminal", TERMINAL)
def test_a_terminal_job_is_never_changed_again(backend: Backend, terminal: str) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        await repo.insert(job("qj_1"))
        assert await repo.update(
            "qj_1", state=terminal, events=[{"m": 1}], finished_at=3.0, result=b"{}"
        )
        before = await repo.get("qj_1")
        for state in ("queued", "running", "cancelling", *TERMINAL):
            assert (
                await repo.update(
                    "qj_1",
                    state=state,
                    events=[],
                    started_at=1.0,
                    finished_at=99.0,
                    attempts=5,
                    error={"code": "c", "message": "m"},
                    result=b"[]",
                )
                is False
            )
        assert await repo.get("qj_1") == before
        # A job inserted terminal is just as final.
        await repo.insert(job("qj_2", state=terminal))
        assert await repo.update("qj_2", state="queued", events=[]) is False
        assert (await repo.get("qj_2")).state == terminal  # type: ignore[union-attr]

    run(backend, body)


def test_returned_and_given_records_are_the_callers_own(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        row = dataclasses.replace(job("qj_1", key="k"), error={"code": "c", "message": "m"})
        await repo.insert(row)
        row.events.append({"late": "change"})  # after the insert: not stored
        row.error["code"] = "changed"  # type: ignore[index]
        for got in [
            await repo.get("qj_1"),
            await repo.by_idempotency_key(NS, "k"),
            (await repo.list_jobs(NS, None, 1))[0],
            (await repo.active())[0],
        ]:
            assert got is not None
            assert got.events == job("qj_1").events
            assert got.error == {"code": "c", "message": "m"}
            got.events.append({"x": 1})
            got.error["code"] = "x"
        events = [{"state": "running"}]
        await repo.update("qj_1", state="running", events=events)
        events.append({"state": "changed"})
        assert (await repo.get("qj_1")).events == [{"state": "running"}]  # type: ignore[union-attr]

    run(backend, body)


# ---------------------------------------------------------------- sharing and races
def test_a_second_opening_sees_the_first_ones_writes(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as first:
            await first.insert(job("qj_1", key="k"))
            await first.insert(job("qj_2", 2000.0))
            await first.update("qj_2", state="succeeded", events=[], result=b'{"ok":1}')
        async with backend.open() as second:
            assert ids(await second.active()) == ["qj_1"]
            assert (await second.get("qj_2")).result == b'{"ok":1}'  # type: ignore[union-attr]
            assert (await second.by_idempotency_key(NS, "k")).id == "qj_1"  # type: ignore[union-attr]
            with pytest.raises(Conflict):
                await second.insert(job("qj_3", key="k"))

    asyncio.run(main())


def test_racing_inserts_with_one_key_store_one_job(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        async def attempt(i: int) -> str:
            try:
                await repo.insert(job(f"qj_{i}", key="same"))
            except Conflict as exc:
                return exc.code
            return f"qj_{i}"

        got = await asyncio.gather(*(attempt(i) for i in range(10)))
        won = [w for w in got if w != CONFLICT_IDEMPOTENCY_KEY]
        assert len(won) == 1
        assert ids(await repo.list_jobs(NS, None, 50)) == won
        assert (await repo.by_idempotency_key(NS, "same")).id == won[0]  # type: ignore[union-attr]

    run(backend, body)


def test_racing_terminal_updates_let_exactly_one_win(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        await repo.insert(job("qj_1"))
        states = [TERMINAL[i % 3] for i in range(9)]
        results = await asyncio.gather(
            *(
                repo.update("qj_1", state=s, events=[{"n": i}], finished_at=float(i))
                for i, s in enumerate(states)
            )
        )
        assert results.count(True) == 1
        winner = results.index(True)
        got = await repo.get("qj_1")
        assert got is not None
        assert (got.state, got.events, got.finished_at) == (
            states[winner],
            [{"n": winner}],
            float(winner),
        )

    run(backend, body)


# ---------------------------------------------------------------- SQLite only
LEGACY_SCHEMA = """
CREATE TABLE quantum_jobs (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, state TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, idempotency_key TEXT,
    request_hash TEXT NOT NULL, request BLOB NOT NULL, method TEXT, device TEXT,
    estimated_bytes INTEGER, num_pubs INTEGER NOT NULL, seed INTEGER NOT NULL,
    timeout_s REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, events BLOB NOT NULL,
    error BLOB, result BLOB);
CREATE UNIQUE INDEX quantum_jobs_idempotency
    ON quantum_jobs(namespace, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX quantum_jobs_namespace ON quantum_jobs(namespace, created_at);
CREATE INDEX quantum_jobs_state ON quantum_jobs(state);
"""


def test_sqlite_reads_a_data_dir_written_before_the_repository(tmp_path: Path) -> None:
    path = tmp_path / "quantum" / "quantum.db"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.executescript(LEGACY_SCHEMA)
    events = orjson.dumps([{"at": "t", "state": "queued", "message": "admitted"}])
    db.execute(
        "INSERT INTO quantum_jobs (id, namespace, state, created_at, idempotency_key, "
        "request_hash, request, num_pubs, seed, timeout_s, events) "
        "VALUES ('qj_old', 'default', 'running', 5.0, 'k', 'h', X'7B7D', 1, 3, 60.0, ?)",
        (events,),
    )
    db.commit()
    db.close()

    async def main() -> None:
        async with SQLiteQuantumJobRepository(path) as repo:
            (row,) = await repo.active()
            assert (row.id, row.state, row.request, row.attempts) == ("qj_old", "running", b"{}", 0)
            assert row.events == orjson.loads(events)
            assert (await repo.by_idempotency_key(NS, "k")) == row
            with pytest.raises(Conflict):
                await repo.insert(job("qj_new", key="k"))
            assert await repo.update("qj_old", state="succeeded", events=[], result=b"{}")

    asyncio.run(main())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT state, result FROM quantum_jobs").fetchall() == [
            ("succeeded", b"{}")
        ]


def test_sqlite_creates_its_file_on_first_use_not_before(tmp_path: Path) -> None:
    # The platform starts the quantum service at boot only when this file exists.
    path = tmp_path / "quantum" / "quantum.db"

    async def main() -> None:
        repo = SQLiteQuantumJobRepository(path)
        assert not path.parent.exists()
        await repo.aclose()  # closing an unopened repository is a no-op
        assert not path.parent.exists()
        assert await repo.get("qj_1") is None
        assert path.exists()
        await repo.insert(job("qj_1"))
        await repo.aclose()
        assert await repo.get("qj_1") == job("qj_1")  # a call after closing opens it again
        await repo.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------- leases
def test_a_lease_is_claimed_once_renewed_by_its_owner_and_free_once_it_runs_out(
    backend: Backend,
) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        await repo.insert(dataclasses.replace(job("qj_1"), owner="a", lease_until=1010.0))
        await repo.insert(job("qj_2", 1001.0))  # nobody's: claimable at once
        got = await repo.get("qj_1")
        assert got is not None
        assert (got.owner, got.lease_until, got.cancel_requested) == ("a", 1010.0, False)
        assert not await repo.claim("qj_1", "b", 1020.0, now=1005.0)  # a's live lease
        assert await repo.claim("qj_1", "a", 1020.0, now=1005.0)  # its own: extended
        assert await repo.claim("qj_2", "b", 1020.0, now=1005.0)
        assert not await repo.claim("qj_2", "c", 1030.0, now=1006.0)
        assert await repo.renew("a", 1040.0) == []
        assert not await repo.claim("qj_1", "b", 1050.0, now=1030.0)  # renewed to 1040
        assert await repo.claim("qj_1", "b", 1050.0, now=1041.0)  # ran out: b takes it
        assert (await repo.get("qj_1")).owner == "b"  # type: ignore[union-attr]
        assert await repo.renew("a", 1060.0) == []  # a holds nothing now
        assert not await repo.claim("nope", "b", 1050.0, now=1041.0)

    run(backend, body)


def test_a_finished_job_is_never_claimed_and_a_cancel_reaches_its_owner(
    backend: Backend,
) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        for i in range(3):
            await repo.insert(
                dataclasses.replace(job(f"qj_{i}", 1000.0 + i), owner="a", lease_until=1010.0)
            )
        assert await repo.update("qj_0", state="succeeded", events=[])
        assert not await repo.claim("qj_0", "b", 2000.0, now=1500.0)
        assert not await repo.request_cancel("qj_0")  # finished: nothing to cancel
        assert not await repo.request_cancel("nope")
        assert await repo.request_cancel("qj_2")
        assert await repo.request_cancel("qj_1")
        assert await repo.renew("a", 1020.0) == ["qj_1", "qj_2"]  # oldest first
        assert (await repo.get("qj_1")).cancel_requested  # type: ignore[union-attr]
        assert [r.cancel_requested for r in await repo.active()] == [True, True]

    run(backend, body)


def test_a_write_fenced_by_a_lease_lands_only_while_the_lease_is_held(
    backend: Backend,
) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        await repo.insert(dataclasses.replace(job("qj_1"), owner="a", lease_until=1010.0))
        running = [{"at": "t1", "state": "running", "message": "on a"}]
        assert await repo.update("qj_1", state="running", events=running, owner="a")
        assert await repo.claim("qj_1", "b", 1050.0, now=1020.0)  # a's lease ran out
        # a, unaware, finishes: fenced off; b's record stands.
        assert not await repo.update("qj_1", state="succeeded", events=[], owner="a")
        got = await repo.get("qj_1")
        assert got is not None
        assert (got.state, got.events, got.owner) == ("running", running, "b")
        assert await repo.update("qj_1", state="succeeded", events=[], owner="b")
        assert await repo.update("qj_2", state="failed", events=[]) is False  # no such job

    run(backend, body)


def test_disowned_jobs_are_claimable_at_once(backend: Backend) -> None:
    async def body(repo: QuantumJobRepository) -> None:
        await repo.insert(dataclasses.replace(job("qj_1"), owner="a", lease_until=5000.0))
        await repo.insert(dataclasses.replace(job("qj_2"), owner="c", lease_until=5000.0))
        await repo.disown("a")
        assert [(r.id, r.owner) for r in await repo.active()] == [("qj_1", None), ("qj_2", "c")]
        assert await repo.claim("qj_1", "b", 1020.0, now=1000.0)
        assert not await repo.claim("qj_2", "b", 1020.0, now=1000.0)

    run(backend, body)


def test_sqlite_adds_the_lease_columns_to_a_quantum_db_made_before_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "quantum.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """CREATE TABLE quantum_jobs (id TEXT PRIMARY KEY, namespace TEXT NOT NULL,
            state TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
            idempotency_key TEXT, request_hash TEXT NOT NULL, request BLOB NOT NULL,
            method TEXT, device TEXT, estimated_bytes INTEGER, num_pubs INTEGER NOT NULL,
            seed INTEGER NOT NULL, timeout_s REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            events BLOB NOT NULL, error BLOB, result BLOB);
            INSERT INTO quantum_jobs (id, namespace, state, created_at, request_hash, request,
            num_pubs, seed, timeout_s, events) VALUES
            ('qj_old', 'default', 'queued', 1.0, 'h', x'7b7d', 1, 7, 30.0, x'5b5d');"""
        )
    db.close()

    async def main() -> None:
        repo = SQLiteQuantumJobRepository(path)
        try:
            (old,) = await repo.active()
            assert (old.id, old.owner, old.cancel_requested) == ("qj_old", None, False)
            assert await repo.claim("qj_old", "b", 20.0, now=10.0)
        finally:
            await repo.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------- PostgreSQL only
def _pg(dsn: str, **kwargs: Any) -> PostgresStore:
    return PostgresStore(dsn, max_size=4, **kwargs)


def test_postgres_inserts_with_one_key_from_two_pools_store_one_job(pg_dsn: str) -> None:
    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            repos = [a.quantum, b.quantum]

            async def attempt(i: int) -> str:
                try:
                    await repos[i % 2].insert(job(f"qj_{i}", key="same"))
                except Conflict as exc:
                    return exc.code
                return "stored"

            for key_round in range(3):
                got = await asyncio.gather(*(attempt(10 * key_round + i) for i in range(8)))
                assert sorted(got) == [CONFLICT_IDEMPOTENCY_KEY] * 7 + ["stored"]
                # Make room for the next round: move the key's holder to another namespace.
                async with a.connection() as conn:
                    await conn.execute("UPDATE quantum_jobs SET namespace = id")
            async with b.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM quantum_jobs")
                assert (await cur.fetchone()) == (3,)

    asyncio.run(main())


def test_postgres_terminal_updates_from_two_pools_let_one_win(pg_dsn: str) -> None:
    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            repos = [a.quantum, b.quantum]
            for n in range(5):
                await a.quantum.insert(job(f"qj_{n}"))
                results = await asyncio.gather(
                    *(
                        repos[i % 2].update(
                            f"qj_{n}", state=TERMINAL[i % 3], events=[{"i": i}], result=b"%d" % i
                        )
                        for i in range(12)
                    )
                )
                assert results.count(True) == 1
                winner = results.index(True)
                got = await b.quantum.get(f"qj_{n}")
                assert got is not None
                assert (got.state, got.events, got.result) == (
                    TERMINAL[winner % 3],
                    [{"i": winner}],
                    b"%d" % winner,
                )

    asyncio.run(main())


def test_postgres_down_is_store_unavailable_then_recovers(
    pg_cluster: PgCluster, pg_dsn: str
) -> None:
    async def main() -> None:
        async with _pg(pg_dsn, timeout=1.0) as store:
            await store.quantum.insert(job("qj_1"))
            pg_cluster.stop_server()
            try:
                began = time.monotonic()
                with pytest.raises(StoreUnavailable) as raised:
                    await store.quantum.active()
                assert time.monotonic() - began < 5
                assert isinstance(raised.value.__cause__, psycopg.OperationalError)
            finally:
                pg_cluster.start_server()
            deadline = time.monotonic() + 15
            while True:
                try:
                    active = await store.quantum.active()
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the store never recovered"
                    await asyncio.sleep(0.1)
            assert ids(active) == ["qj_1"]

    asyncio.run(main())


def test_postgres_orders_ids_by_code_point_whatever_the_collation(pg_dsn: str) -> None:
    # A production database may well have a locale collation (the test cluster's is C).
    async def main() -> None:
        async with _pg(pg_dsn) as store:
            async with store.connection() as conn:
                cur = await conn.execute("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'")
                if await cur.fetchone() is None:
                    pytest.skip("this PostgreSQL has no ICU collations")
                await conn.execute(
                    'ALTER TABLE quantum_jobs ALTER COLUMN id TYPE text COLLATE "und-x-icu"'
                )
            for job_id in ("qj_a", "qj__", "qj_Z"):  # ICU's order: qj__, qj_a, qj_Z
                await store.quantum.insert(job(job_id, 10.0))
            assert ids(await store.quantum.list_jobs(NS, None, 10)) == ["qj_a", "qj__", "qj_Z"]
            assert ids(await store.quantum.active()) == ["qj_Z", "qj__", "qj_a"]

    asyncio.run(main())
