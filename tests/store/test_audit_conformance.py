"""One behaviour for every `AuditRepository`: in memory, SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`). A backend
is opened with `backend.open()`; every opening reaches the same database, as a second
gateway would. The chains here are built by a plain test link (hashes of their own, a dummy
MAC): the repository stores and orders rows, the security room gives them their meaning.
The PostgreSQL-only cases at the end run two real `AuditLog`s (two pools, two gateways)
against one chain. PostgreSQL runs on a real cluster (tests/pg.py), never a mock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from cumulo.errors import Conflict
from cumulo.security.audit import AuditLog
from cumulo.security.crypto import Encryptor, MasterKey
from cumulo.store.audit import REGISTRY, AuditHeadRecord, AuditRepository, AuditRowRecord
from cumulo.store.memory_audit import MemoryAuditRepository
from cumulo.store.postgres import PostgresStore
from cumulo.store.postgres_audit import PostgresAuditRepository
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.sqlite_audit import SQLiteAuditRepository
from tests.store.backends import BACKENDS, Backend, make_backend, run

GENESIS = b"\x00" * 32

Heads = dict[str, AuditHeadRecord]
Result = tuple[list[AuditRowRecord], list[AuditHeadRecord]]


@asynccontextmanager
async def _sqlite(tmp: Path) -> AsyncIterator[AuditRepository]:
    store = SQLiteStore(tmp / "cumulo.db")
    store.open()
    try:
        yield SQLiteAuditRepository(store)
    finally:
        store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[AuditRepository]:
    return make_backend(
        request,
        tmp_path,
        memory=MemoryAuditRepository,
        sqlite=_sqlite,
        postgres=lambda store: store.audit,
    )


def digest(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


class Link:
    """A test chain link: one row per namespace in `batch`, chained onto the heads it is
    given, and the registry counting chains that start. Remembers the heads it saw."""

    def __init__(self, batch: Sequence[str], *, actor: str = "key_test", ts: float = 1.5) -> None:
        self.batch = list(batch)
        self.actor = actor
        self.ts = ts
        self.seen: list[Heads] = []

    def __call__(self, given: Mapping[str, AuditHeadRecord]) -> Result:
        self.seen.append(dict(given))
        heads = dict(given)
        rows = []
        for ns in self.batch:
            head = heads.get(ns)
            seq, prev = (head.seq + 1, head.hash) if head is not None else (1, GENESIS)
            row = AuditRowRecord(
                ns, seq, self.ts, self.actor, "secret.set", "NAME", "ok", "::1", "{}", prev, b""
            )
            row = dataclasses.replace(row, hash=digest(prev, ns, seq, self.actor))
            rows.append(row)
            heads[ns] = AuditHeadRecord(ns, seq, row.hash, b"mac")
        written = [heads[ns] for ns in dict.fromkeys(self.batch)]
        started = [ns for ns in dict.fromkeys(self.batch) if ns not in given]
        if started:
            old = given.get(REGISTRY)
            count = (old.seq if old is not None else 0) + len(started)
            names = sorted(n for n in heads if n != REGISTRY)
            written.append(AuditHeadRecord(REGISTRY, count, digest(*names), b"mac"))
        return rows, written


async def append(repo: AuditRepository, *batch: str) -> Link:
    link = Link(batch)
    await repo.append(batch, link)
    return link


async def chain(repo: AuditRepository, namespace: str) -> list[AuditRowRecord]:
    async with repo.snapshot() as view:
        rows: list[AuditRowRecord] = []
        while page := await view.rows(namespace, rows[-1].seq if rows else 0, 7):
            rows += page
        return rows


def assert_one_chain(rows: list[AuditRowRecord], head: AuditHeadRecord | None) -> None:
    """Seqs 1..n with no gap or fork, each row linked to the one before, the head on top."""
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    prev = GENESIS
    for row in rows:
        assert row.prev_hash == prev, row.seq
        prev = row.hash
    assert head is not None
    assert (head.seq, head.hash) == (len(rows), prev)


async def heads_of(repo: AuditRepository) -> Heads:
    async with repo.snapshot() as view:
        return await view.heads()


# ---------------------------------------------------------------- appending
def test_an_empty_log_has_no_heads_rows_or_pages(backend: Backend[AuditRepository]) -> None:
    async def body(repo: AuditRepository) -> None:
        async with repo.snapshot() as view:
            assert await view.heads() == {}
            assert await view.namespaces() == []
            assert await view.rows("a", 0, 10) == []
            assert await view.seq_of_hash("a", b"\x01" * 32) is None
        assert await repo.page("a", None, 10) == []

    run(backend, body)


def test_a_chain_starts_at_seq_1_and_its_head_names_the_newest_row(
    backend: Backend[AuditRepository],
) -> None:
    async def body(repo: AuditRepository) -> None:
        link = Link(["a", "a", "a"])
        done = await repo.append(["a"], link)
        assert link.seen == [done.before]
        assert "a" not in done.before
        rows = await chain(repo, "a")
        assert_one_chain(rows, done.after["a"])
        assert len(rows) == 3
        heads = await heads_of(repo)
        assert heads["a"] == done.after["a"]
        assert heads[REGISTRY] == done.after[REGISTRY]
        assert heads[REGISTRY].seq == 1
        async with repo.snapshot() as view:
            assert await view.namespaces() == ["a"]
            assert await view.seq_of_hash("a", rows[1].hash) == 2
            assert await view.seq_of_hash("b", rows[1].hash) is None

    run(backend, body)


def test_an_append_continues_from_the_head_read_inside_the_step(
    backend: Backend[AuditRepository],
) -> None:
    async def body(repo: AuditRepository) -> None:
        first = await append(repo, "a", "a")
        second = Link(["a", "a"])
        done = await repo.append(["a"], second)
        assert second.seen[0]["a"].seq == 2
        assert done.before["a"].seq == 2
        assert done.after["a"].seq == 4
        assert first.seen[0].get("a") is None
        rows = await chain(repo, "a")
        assert_one_chain(rows, (await heads_of(repo))["a"])
        assert len(rows) == 4

    run(backend, body)


def test_a_chain_that_starts_is_given_every_head_and_the_registry(
    backend: Backend[AuditRepository],
) -> None:
    async def body(repo: AuditRepository) -> None:
        await append(repo, "a")
        await append(repo, "b", "b")
        link = await append(repo, "a", "c")
        assert {"a", "b", REGISTRY} <= set(link.seen[0])
        assert link.seen[0][REGISTRY].seq == 2
        heads = await heads_of(repo)
        assert heads[REGISTRY].seq == 3
        assert heads[REGISTRY].hash == digest("a", "b", "c")
        # An append that starts nothing is given (at least) its own chains' heads.
        link = await append(repo, "b")
        assert link.seen[0]["b"].seq == 2

    run(backend, body)


def test_rows_come_oldest_first_and_pages_newest_first(
    backend: Backend[AuditRepository],
) -> None:
    async def body(repo: AuditRepository) -> None:
        await append(repo, *["a"] * 12)
        await append(repo, "é", "B")
        async with repo.snapshot() as view:
            assert [r.seq for r in await view.rows("a", 3, 4)] == [4, 5, 6, 7]
            assert [r.seq for r in await view.rows("a", 10, 100)] == [11, 12]
            assert await view.rows("a", 12, 10) == []
            assert await view.namespaces() == ["B", "a", "é"]  # code-point order
        assert [r.seq for r in await repo.page("a", None, 5)] == [12, 11, 10, 9, 8]
        assert [r.seq for r in await repo.page("a", 8, 5)] == [7, 6, 5, 4, 3]
        assert [r.seq for r in await repo.page("a", 3, 5)] == [2, 1]
        assert await repo.page("a", 1, 5) == []
        assert [r.namespace for r in await repo.page("é", None, 5)] == ["é"]

    run(backend, body)


def test_rows_and_heads_come_back_as_written(backend: Backend[AuditRepository]) -> None:
    async def body(repo: AuditRepository) -> None:
        def link(heads: Mapping[str, AuditHeadRecord]) -> Result:
            row = AuditRowRecord(
                "ns-ü",
                1,
                1_700_000_000.123456,
                "key_0123456789ab",
                "key.create",
                "ünïcode ☃ target",
                "403",
                "10.0.0.1",
                '{"a":[1,2.5,null],"k":"v"}',
                bytes(range(32)),
                bytes(range(32, 64)),
            )
            return [row], [
                AuditHeadRecord("ns-ü", 1, row.hash, bytes(range(64, 96))),
                AuditHeadRecord(REGISTRY, 1, b"\xff" * 32, b"\x00" * 32),
            ]

        done = await repo.append(["ns-ü"], link)
        rows = await chain(repo, "ns-ü")
        assert rows == link({})[0]
        assert await repo.page("ns-ü", None, 1) == rows
        assert await heads_of(repo) == {h.namespace: h for h in link({})[1]}
        assert done.after == await heads_of(repo)

    run(backend, body)


# ---------------------------------------------------------------- refusals
def test_a_link_that_raises_writes_nothing(backend: Backend[AuditRepository]) -> None:
    async def body(repo: AuditRepository) -> None:
        await append(repo, "a")

        def failing(heads: Mapping[str, AuditHeadRecord]) -> Result:
            raise RuntimeError("the master key went away")

        with pytest.raises(RuntimeError):
            await repo.append(["a", "b"], failing)
        assert len(await chain(repo, "a")) == 1
        assert await chain(repo, "b") == []
        assert (await heads_of(repo))["a"].seq == 1
        await append(repo, "a")  # the chains are not held after a failed append
        assert len(await chain(repo, "a")) == 2

    run(backend, body)


def _gap(rows: list[AuditRowRecord], heads: list[AuditHeadRecord]) -> Result:
    row = dataclasses.replace(rows[0], seq=rows[0].seq + 1)
    return [row], [dataclasses.replace(heads[0], seq=row.seq)]


def _unlinked(rows: list[AuditRowRecord], heads: list[AuditHeadRecord]) -> Result:
    return [dataclasses.replace(rows[0], prev_hash=b"\x07" * 32)], heads


def _fork(rows: list[AuditRowRecord], heads: list[AuditHeadRecord]) -> Result:
    return [rows[0], rows[0]], heads


def _foreign(rows: list[AuditRowRecord], heads: list[AuditHeadRecord]) -> Result:
    other = dataclasses.replace(rows[0], namespace="z", seq=1)
    return [*rows, other], [*heads, AuditHeadRecord("z", 1, other.hash, b"mac")]


def _stale_head(rows: list[AuditRowRecord], heads: list[AuditHeadRecord]) -> Result:
    return rows, [dataclasses.replace(heads[0], seq=heads[0].seq - 1)]


def _no_head(rows: list[AuditRowRecord], heads: list[AuditHeadRecord]) -> Result:
    return rows, []


def _head_without_rows(rows: list[AuditRowRecord], heads: list[AuditHeadRecord]) -> Result:
    return [], heads


def _registry(rows: list[AuditRowRecord], heads: list[AuditHeadRecord]) -> Result:
    return rows, [*heads, AuditHeadRecord(REGISTRY, 9, b"\x09" * 32, b"mac")]


def _two_heads(rows: list[AuditRowRecord], heads: list[AuditHeadRecord]) -> Result:
    return rows, [heads[0], heads[0]]


@pytest.mark.parametrize(
    ("breakage", "why"),
    [
        (_gap, "row 4 where 3 comes next"),
        (_unlinked, "does not chain to row 2"),
        (_fork, "row 3 where 4 comes next"),
        (_foreign, "did not name"),
        (_stale_head, "not its newest row"),
        (_no_head, "without moving its head"),
        (_head_without_rows, "without a row appended"),
        (_registry, "only by an append that starts a chain"),
        (_two_heads, "two heads"),
    ],
)
def test_a_link_that_does_not_continue_the_chain_is_refused(
    backend: Backend[AuditRepository],
    breakage: Callable[[list[AuditRowRecord], list[AuditHeadRecord]], Result],
    why: str,
) -> None:
    async def body(repo: AuditRepository) -> None:
        await append(repo, "a", "a")
        before_rows, before_heads = await chain(repo, "a"), await heads_of(repo)

        def broken(heads: Mapping[str, AuditHeadRecord]) -> Result:
            return breakage(*Link(["a"])(heads))

        with pytest.raises(ValueError, match=why):
            await repo.append(["a"], broken)
        assert await chain(repo, "a") == before_rows
        assert await chain(repo, "z") == []
        assert await heads_of(repo) == before_heads

    run(backend, body)


@pytest.mark.parametrize("names", [[], [REGISTRY], ["a", REGISTRY]])
def test_an_append_names_chains_and_never_the_registry(
    backend: Backend[AuditRepository], names: list[str]
) -> None:
    async def body(repo: AuditRepository) -> None:
        with pytest.raises(ValueError, match=r"at least one namespace|registry is not a chain"):
            await repo.append(names, Link(names))
        assert await heads_of(repo) == {}

    run(backend, body)


def test_rows_added_behind_the_log_make_the_next_append_a_conflict(
    backend: Backend[AuditRepository],
) -> None:
    if backend.name == "memory":
        pytest.skip("nothing can write behind the fake's back")

    async def body(repo: AuditRepository) -> None:
        await append(repo, "a")
        stray = dataclasses.replace((await chain(repo, "a"))[0], seq=2, actor="key_mallory")
        values = (
            stray.namespace,
            stray.seq,
            stray.ts,
            stray.actor,
            stray.action,
            stray.target,
            stray.result,
            stray.source,
            stray.details,
            stray.prev_hash,
            stray.hash,
        )
        if isinstance(repo, SQLiteAuditRepository):
            with sqlite3.connect(repo.store.path) as db:
                db.execute("INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?,?)", values)
        else:
            assert isinstance(repo, PostgresAuditRepository)
            async with repo.store.connection() as conn:
                await conn.execute(
                    "INSERT INTO audit_log VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", values
                )
        with pytest.raises(Conflict):
            await append(repo, "a", "b")
        heads = await heads_of(repo)
        assert heads["a"].seq == 1
        assert "b" not in heads
        assert [r.actor for r in await chain(repo, "a")] == ["key_test", "key_mallory"]

    run(backend, body)


# ---------------------------------------------------------------- concurrency
def test_concurrent_appends_on_one_opening_make_one_chain(
    backend: Backend[AuditRepository],
) -> None:
    async def body(repo: AuditRepository) -> None:
        await asyncio.gather(*(append(repo, *["a"] * (1 + i % 3), "b") for i in range(20)))
        heads = await heads_of(repo)
        assert_one_chain(await chain(repo, "a"), heads["a"])
        assert_one_chain(await chain(repo, "b"), heads["b"])
        assert heads["a"].seq == sum(1 + i % 3 for i in range(20))
        assert heads[REGISTRY].seq == 2

    run(backend, body)


def test_two_gateways_appending_at_once_make_one_chain_per_namespace(
    backend: Backend[AuditRepository],
) -> None:
    async def gateway(name: str) -> None:
        async with backend.open() as repo:
            # Batches name their chains in both orders, and some start chains of their own.
            batches = [["a", "b"], ["b", "a", "a"]] + [[f"{name}-{i}", "a"] for i in range(2)]
            batches += [[f"{name}-solo-{i}"] for i in range(6)]
            await asyncio.gather(
                *(append(repo, *batch) for _ in range(8) for batch in batches[:2]),
                *(append(repo, *batch) for batch in batches[2:]),
            )

    async def main() -> None:
        await asyncio.gather(gateway("g1"), gateway("g2"))
        async with backend.open() as repo:
            heads = await heads_of(repo)
            for ns in ["a", "b", "g1-0", "g1-1", "g2-0", "g2-1", "g1-solo-5", "g2-solo-5"]:
                assert_one_chain(await chain(repo, ns), heads[ns])
            assert heads["a"].seq == 2 * (8 * 3 + 2)
            assert heads["b"].seq == 2 * 8 * 2
            # Every chain started was counted, the ones started at the same time too.
            assert heads[REGISTRY].seq == 6 + 12
            assert heads[REGISTRY].hash == digest(*sorted(n for n in heads if n != REGISTRY))

    asyncio.run(main())


def test_a_snapshot_does_not_see_an_append_that_lands_while_it_is_open(
    backend: Backend[AuditRepository],
) -> None:
    async def body(repo: AuditRepository) -> None:
        await append(repo, "a", "a")
        async with repo.snapshot() as view:
            heads = await view.heads()
            # Another append, started now: it waits for the snapshot or commits beside it,
            # and is not seen either way.
            late = asyncio.get_running_loop().create_task(append(repo, "a", "b"))
            await asyncio.sleep(0.1)
            assert [r.seq for r in await view.rows("a", 0, 10)] == [1, 2]
            assert await view.namespaces() == ["a"]
            assert await view.heads() == heads
        await late
        assert len(await chain(repo, "a")) == 3

    run(backend, body)


# ---------------------------------------------------------------- PostgreSQL only
def test_postgres_two_audit_logs_appending_200_events_each_keep_one_verifiable_chain(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Two gateways (two pools, two AuditLogs, their own anchors) record into one namespace
    at once, flushing small batches: one chain, seqs 1..400, that every gateway verifies."""
    master = MasterKey(os.urandom(32), "memory")

    async def gateway(store: PostgresStore, name: str) -> AuditLog:
        log = AuditLog(store.audit, Encryptor(master), anchor_path=tmp_path / f"{name}.anchor")
        for i in range(200):
            log.record("shared", f"key_{name}", "secret.set", f"{name}-{i}", "ok", "::1")
            if i % 3 == 0:
                log.record(f"own-{name}", f"key_{name}", "function.deploy", str(i))
            if i % 5 == 4:
                await log.flush()
                await asyncio.sleep(0)
        await log.flush()
        return log

    async def main() -> None:
        async with (
            PostgresStore(pg_dsn, max_size=4) as one,
            PostgresStore(pg_dsn, max_size=4) as two,
        ):
            logs = await asyncio.gather(gateway(one, "g1"), gateway(two, "g2"))
            for log in logs:
                report = await log.verify()
                assert report.ok, report.first_problem()
                assert {c.namespace: c.rows for c in report.chains} == {
                    "shared": 400,
                    "own-g1": 67,
                    "own-g2": 67,
                }
            rows = await chain(one.audit, "shared")
            assert [r.seq for r in rows] == list(range(1, 401))
            for name in ["g1", "g2"]:
                # Each gateway's events keep the order it recorded them in.
                mine = [int(r.target.split("-")[1]) for r in rows if r.actor == f"key_{name}"]
                assert mine == list(range(200))

    asyncio.run(main())


def test_postgres_two_audit_logs_starting_chains_at_once_both_count_them(
    pg_dsn: str,
) -> None:
    master = MasterKey(os.urandom(32), "memory")

    async def gateway(store: PostgresStore, name: str) -> AuditLog:
        log = AuditLog(store.audit, Encryptor(master))
        for i in range(20):
            # A batch that only starts a chain: nothing but the registry is shared.
            log.record(f"{name}-{i}", None, "auth.failure", "/v1/keys", 401)
            await log.flush()
        return log

    async def main() -> None:
        async with (
            PostgresStore(pg_dsn, max_size=4) as one,
            PostgresStore(pg_dsn, max_size=4) as two,
        ):
            logs = await asyncio.gather(gateway(one, "g1"), gateway(two, "g2"))
            report = await logs[0].verify()
            assert report.ok, report.first_problem()
            assert len(report.chains) == 40
            assert (await heads_of(one.audit))[REGISTRY].seq == 40

    asyncio.run(main())


def test_postgres_migration_9_makes_the_audit_tables(pg_dsn: str) -> None:
    async def main() -> None:
        async with PostgresStore(pg_dsn) as store:
            assert await store.schema_version() >= 9
            async with store.connection() as conn:
                cur = await conn.execute(
                    "SELECT description FROM schema_migrations WHERE version = 9"
                )
                row = await cur.fetchone()
                assert row is not None
                assert "audit" in row[0]
                cur = await conn.execute(
                    "SELECT to_regclass('audit_log') IS NOT NULL, "
                    "to_regclass('audit_heads') IS NOT NULL"
                )
                assert await cur.fetchone() == (True, True)
        async with PostgresStore(pg_dsn) as again:  # a second gateway: nothing to apply
            assert await again.migrate() == []

    asyncio.run(main())
