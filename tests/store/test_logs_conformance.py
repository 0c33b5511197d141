"""One behaviour for every `LogRepository`: in memory, SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`). The real
backends seal lines at rest as the platform runs them (an `Encryptor` over one master key);
every `backend.open()` reaches the same database with an Encryptor of its own, as a second
gateway would. PostgreSQL runs on a real cluster (tests/pg.py), never a mock.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from cumulo.security.crypto import CryptoError, Encryptor, MasterKey
from cumulo.store.base import LogRecord
from cumulo.store.logs import LINE_OVERHEAD, LogRepository
from cumulo.store.memory_logs import MemoryLogRepository
from cumulo.store.postgres import PostgresStore
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.sqlite_logs import SQLiteLogRepository
from tests.store.backends import BACKENDS, Backend, make_backend, run

NS, FN = "default", "hello"


def line(
    i: int,
    *,
    function: str = FN,
    namespace: str = NS,
    size: int = 10,
    fields: dict[str, Any] | None = None,
    invocation: str | None = None,
) -> LogRecord:
    """Line `i`: its message starts with i (5 digits) and is `size` + 5 characters long."""
    return LogRecord(
        namespace,
        function,
        1,
        invocation or f"inv{i:05d}",
        float(i),
        "info",
        f"{i:05d}" + "x" * size,
        {} if fields is None else fields,
    )


@asynccontextmanager
async def sqlite_logs(path: Path, master: MasterKey) -> AsyncIterator[SQLiteLogRepository]:
    encryptor = Encryptor(master)
    store = SQLiteStore(path, encryptor=encryptor)
    store.open()
    try:
        await store.call(encryptor.open, store)  # as Platform.start does
        yield SQLiteLogRepository(store)
    finally:
        store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[LogRepository]:
    master = MasterKey(os.urandom(32), "memory")
    return make_backend(
        request,
        tmp_path,
        memory=MemoryLogRepository,
        sqlite=lambda tmp: sqlite_logs(tmp / "cumulo.db", master),
        postgres=lambda store: store.logs(Encryptor(master)),
    )


def messages(rows: list[tuple[int, LogRecord]]) -> list[int]:
    return [int(r.message[:5]) for _, r in rows]


# ---------------------------------------------------------------- append and query
def test_lines_come_back_as_appended_oldest_first_with_increasing_seqs(
    backend: Backend[LogRepository],
) -> None:
    async def body(repo: LogRepository) -> None:
        assert await repo.query(NS, FN) == []
        fields = {"user": "é", "n": 3, "nested": {"ok": True, "list": [1, 2.5, None]}}
        first = [line(1, fields=fields), line(2), line(3, size=0)]
        await repo.append(first)
        await repo.append([line(4), line(5)])
        rows = await repo.query(NS, FN)
        assert [r for _, r in rows] == [*first, line(4), line(5)]
        seqs = [s for s, _ in rows]
        assert seqs == sorted(set(seqs))
        assert all(s > 0 for s in seqs)
        assert rows[0][1].fields == fields

    run(backend, body)


def test_query_returns_the_newest_lines_after_a_seq_oldest_first(
    backend: Backend[LogRepository],
) -> None:
    async def body(repo: LogRepository) -> None:
        await repo.append([line(i) for i in range(10)])
        every = await repo.query(NS, FN, limit=100)
        assert messages(every) == list(range(10))
        assert messages(await repo.query(NS, FN, limit=3)) == [7, 8, 9]
        after = every[4][0]
        assert messages(await repo.query(NS, FN, after_seq=after)) == [5, 6, 7, 8, 9]
        assert messages(await repo.query(NS, FN, after_seq=after, limit=2)) == [8, 9]
        assert await repo.query(NS, FN, after_seq=every[-1][0]) == []

    run(backend, body)


def test_polling_after_the_last_seen_seq_sees_every_line_once(
    backend: Backend[LogRepository],
) -> None:
    async def body(repo: LogRepository) -> None:
        seen: list[int] = []
        last = 0
        for start in range(0, 30, 6):
            await repo.append([line(i) for i in range(start, start + 6)])
            rows = await repo.query(NS, FN, after_seq=last, limit=100)
            seen += messages(rows)
            last = rows[-1][0]
        assert seen == list(range(30))

    run(backend, body)


def test_an_empty_append_does_nothing(backend: Backend[LogRepository]) -> None:
    async def body(repo: LogRepository) -> None:
        await repo.append([line(1)])
        await repo.append([], retain_rows=0, retain_bytes=0)
        assert messages(await repo.query(NS, FN)) == [1]

    run(backend, body)


def test_functions_and_namespaces_keep_their_own_lines(backend: Backend[LogRepository]) -> None:
    async def body(repo: LogRepository) -> None:
        await repo.append(
            [
                line(1),
                line(2, function="other"),
                line(3, namespace="far"),
                line(4),
                line(5, function="other"),
            ]
        )
        assert messages(await repo.query(NS, FN)) == [1, 4]
        assert messages(await repo.query(NS, "other")) == [2, 5]
        assert messages(await repo.query("far", FN)) == [3]
        assert await repo.query("far", "other") == []
        assert (await repo.stats(NS, FN))[0] == 2
        assert (await repo.stats("far", "other")) == (0, 0)

    run(backend, body)


# ---------------------------------------------------------------- stats and trimming
def test_stats_count_lines_and_their_stored_bytes(backend: Backend[LogRepository]) -> None:
    async def body(repo: LogRepository) -> None:
        assert await repo.stats(NS, FN) == (0, 0)
        await repo.append([line(1, size=100)])
        lines, small = await repo.stats(NS, FN)
        assert lines == 1
        assert small >= 105  # at least the message
        await repo.append([line(2, size=1000)])
        lines, both = await repo.stats(NS, FN)
        assert lines == 2
        assert both - small >= 1005

    run(backend, body)


def test_retain_rows_keeps_the_newest_lines_of_each_function_written(
    backend: Backend[LogRepository],
) -> None:
    async def body(repo: LogRepository) -> None:
        await repo.append([line(i, function="quiet") for i in range(5)])
        for start in range(0, 500, 50):
            await repo.append([line(i) for i in range(start, start + 50)], retain_rows=120)
        assert messages(await repo.query(NS, FN, limit=1000)) == list(range(380, 500))
        assert (await repo.stats(NS, FN))[0] == 120
        # A function not written to is not trimmed, even by a tighter cap.
        await repo.append([line(500)], retain_rows=1)
        assert messages(await repo.query(NS, FN, limit=1000)) == [500]
        assert (await repo.stats(NS, "quiet"))[0] == 5
        await repo.append([line(501), line(502)], retain_rows=0)
        assert await repo.stats(NS, FN) == (0, 0)

    run(backend, body)


def test_retain_bytes_keeps_the_longest_newest_run_within_the_budget(
    backend: Backend[LogRepository],
) -> None:
    async def body(repo: LogRepository) -> None:
        budget = 20_000
        # Equal lines (same lengths), so each holds the same stored size.
        await repo.append([line(1000 + i, size=1000) for i in range(50)], retain_bytes=budget)
        lines, stored = await repo.stats(NS, FN)
        per_line = stored // lines
        assert stored == per_line * lines
        assert stored + lines * LINE_OVERHEAD <= budget
        assert (lines + 1) * (per_line + LINE_OVERHEAD) > budget  # one more would not fit
        assert messages(await repo.query(NS, FN, limit=100)) == list(range(1050 - lines, 1050))
        # Later appends trim older lines first, the run stays the newest one.
        await repo.append([line(2000 + i, size=1000) for i in range(3)], retain_bytes=budget)
        assert (await repo.stats(NS, FN)) == (lines, stored)
        kept = messages(await repo.query(NS, FN, limit=100))
        assert kept[-3:] == [2000, 2001, 2002]
        assert kept[0] == 1053 - lines

    run(backend, body)


def test_a_line_over_the_byte_budget_leaves_none(backend: Backend[LogRepository]) -> None:
    async def body(repo: LogRepository) -> None:
        await repo.append([line(1), line(2)])
        await repo.append([line(3, size=5000)], retain_bytes=1000)
        assert await repo.stats(NS, FN) == (0, 0)
        assert await repo.query(NS, FN) == []

    run(backend, body)


def test_both_caps_apply_together(backend: Backend[LogRepository]) -> None:
    async def body(repo: LogRepository) -> None:
        await repo.append([line(i) for i in range(20)], retain_rows=5, retain_bytes=10**6)
        assert messages(await repo.query(NS, FN)) == list(range(15, 20))  # rows bind
        lines, stored = await repo.stats(NS, FN)
        three = 3 * (stored // lines + LINE_OVERHEAD)  # equal lines: room for three
        await repo.append([line(20)], retain_rows=5, retain_bytes=three)
        assert messages(await repo.query(NS, FN)) == [18, 19, 20]  # bytes bind

    run(backend, body)


# ---------------------------------------------------------------- across openings
def test_a_second_opening_reads_the_lines_and_continues_their_seqs(
    backend: Backend[LogRepository],
) -> None:
    async def main() -> None:
        async with backend.open() as first:
            await first.append([line(1, fields={"a": 1}), line(2)])
            last = (await first.query(NS, FN))[-1][0]
        async with backend.open() as second:
            rows = await second.query(NS, FN)
            assert [r for _, r in rows] == [line(1, fields={"a": 1}), line(2)]
            await second.append([line(3)], retain_rows=2)
            rows = await second.query(NS, FN)
            assert messages(rows) == [2, 3]
            assert rows[-1][0] > last

    asyncio.run(main())


def test_concurrent_appends_to_one_function_stay_whole_and_ordered(
    backend: Backend[LogRepository],
) -> None:
    async def body(repo: LogRepository) -> None:
        batches = [
            [line(b * 100 + i, invocation=f"batch{b:02d}") for i in range(5)] for b in range(20)
        ]
        await asyncio.gather(*(repo.append(b, retain_rows=60) for b in batches))
        rows = await repo.query(NS, FN, limit=1000)
        assert len(rows) == 60
        # Each append's lines are consecutive and in their order: 12 whole batches remain.
        got = messages(rows)
        chunks = [got[i : i + 5] for i in range(0, 60, 5)]
        assert all(c == list(range(c[0], c[0] + 5)) and c[0] % 100 == 0 for c in chunks)
        assert len({c[0] for c in chunks}) == 12

    run(backend, body)


# ---------------------------------------------------------------- PostgreSQL only
def _pg(dsn: str) -> PostgresStore:
    return PostgresStore(dsn, max_size=4)


def test_postgres_two_pools_appending_one_function_keep_one_trimmed_sequence(
    pg_dsn: str,
) -> None:
    """Without the per-function lock both transactions trim with only their own lines
    in view and the cap is overshot; with it, exactly the newest `retain` lines remain."""
    master = MasterKey(os.urandom(32), "memory")
    retain, per_append, appends = 50, 7, 40

    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            repos = [a.logs(Encryptor(master)), b.logs(Encryptor(master))]

            async def gateway(g: int) -> None:
                for n in range(appends // 2):
                    tag = f"g{g}-{n:03d}"
                    batch = [
                        line(g * 10_000 + n * 10 + i, invocation=tag) for i in range(per_append)
                    ]
                    await repos[g].append(batch, retain_rows=retain)

            await asyncio.gather(gateway(0), gateway(1))
            for repo in repos:
                rows = await repo.query(NS, FN, limit=1000)
                assert len(rows) == retain
                assert (await repo.stats(NS, FN))[0] == retain
                seqs = [s for s, _ in rows]
                total = appends * per_append
                # Seqs are handed out under the lock: the kept ones are the newest `retain`.
                assert seqs == list(range(total - retain + 1, total + 1))
                # Each append's lines are consecutive and in order.
                for i in range(1, len(rows)):
                    prev, cur = rows[i - 1][1], rows[i][1]
                    if prev.invocation_id == cur.invocation_id:
                        assert int(cur.message[:5]) == int(prev.message[:5]) + 1

    asyncio.run(main())


def test_postgres_a_follower_polling_during_two_pools_appends_misses_nothing(
    pg_dsn: str,
) -> None:
    master = MasterKey(os.urandom(32), "memory")

    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b, _pg(pg_dsn) as c:
            writers = [a.logs(Encryptor(master)), b.logs(Encryptor(master))]
            reader = c.logs(Encryptor(master))
            done = asyncio.Event()

            async def writer(g: int, w: int) -> None:
                for n in range(30):
                    base = g * 10_000 + w * 1000 + n * 10
                    await writers[g].append([line(base + i) for i in range(3)])

            async def gateway(g: int) -> None:
                # Several appends in flight per gateway (its pool has 4 connections).
                await asyncio.gather(*(writer(g, w) for w in range(4)))

            async def follow() -> list[int]:
                seen: list[int] = []
                last = 0
                while True:
                    finished = done.is_set()
                    rows = await reader.query(NS, FN, after_seq=last, limit=10_000)
                    if rows:
                        last = rows[-1][0]
                        seen += messages(rows)
                    if finished:
                        return seen
                    await asyncio.sleep(0.001)

            follower = asyncio.create_task(follow())
            await asyncio.gather(gateway(0), gateway(1))
            done.set()
            seen = await follower
            expected = [
                g * 10_000 + w * 1000 + n * 10 + i
                for g in range(2)
                for w in range(4)
                for n in range(30)
                for i in range(3)
            ]
            assert len(seen) == len(set(seen))  # nothing twice
            assert sorted(seen) == sorted(expected)  # nothing missed

    asyncio.run(main())


def test_postgres_rows_hold_no_plaintext_and_do_not_open_elsewhere(pg_dsn: str) -> None:
    master = MasterKey(os.urandom(32), "memory")
    canary = "canary-line-4d2e"

    async def main() -> None:
        async with _pg(pg_dsn) as store:
            repo = store.logs(Encryptor(master))
            await repo.append([line(1, fields={"secret": f"{canary}-field"})])
            await repo.append([LogRecord(NS, FN, 2, "i2", 1.0, "error", canary, {})])
            async with store.connection() as conn:
                cur = await conn.execute("SELECT * FROM logs")
                rows = await cur.fetchall()
            dump = repr(rows).encode() + b"".join(
                bytes(c) for r in rows for c in r if isinstance(c, (bytes, memoryview))
            )
            assert len(rows) == 2
            assert b"canary" not in dump
            # A row moved to another function (or version) no longer opens.
            async with store.connection() as conn:
                await conn.execute("UPDATE logs SET function = 'thief' WHERE version = 2")
            with pytest.raises(CryptoError):
                await repo.query(NS, "thief")
            # Under another master nothing opens.
            with pytest.raises(CryptoError):
                await store.logs(Encryptor(MasterKey(os.urandom(32), "memory"))).query(NS, FN)

    asyncio.run(main())


def test_postgres_loads_a_data_key_version_created_after_it_started(pg_dsn: str) -> None:
    master = MasterKey(os.urandom(32), "memory")

    async def main() -> None:
        async with _pg(pg_dsn) as a, _pg(pg_dsn) as b:
            old = a.logs(Encryptor(master))
            await old.append([line(1)])
            # Another gateway's rotation: version 2 appears; a new gateway writes under it.
            wrapped = master.wrap(os.urandom(32), NS, 2)
            async with b.connection() as conn:
                await conn.execute(
                    "INSERT INTO data_keys VALUES (%s, 2, %s, %s, 0)", (NS, master.key_id, wrapped)
                )
            await b.logs(Encryptor(master)).append([line(2)])
            assert messages(await old.query(NS, FN)) == [1, 2]

    asyncio.run(main())


def test_sqlite_sealed_lines_open_on_postgres_with_the_same_stored_sizes(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Same master and same data keys (copied from SQLite, as a migration would): SQLite's
    sealed rows open on PostgreSQL unchanged, and count the same bytes there."""
    master = MasterKey(os.urandom(32), "memory")
    lines = [line(1, fields={"k": [1, "two"]}), line(2, size=500), line(3, size=0)]

    async def main() -> None:
        async with sqlite_logs(tmp_path / "cumulo.db", master) as lite:
            await lite.append(lines)
            lite_stats = await lite.stats(NS, FN)
            db = lite.store.db
            data_keys = db.execute("SELECT * FROM data_keys").fetchall()
            rows = db.execute(
                "SELECT namespace, function, seq, version, invocation_id, ts, level, message "
                "FROM logs"
            ).fetchall()
        async with _pg(pg_dsn) as store:
            async with store.connection() as conn:
                for r in data_keys:
                    await conn.execute("INSERT INTO data_keys VALUES (%s,%s,%s,%s,%s)", r)
                for r in rows:
                    await conn.execute("INSERT INTO logs VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", r)
            repo = store.logs(Encryptor(master))
            assert [r for _, r in await repo.query(NS, FN)] == lines
            assert await repo.stats(NS, FN) == lite_stats

    asyncio.run(main())
