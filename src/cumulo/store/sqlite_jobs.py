"""`JobQueueRepository` in the platform's SQLite file: the embedded backend and the reference.

`SQLiteJobQueue` is the blocking queue (the code the events service ran before the seam,
moved here unchanged): methods on one connection, called from one thread at a time, every
time passed in. `SQLiteJobQueueRepository` owns that connection and its thread
(`DbThread`) and offers the async interface over them.

Concurrency: several gateways on one file serialise on SQLite's write lock. Every write is
a `BEGIN IMMEDIATE` transaction, and a claim is one `UPDATE … RETURNING` over the due rows,
so two claimers never take the same lease (the PostgreSQL backend adds `FOR UPDATE SKIP
LOCKED` to the same statement).

At rest (with a cipher, i.e. on the platform): a job's body, result and error are sealed
under the namespace data key, bound to (namespace, function, job id), so a row's payload
cannot be moved to another job, function or namespace (cumulo.store.sealing). Its
Idempotency-Key request hash is keyed (HMAC under the namespace's index key). Ids,
function names, statuses, counts and times stay in clear: the queue is scheduled by them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import orjson

from cumulo.store.jobs import (
    DEAD_LETTER_STATUSES,
    FIRE_HISTORY,
    MAX_INTERRUPTIONS,
    QUEUED,
    STATUSES,
    Claimed,
    Enqueued,
    JobQueueRepository,
    JobView,
    NewJob,
    NotDeadLetter,
    Outcome,
    Schedule,
    SubjectJob,
    interrupted_error,
    request_hash,
)
from cumulo.store.sealing import Cipher, RowSealer

if TYPE_CHECKING:
    from cumulo.store.sqlite_topics import SQLiteTopicRepository

P = ParamSpec("P")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS event_jobs (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    source TEXT NOT NULL,
    body BLOB NOT NULL,
    idempotency_key TEXT,
    request_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    visible_at REAL NOT NULL,
    lease_owner TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    interruptions INTEGER NOT NULL DEFAULT 0,
    replays INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    result_status INTEGER,
    result BLOB,
    error TEXT
);
CREATE INDEX IF NOT EXISTS event_jobs_due ON event_jobs (visible_at)
    WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS event_jobs_owner ON event_jobs (lease_owner)
    WHERE status = 'running';
CREATE INDEX IF NOT EXISTS event_jobs_dead ON event_jobs (namespace, id)
    WHERE status IN ('failed', 'dead');
CREATE INDEX IF NOT EXISTS event_jobs_finished ON event_jobs (finished_at)
    WHERE status IN ('succeeded', 'failed');
CREATE UNIQUE INDEX IF NOT EXISTS event_jobs_idempotency ON event_jobs (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS event_schedules (
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    cron TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (namespace, function, cron)
);
CREATE TABLE IF NOT EXISTS event_schedule_fires (
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    cron TEXT NOT NULL,
    slot REAL NOT NULL,
    job_id TEXT NOT NULL,
    fired_at REAL NOT NULL,
    PRIMARY KEY (namespace, function, cron, slot)
);
"""

_VIEW_COLUMNS = (
    "id, namespace, function, source, status, attempts, max_attempts, deliveries, replays, "
    "created_at, updated_at, finished_at, visible_at, result_status, error"
)


# Written only when tracing is on: a platform that does not trace never creates it.
TRACES_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_job_traces (
    id TEXT PRIMARY KEY,
    traceparent TEXT NOT NULL,
    tracestate TEXT
)
"""


class DbThread:
    """One thread owns a connection; callers `await db.call(fn, ...)`."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cumulo-events-db")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _view(row: Sequence[Any], result: bytes | None) -> JobView:
    status = row[4]
    return JobView(
        id=row[0],
        namespace=row[1],
        function=row[2],
        source=row[3],
        status=status,
        attempts=row[5],
        max_attempts=row[6],
        deliveries=row[7],
        replays=row[8],
        created_at=row[9],
        updated_at=row[10],
        finished_at=row[11],
        next_attempt_at=row[12] if status == QUEUED else None,
        result_status=row[13],
        result=result,
        error=orjson.loads(row[14]) if row[14] is not None else None,
    )


class SQLiteJobQueue:
    """The blocking queue on its own connection (see the module doc)."""

    def __init__(self, path: Path, cipher: Cipher | None = None) -> None:
        # Its own connection to the platform's database file: WAL lets the platform's store
        # read while we write, and busy_timeout makes either writer wait for the other's
        # (short) transaction instead of failing with "database is locked".
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._tx():
            # executescript would COMMIT on its own; run the schema statements one by one so
            # that two processes creating it at once serialise on the write lock.
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
        self._sealer = RowSealer(cipher, self._db) if cipher is not None else None
        self._traces_ready = False

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> _Immediate:
        return _Immediate(self._db)

    # For tables that live beside the queue (topics): their writes and job inserts share one
    # transaction on this connection, so a crash never commits one without the other.
    @property
    def connection(self) -> sqlite3.Connection:
        return self._db

    def transaction(self) -> _Immediate:
        return self._tx()

    def insert(self, job: NewJob, now: float) -> Enqueued:
        """Insert one job inside the caller's `transaction()` (`prepare` its namespace
        before opening that)."""
        return self._insert(job, now)

    def prepare(self, namespaces: Iterable[str]) -> None:
        """Make sure each namespace has a data key; outside any transaction."""
        if self._sealer is not None:
            for namespace in set(namespaces):
                self._sealer.prepare(namespace)

    def _seal(self, ns: str, purpose: str, function: str, job_id: str, data: bytes) -> bytes:
        if self._sealer is None:
            return data
        return self._sealer.seal(ns, purpose, (function, job_id), data)

    def _open(
        self, ns: str, purpose: str, function: str, job_id: str, blob: bytes | str | None
    ) -> Any:
        if self._sealer is None or not isinstance(blob, bytes):
            return blob
        return self._sealer.open(ns, purpose, (function, job_id), blob)

    def _request_hash(self, job: NewJob) -> str:
        if self._sealer is None:
            return request_hash(job.function, job.body)
        # Keyed: the stored hash confirms no guess of the body without the namespace key.
        digest = hashlib.sha256(job.body).hexdigest()
        return self._sealer.keyed_hash(job.namespace, "job-request", job.function, digest)

    # ------------------------------------------------------------ enqueue
    def enqueue(self, jobs: Iterable[NewJob], now: float) -> list[Enqueued]:
        """Insert jobs in one transaction (a group commit); an Idempotency-Key already held
        in the namespace answers with the earlier job instead."""
        outcomes = []
        jobs = list(jobs)
        self.prepare(job.namespace for job in jobs)
        with self._tx():
            for job in jobs:
                outcomes.append(self._insert(job, now))
        return outcomes

    def _insert(self, job: NewJob, now: float) -> Enqueued:
        digest = self._request_hash(job)
        cursor = self._db.execute(
            "INSERT INTO event_jobs (id, namespace, function, source, body, idempotency_key,"
            " request_hash, status, visible_at, max_attempts, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)"
            " ON CONFLICT (namespace, idempotency_key) WHERE idempotency_key IS NOT NULL"
            " DO NOTHING",
            (
                job.id,
                job.namespace,
                job.function,
                job.source,
                self._seal(job.namespace, "job-body", job.function, job.id, job.body),
                job.idempotency_key,
                digest,
                now,
                job.max_attempts,
                now,
                now,
            ),
        )
        if cursor.rowcount == 1:
            return Enqueued(job.id, created=True)
        row = self._db.execute(
            "SELECT id, request_hash FROM event_jobs WHERE namespace = ? AND idempotency_key = ?",
            (job.namespace, job.idempotency_key),
        ).fetchone()
        if row is None:  # only an id collision gets here: 40 random bits in the same µs
            raise sqlite3.IntegrityError(f"job id {job.id} already exists")
        return Enqueued(row[0], created=False, conflict=row[1] != digest)

    # ------------------------------------------------------------ claim and lease
    def claim(self, owner: str, limit: int, now: float, lease_s: float) -> list[Claimed]:
        """Take up to `limit` due jobs: queued ones whose time has come, and running ones
        whose lease ran out (their claimer died). A re-delivery after a lost lease does not
        use up an attempt (the platform failed, not the function) but counts an interruption."""
        if limit <= 0:
            return []
        with self._tx():
            # A job that took its gateway down again and again: stop feeding it to gateways.
            # (The lease that just ran out is the interruption not yet counted.)
            self._db.execute(
                "UPDATE event_jobs SET status = 'dead', lease_owner = NULL, updated_at = ?1,"
                " finished_at = ?1, error = ?2"
                " WHERE status = 'running' AND visible_at <= ?1 AND interruptions + 1 >= ?3",
                (now, orjson.dumps(interrupted_error()).decode(), MAX_INTERRUPTIONS),
            )
            # One statement: the subquery picks, the UPDATE takes. On PostgreSQL the subquery
            # gets FOR UPDATE SKIP LOCKED so concurrent claimers pass over each other's rows.
            rows = self._db.execute(
                "UPDATE event_jobs SET"
                " attempts = attempts + (status = 'queued'),"
                " interruptions = interruptions + (status = 'running'),"
                " deliveries = deliveries + 1,"
                " status = 'running', lease_owner = ?1, visible_at = ?2, updated_at = ?3"
                " WHERE id IN (SELECT id FROM event_jobs"
                "   WHERE status IN ('queued', 'running') AND visible_at <= ?3"
                "   ORDER BY visible_at, id LIMIT ?4)"
                " RETURNING id, namespace, function, body, attempts, max_attempts, deliveries",
                (owner, now + lease_s, now, limit),
            ).fetchall()
        return [
            Claimed(r[0], r[1], r[2], self._open(r[1], "job-body", r[2], r[0], r[3]), *r[4:])
            for r in sorted(rows)
        ]

    def extend(self, owner: str, until: float) -> int:
        """Heartbeat: push the lease of every job `owner` is running out to `until`."""
        with self._tx():
            return self._db.execute(
                "UPDATE event_jobs SET visible_at = ? WHERE status = 'running' AND lease_owner = ?",
                (until, owner),
            ).rowcount

    def release(self, owner: str, ids: Iterable[tuple[str, int]], now: float) -> int:
        """Give claimed jobs back unfinished (a graceful stop): due now, attempt not counted."""
        released = 0
        with self._tx():
            for job_id, deliveries in ids:
                released += self._db.execute(
                    "UPDATE event_jobs SET status = 'queued', attempts = attempts - 1,"
                    " lease_owner = NULL, visible_at = ?, updated_at = ?"
                    " WHERE id = ? AND status = 'running' AND lease_owner = ? AND deliveries = ?",
                    (now, now, job_id, owner, deliveries),
                ).rowcount
        return released

    def expire_leases(self, owners: Iterable[str], now: float) -> int:
        """End the leases of claimers known to be dead (a local process that no longer
        exists), so their jobs run again now rather than when the lease would run out."""
        expired = 0
        with self._tx():
            for owner in owners:
                expired += self._db.execute(
                    "UPDATE event_jobs SET visible_at = ?"
                    " WHERE status = 'running' AND lease_owner = ? AND visible_at > ?",
                    (now, owner, now),
                ).rowcount
        return expired

    def running_owners(self) -> list[str]:
        rows = self._db.execute(
            "SELECT DISTINCT lease_owner FROM event_jobs"
            " WHERE status = 'running' AND lease_owner IS NOT NULL"
        ).fetchall()
        return [row[0] for row in rows]

    def finish(self, owner: str, outcomes: Iterable[Outcome], now: float) -> list[bool]:
        """Record attempts' outcomes in one transaction. An outcome counts only if its claim
        still holds (same owner and delivery): after a lost lease the newer delivery owns the
        job and this late result is dropped — that delivery records its own."""
        applied = []
        outcomes = list(outcomes)
        owners = self._owners([out.id for out in outcomes])
        self.prepare(ns for ns, _ in owners.values())
        with self._tx():
            for out in outcomes:
                finished = now if out.status != QUEUED else None
                visible = out.retry_at if out.retry_at is not None else now
                error: bytes | str | None = None
                result = out.result
                if out.error is not None:
                    error = orjson.dumps(out.error).decode()
                if out.id in owners:
                    ns, fn = owners[out.id]
                    if out.error is not None:
                        error = self._seal(ns, "job-error", fn, out.id, orjson.dumps(out.error))
                    if result is not None:
                        result = self._seal(ns, "job-result", fn, out.id, result)
                applied.append(
                    self._db.execute(
                        "UPDATE event_jobs SET status = ?, result_status = ?, result = ?,"
                        " error = ?, visible_at = ?, finished_at = ?, updated_at = ?,"
                        " lease_owner = NULL"
                        " WHERE id = ? AND status = 'running' AND lease_owner = ?"
                        " AND deliveries = ?",
                        (
                            out.status,
                            out.result_status,
                            result,
                            error,
                            visible,
                            finished,
                            now,
                            out.id,
                            owner,
                            out.deliveries,
                        ),
                    ).rowcount
                    == 1
                )
        return applied

    def _owners(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """id → (namespace, function): what a result's seal is bound to."""
        if self._sealer is None or not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._db.execute(
            f"SELECT id, namespace, function FROM event_jobs WHERE id IN ({marks})",  # noqa: S608
            tuple(ids),
        ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def _opened(self, row: Sequence[Any]) -> list[Any]:
        """A view row with its error opened (column 14)."""
        out = list(row)
        error = self._open(row[1], "job-error", row[2], row[0], row[14])
        out[14] = error.decode() if isinstance(error, bytes) else error
        return out

    # ------------------------------------------------------------ reading
    def get(self, job_id: str) -> JobView | None:
        row = self._db.execute(
            f"SELECT {_VIEW_COLUMNS}, result FROM event_jobs WHERE id = ?",  # noqa: S608 - constant
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        result = self._open(row[1], "job-result", row[2], row[0], row[-1])
        return _view(self._opened(row[:-1]), result)

    def dead_letters(
        self, namespace: str, limit: int, after: str | None = None, function: str | None = None
    ) -> list[JobView]:
        """Jobs of the namespace that ended without success, oldest first (`after`: the
        last id of the previous page)."""
        rows = self._db.execute(
            f"SELECT {_VIEW_COLUMNS} FROM event_jobs"  # noqa: S608 - constant columns
            " WHERE namespace = ? AND status IN ('failed', 'dead') AND id > ?"
            " AND (? IS NULL OR function = ?) ORDER BY id LIMIT ?",
            (namespace, after or "", function, function, limit),
        ).fetchall()
        return [_view(self._opened(row), None) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) FROM event_jobs GROUP BY status")
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n in rows})
        return counts

    # ------------------------------------------------------------ dead letters
    def replay(self, namespace: str, job_id: str, now: float) -> JobView | None:
        """Queue a failed or dead job again under its own id, with fresh attempts. None for an
        unknown id (or another namespace's); NotDeadLetter when it has not ended in failure."""
        with self._tx():
            row = self._db.execute(
                "SELECT status FROM event_jobs WHERE id = ? AND namespace = ?",
                (job_id, namespace),
            ).fetchone()
            if row is None:
                return None
            if row[0] not in DEAD_LETTER_STATUSES:
                raise NotDeadLetter(row[0])
            self._db.execute(
                "UPDATE event_jobs SET status = 'queued', attempts = 0, interruptions = 0,"
                " replays = replays + 1, visible_at = ?, updated_at = ?, finished_at = NULL,"
                " result_status = NULL, result = NULL, error = NULL, lease_owner = NULL"
                " WHERE id = ?",
                (now, now, job_id),
            )
        return self.get(job_id)

    def prune(self, before: float, limit: int = 5000) -> int:
        """Forget succeeded and failed jobs finished before `before` (their Idempotency-Keys
        with them). Dead jobs stay until replayed: they wait for an operator."""
        with self._tx():
            return self._db.execute(
                "DELETE FROM event_jobs WHERE id IN (SELECT id FROM event_jobs"
                " WHERE status IN ('succeeded', 'failed') AND finished_at < ? LIMIT ?)",
                (before, limit),
            ).rowcount

    # ------------------------------------------------------------ schedules
    def set_schedules(
        self, namespace: str, function: str, crons: Sequence[str], now: float
    ) -> None:
        """Make `crons` the function's schedules. A cron kept from before keeps its `since`
        (and so its firing history); a new one starts now; a dropped one is forgotten."""
        with self._tx():
            kept = set(crons)
            for (cron,) in self._db.execute(
                "SELECT cron FROM event_schedules WHERE namespace = ? AND function = ?",
                (namespace, function),
            ).fetchall():
                if cron not in kept:
                    self._forget(namespace, function, cron)
            for cron in kept:
                self._db.execute(
                    "INSERT INTO event_schedules (namespace, function, cron, since)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (namespace, function, cron, now),
                )

    def _forget(self, namespace: str, function: str, cron: str) -> None:
        for table in ("event_schedules", "event_schedule_fires"):
            self._db.execute(
                f"DELETE FROM {table} WHERE namespace = ? AND function = ? AND cron = ?",  # noqa: S608
                (namespace, function, cron),
            )

    def schedules(self) -> list[Schedule]:
        rows = self._db.execute(
            "SELECT namespace, function, cron, since FROM event_schedules"
            " ORDER BY namespace, function, cron"
        ).fetchall()
        return [Schedule(*row) for row in rows]

    def last_fired(self, namespace: str, function: str, cron: str) -> float | None:
        row = self._db.execute(
            "SELECT MAX(slot) FROM event_schedule_fires"
            " WHERE namespace = ? AND function = ? AND cron = ?",
            (namespace, function, cron),
        ).fetchone()
        return float(row[0]) if row[0] is not None else None

    def fire(self, schedule: Schedule, slot: float, job: NewJob, now: float) -> bool:
        """Claim `slot` of the schedule and enqueue its job, atomically. False when the slot
        (or a later one) has already fired, from this gateway or another, before a restart or
        after; or when the slot predates the schedule itself."""
        self.prepare([job.namespace])
        with self._tx():
            row = self._db.execute(
                "SELECT since FROM event_schedules WHERE namespace = ? AND function = ?"
                " AND cron = ?",
                (schedule.namespace, schedule.function, schedule.cron),
            ).fetchone()
            if row is None or slot < row[0]:
                return False
            newer = self._db.execute(
                "SELECT 1 FROM event_schedule_fires WHERE namespace = ? AND function = ?"
                " AND cron = ? AND slot >= ?",
                (schedule.namespace, schedule.function, schedule.cron, slot),
            ).fetchone()
            if newer is not None:
                return False
            # The primary key (namespace, function, cron, slot) is the guarantee: a second
            # insert of the same slot fails here even if the check above were skipped.
            self._db.execute(
                "INSERT INTO event_schedule_fires (namespace, function, cron, slot, job_id,"
                " fired_at) VALUES (?, ?, ?, ?, ?, ?)",
                (schedule.namespace, schedule.function, schedule.cron, slot, job.id, now),
            )
            self._insert(job, now)
            # Only the newest fire matters for the checks above; keep a short history.
            self._db.execute(
                "DELETE FROM event_schedule_fires WHERE namespace = ? AND function = ?"
                " AND cron = ? AND slot < ? AND slot NOT IN (SELECT slot FROM"
                " event_schedule_fires WHERE namespace = ? AND function = ? AND cron = ?"
                " ORDER BY slot DESC LIMIT ?)",
                (
                    schedule.namespace,
                    schedule.function,
                    schedule.cron,
                    slot,
                    schedule.namespace,
                    schedule.function,
                    schedule.cron,
                    FIRE_HISTORY,
                ),
            )
        return True

    # ------------------------------------------------------------ trace contexts
    def _traces(self) -> None:
        if not self._traces_ready:
            self._db.execute(TRACES_SCHEMA)
            self._traces_ready = True

    def put_trace(self, job_id: str, traceparent: str, tracestate: str | None) -> None:
        self._traces()
        self._db.execute(
            "INSERT OR REPLACE INTO event_job_traces (id, traceparent, tracestate)"
            " VALUES (?, ?, ?)",
            (job_id, traceparent, tracestate),
        )

    def get_trace(self, job_id: str) -> tuple[str, str | None] | None:
        self._traces()
        row = self._db.execute(
            "SELECT traceparent, tracestate FROM event_job_traces WHERE id = ?", (job_id,)
        ).fetchone()
        return None if row is None else (str(row[0]), row[1])

    def prune_traces(self) -> int:
        self._traces()
        return self._db.execute(
            "DELETE FROM event_job_traces WHERE id NOT IN (SELECT id FROM event_jobs)"
        ).rowcount


class _Immediate:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error). IMMEDIATE takes the write lock up front,
    so a read-then-write transaction never fails half-way on a lock upgrade (SQLITE_BUSY that
    busy_timeout cannot wait out)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class SQLiteJobQueueRepository(JobQueueRepository):
    """The embedded backend: `SQLiteJobQueue` on its own thread, in the database file at
    `path` (the platform's `cumulo.db`). Opened on `open()` (or the first call); `aclose()`
    closes the connection and stops the thread, and a later `open()` starts both again."""

    def __init__(self, path: Path, cipher: Cipher | None = None) -> None:
        self.path = path
        self.cipher = cipher
        self._thread: DbThread | None = None
        self._queue: SQLiteJobQueue | None = None

    async def open(self) -> None:
        if self._queue is None:
            thread = DbThread()
            try:
                self._queue = await thread.call(SQLiteJobQueue, self.path, self.cipher)
            except BaseException:
                thread.close()
                raise
            self._thread = thread

    async def aclose(self) -> None:
        thread, queue = self._thread, self._queue
        self._thread = self._queue = None
        if thread is not None:
            if queue is not None:
                await thread.call(queue.close)
            thread.close()

    def topics(self) -> SQLiteTopicRepository:
        from cumulo.store.sqlite_topics import SQLiteTopicRepository

        return SQLiteTopicRepository(self)

    async def parts(self) -> tuple[DbThread, SQLiteJobQueue]:
        """The thread and the blocking queue, for SQLite tables kept beside the queue's (the
        topics: their writes and job inserts share one transaction)."""
        await self.open()
        thread, queue = self._thread, self._queue
        if thread is None or queue is None:  # closed by a concurrent aclose()
            raise RuntimeError("the job queue is closed")
        return thread, queue

    async def _run(self, step: Callable[[SQLiteJobQueue], T]) -> T:
        """`step(queue)` on the database thread."""
        thread, queue = await self.parts()
        return await thread.call(step, queue)

    async def enqueue(self, jobs: Sequence[NewJob], now: float) -> list[Enqueued]:
        return await self._run(lambda q: q.enqueue(list(jobs), now))

    async def claim(self, owner: str, limit: int, now: float, lease_s: float) -> list[Claimed]:
        return await self._run(lambda q: q.claim(owner, limit, now, lease_s))

    async def extend(self, owner: str, now: float, lease_s: float) -> int:
        return await self._run(lambda q: q.extend(owner, now + lease_s))

    async def release(self, owner: str, ids: Sequence[tuple[str, int]], now: float) -> int:
        return await self._run(lambda q: q.release(owner, list(ids), now))

    async def expire_leases(self, owners: Iterable[str], now: float) -> int:
        return await self._run(lambda q: q.expire_leases(list(owners), now))

    async def running_owners(self) -> list[str]:
        return await self._run(lambda q: q.running_owners())

    async def finish(self, owner: str, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        return await self._run(lambda q: q.finish(owner, list(outcomes), now))

    async def get(self, job_id: str) -> JobView | None:
        return await self._run(lambda q: q.get(job_id))

    async def dead_letters(
        self, namespace: str, limit: int, after: str | None = None, function: str | None = None
    ) -> list[JobView]:
        return await self._run(lambda q: q.dead_letters(namespace, limit, after, function))

    async def counts(self) -> dict[str, int]:
        return await self._run(lambda q: q.counts())

    async def replay(self, namespace: str, job_id: str, now: float) -> JobView | None:
        return await self._run(lambda q: q.replay(namespace, job_id, now))

    async def prune(self, before: float, limit: int = 5000) -> int:
        return await self._run(lambda q: q.prune(before, limit))

    async def set_schedules(
        self, namespace: str, function: str, crons: Sequence[str], now: float
    ) -> None:
        await self._run(lambda q: q.set_schedules(namespace, function, list(crons), now))

    async def schedules(self) -> list[Schedule]:
        return await self._run(lambda q: q.schedules())

    async def last_fired(self, namespace: str, function: str, cron: str) -> float | None:
        return await self._run(lambda q: q.last_fired(namespace, function, cron))

    async def fire(self, schedule: Schedule, slot: float, job: NewJob, now: float) -> bool:
        return await self._run(lambda q: q.fire(schedule, slot, job, now))

    async def put_trace(self, job_id: str, traceparent: str, tracestate: str | None) -> None:
        await self._run(lambda q: q.put_trace(job_id, traceparent, tracestate))

    async def get_trace(self, job_id: str) -> tuple[str, str | None] | None:
        return await self._run(lambda q: q.get_trace(job_id))

    async def prune_traces(self) -> int:
        return await self._run(lambda q: q.prune_traces())

    # ------------------------------------------------------------ data subjects
    async def subject_jobs(self, namespace: str, body_prefix: bytes) -> list[SubjectJob]:
        def step(q: SQLiteJobQueue) -> list[SubjectJob]:
            rows = q._db.execute(
                "SELECT id, function, status, created_at, body FROM event_jobs WHERE namespace = ?"
                " AND substr(body, 1, ?) = ? ORDER BY created_at",
                (namespace, len(body_prefix), body_prefix),
            ).fetchall()
            return [SubjectJob(r[0], r[1], r[2], float(r[3]), bytes(r[4])) for r in rows]

        return await self._run(step)

    async def erase_subject(self, namespace: str, body_prefix: bytes) -> int:
        def step(q: SQLiteJobQueue) -> int:
            return q._db.execute(
                "DELETE FROM event_jobs WHERE namespace = ? AND substr(body, 1, ?) = ?",
                (namespace, len(body_prefix), body_prefix),
            ).rowcount

        return await self._run(step)

    async def purge_finished(self, namespace: str, before: float) -> int:
        def step(q: SQLiteJobQueue) -> int:
            return q._db.execute(
                "DELETE FROM event_jobs WHERE namespace = ? AND finished_at < ? "
                "AND status IN ('succeeded', 'failed', 'dead')",
                (namespace, before),
            ).rowcount

        return await self._run(step)
