"""`JobQueueRepository` on PostgreSQL: one queue shared by every gateway on the database.

The tables are migration 6 of `cumulo.store.postgres` (`event_*`, the SQLite names). How
the contract's promises hold across gateways:

- Claims: `UPDATE … FROM (SELECT id … ORDER BY visible_at, id LIMIT n FOR UPDATE SKIP
  LOCKED)`: concurrent claimers lock disjoint due rows and pass over each other's, so no
  two take one lease and none waits for another. `deliveries` is the fencing token: a
  finish or release applies only `WHERE deliveries = token` and the lease is the caller's.
- Idempotency-Keys: a partial unique index on (namespace, idempotency_key); a racing
  insert waits for the holder's commit and then does nothing (`ON CONFLICT DO NOTHING`).
- Schedules: `fire` locks the schedule's row (`FOR UPDATE`), so fires of one schedule run
  one after another across gateways, and inserts the (schedule, slot) row with `ON CONFLICT
  DO NOTHING` under its primary key: a slot fires once, its job with it, or not at all.
- Clock: with `database_clock` (the default, `PostgresStore.jobs`) every call's `now` is
  the database's `clock_timestamp()`, read in the call's transaction, and the call's other
  absolute times (a retry's `retry_at`) move by the same offset: leases and due times are
  compared on one clock whatever the gateways' clocks say. `database_clock=False` uses the
  caller's times as given (the conformance suite's fake clock). `prune`'s `before` and
  schedule slots are used as given either way (retention is days; slots are cron times).

At rest (with a cipher, i.e. on the platform): sealed exactly as SQLite seals them
(cumulo.store.sealing `RowSealer`): a job's body, result and error under the namespace data
key (purposes "job-body", "job-result", "job-error", item (function, job id)), so a sealed
value cannot be moved to another job, function or namespace and a sealed SQLite row's bytes
open here unchanged; the Idempotency-Key request hash is keyed (HMAC "job-request" over
(function, sha256(body))). Keys come from store/postgres_keys (`PostgresDataKeys`): prepared
before a writing transaction (on a connection of their own), loaded on the caller's
connection before opening. Bodies sealed to a data subject (b"\\xffCJ") stay as they are, and
values from before sealing open as given. `error` is a text column (migration 6): a sealed
error is stored as "\\x" + its hex (PostgreSQL's own bytea text form; a JSON error never
starts so). Without a cipher (the conformance fakes) everything is stored as given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from psycopg import AsyncConnection

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
from cumulo.store.postgres_keys import DataKeyCipher, PostgresDataKeys
from cumulo.store.sealing import SUBJECT_MAGIC, is_sealed

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore
    from cumulo.store.postgres_topics import PostgresTopicRepository

Conn = AsyncConnection[tuple[Any, ...]]

_VIEW_COLUMNS = (
    "id, namespace, function, source, status, attempts, max_attempts, deliveries, replays, "
    "created_at, updated_at, finished_at, visible_at, result_status, error"
)


_SEALED_TEXT = "\\x"  # a sealed error in the text column: PostgreSQL's bytea hex form


def _view(row: Sequence[Any], with_result: bool) -> JobView:
    """A view row whose error (14) and result (15) are opened already."""
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
        result=bytes(row[15]) if with_result and row[15] is not None else None,
        error=orjson.loads(row[14]) if row[14] is not None else None,
    )


class PostgresJobQueueRepository(JobQueueRepository):
    """The events room on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(
        self,
        store: PostgresStore,
        cipher: DataKeyCipher | None = None,
        *,
        database_clock: bool = True,
    ) -> None:
        self.store = store
        self.database_clock = database_clock
        self._cipher = cipher
        self.keys = PostgresDataKeys(store, cipher) if cipher is not None else None

    # ------------------------------------------------------------ sealing
    async def prepare(self, namespaces: Iterable[str]) -> None:
        """Make sure each namespace has a data key: before any transaction that inserts or
        finishes its jobs (it may take a pooled connection of its own)."""
        if self.keys is not None:
            for namespace in sorted(set(namespaces)):
                await self.keys.prepare(namespace)

    def _seal(self, ns: str, purpose: str, function: str, job_id: str, data: bytes) -> bytes:
        if self._cipher is None or self.keys is None or data.startswith(SUBJECT_MAGIC):
            return data  # as given, or sealed to its data subject already
        return self._cipher.encrypt(self.keys.table, ns, purpose, (function, job_id), data)

    def _open(self, ns: str, purpose: str, function: str, job_id: str, blob: bytes) -> bytes:
        if self._cipher is None or self.keys is None or not is_sealed(blob):
            return blob  # from before sealing, or a subject's ciphertext
        return self._cipher.decrypt(self.keys.table, ns, purpose, (function, job_id), blob)

    def _request_hash(self, job: NewJob) -> str:
        if self._cipher is None or self.keys is None:
            return request_hash(job.function, job.body)
        # Keyed as on SQLite: the stored hash confirms no guess of the body without the key.
        digest = hashlib.sha256(job.body).hexdigest()
        return self._cipher.keyed_hash(
            self.keys.table, job.namespace, "job-request", job.function, digest
        )

    def _error_text(self, ns: str, function: str, job_id: str, error: Any) -> str | None:
        if error is None:
            return None
        data = orjson.dumps(error)
        if self._cipher is None:
            return data.decode()
        return _SEALED_TEXT + self._seal(ns, "job-error", function, job_id, data).hex()

    @staticmethod
    def _error_blob(text: str | None) -> bytes | None:
        if text is None:
            return None
        if text.startswith(_SEALED_TEXT):
            return bytes.fromhex(text[len(_SEALED_TEXT) :])
        return text.encode()

    async def _load(self, conn: Conn, rows: Sequence[Sequence[Any]], cols: Sequence[int]) -> None:
        """Load the key versions the rows' sealed columns name (row[1]: the namespace)."""
        if self.keys is None:
            return
        blobs: dict[str, list[bytes]] = {}
        for row in rows:
            for col in cols:
                if isinstance(row[col], bytes):
                    blobs.setdefault(row[1], []).append(row[col])
        for namespace, found in blobs.items():
            await self.keys.load_for(namespace, found, conn)

    async def _opened_views(
        self, conn: Conn, rows: Sequence[Sequence[Any]], with_result: bool
    ) -> list[JobView]:
        """Views of `_VIEW_COLUMNS` rows (and `result`, with_result), opened on `conn`."""
        raw = []
        for row in rows:
            out = list(row)
            out[14] = self._error_blob(row[14])
            if with_result:
                out[15] = bytes(row[15]) if row[15] is not None else None
            raw.append(out)
        await self._load(conn, raw, (14, 15) if with_result else (14,))
        views = []
        for out in raw:
            job_id, ns, fn = out[0], out[1], out[2]
            if out[14] is not None:
                out[14] = self._open(ns, "job-error", fn, job_id, out[14]).decode()
            if with_result and out[15] is not None:
                out[15] = self._open(ns, "job-result", fn, job_id, out[15])
            views.append(_view(out, with_result))
        return views

    async def db_now(self, conn: Conn, now: float) -> float:
        """The call's `now`: the database's clock with `database_clock`, else `now`."""
        if not self.database_clock:
            return now
        cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        row = await cur.fetchone()
        assert row is not None
        return float(row[0])

    def topics(self) -> PostgresTopicRepository:
        from cumulo.store.postgres_topics import PostgresTopicRepository

        return PostgresTopicRepository(self)

    # ------------------------------------------------------------ enqueue
    async def enqueue(self, jobs: Sequence[NewJob], now: float) -> list[Enqueued]:
        if not jobs:
            return []
        await self.prepare(job.namespace for job in jobs)
        async with self.store.connection() as conn, conn.transaction():
            now = await self.db_now(conn, now)
            return await self.insert(conn, jobs, now)

    async def insert(self, conn: Conn, jobs: Sequence[NewJob], now: float) -> list[Enqueued]:
        """Insert jobs inside the caller's transaction on `conn` (topics use it too): one
        statement for the batch, then one read of the Idempotency-Keys it found taken.
        `prepare` the jobs' namespaces before that transaction began."""
        digests = [self._request_hash(job) for job in jobs]
        # Keys are taken in one global order (namespace, key), so two batches racing for the
        # same keys wait for each other instead of deadlocking; within the batch `n` keeps
        # the first job with a key the one that gets it.
        cur = await conn.execute(
            "INSERT INTO event_jobs (id, namespace, function, source, body, idempotency_key,"
            " request_hash, status, visible_at, max_attempts, created_at, updated_at)"
            " SELECT id, ns, fn, source, body, key, digest, 'queued', %(now)s, attempts,"
            " %(now)s, %(now)s"
            " FROM unnest(%(ids)s::text[], %(nss)s::text[], %(fns)s::text[],"
            "   %(sources)s::text[], %(bodies)s::bytea[], %(keys)s::text[], %(digests)s::text[],"
            "   %(attempts)s::int[])"
            "   WITH ORDINALITY AS j(id, ns, fn, source, body, key, digest, attempts, n)"
            ' ORDER BY ns COLLATE "C", key COLLATE "C", n'
            " ON CONFLICT (namespace, idempotency_key) WHERE idempotency_key IS NOT NULL"
            " DO NOTHING RETURNING id",
            {
                "now": now,
                "ids": [job.id for job in jobs],
                "nss": [job.namespace for job in jobs],
                "fns": [job.function for job in jobs],
                "sources": [job.source for job in jobs],
                "bodies": [
                    self._seal(job.namespace, "job-body", job.function, job.id, job.body)
                    for job in jobs
                ],
                "keys": [job.idempotency_key for job in jobs],
                "digests": digests,
                "attempts": [job.max_attempts for job in jobs],
            },
        )
        created = {str(r[0]) for r in await cur.fetchall()}
        taken = [job for job in jobs if job.id not in created]
        holders: dict[tuple[str, str], tuple[str, str]] = {}
        if taken:
            # The keys' holders committed (a racing insert waited for them) or are ours.
            cur = await conn.execute(
                "SELECT namespace, idempotency_key, id, request_hash FROM event_jobs"
                " WHERE (namespace, idempotency_key) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([job.namespace for job in taken], [job.idempotency_key for job in taken]),
            )
            holders = {(r[0], r[1]): (r[2], r[3]) for r in await cur.fetchall()}
        outcomes = []
        for job, digest in zip(jobs, digests, strict=True):
            if job.id in created:
                outcomes.append(Enqueued(job.id, created=True))
                continue
            holder = holders.get((job.namespace, job.idempotency_key or ""))
            if job.idempotency_key is None or holder is None:  # the holder was pruned meanwhile
                raise RuntimeError(f"job {job.id} was not inserted and has no key holder")
            outcomes.append(Enqueued(holder[0], created=False, conflict=holder[1] != digest))
        return outcomes

    # ------------------------------------------------------------ claim and lease
    async def claim(self, owner: str, limit: int, now: float, lease_s: float) -> list[Claimed]:
        if limit <= 0:
            return []
        async with self.store.connection() as conn, conn.transaction():
            now = await self.db_now(conn, now)
            # A job that took its gateway down again and again: stop feeding it to gateways.
            # Rows another claimer holds locked are its to judge (SKIP LOCKED).
            await conn.execute(
                "UPDATE event_jobs SET status = 'dead', lease_owner = NULL, updated_at = %(now)s,"
                " finished_at = %(now)s, error = %(error)s"
                " WHERE id IN (SELECT id FROM event_jobs WHERE status = 'running'"
                "   AND visible_at <= %(now)s AND interruptions + 1 >= %(max)s"
                "   FOR UPDATE SKIP LOCKED)",
                {
                    "now": now,
                    "error": orjson.dumps(interrupted_error()).decode(),
                    "max": MAX_INTERRUPTIONS,
                },
            )
            cur = await conn.execute(
                "UPDATE event_jobs AS j SET"
                " attempts = j.attempts + (j.status = 'queued')::int,"
                " interruptions = j.interruptions + (j.status = 'running')::int,"
                " deliveries = j.deliveries + 1,"
                " status = 'running', lease_owner = %(owner)s, visible_at = %(until)s,"
                " updated_at = %(now)s"
                " FROM (SELECT id FROM event_jobs"
                "   WHERE status IN ('queued', 'running') AND visible_at <= %(now)s"
                "   ORDER BY visible_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS due"
                " WHERE j.id = due.id"
                " RETURNING j.id, j.namespace, j.function, j.body, j.attempts, j.max_attempts,"
                " j.deliveries",
                {"owner": owner, "until": now + lease_s, "now": now, "limit": limit},
            )
            rows = [[*r[:3], bytes(r[3]), *r[4:]] for r in sorted(await cur.fetchall())]
            await self._load(conn, rows, (3,))
        return [
            Claimed(r[0], r[1], r[2], self._open(r[1], "job-body", r[2], r[0], r[3]), *r[4:])
            for r in rows
        ]

    async def extend(self, owner: str, now: float, lease_s: float) -> int:
        async with self.store.connection() as conn, conn.transaction():
            now = await self.db_now(conn, now)
            cur = await conn.execute(
                "UPDATE event_jobs SET visible_at = %s WHERE status = 'running'"
                " AND lease_owner = %s",
                (now + lease_s, owner),
            )
            return cur.rowcount

    async def release(self, owner: str, ids: Sequence[tuple[str, int]], now: float) -> int:
        released = 0
        async with self.store.connection() as conn, conn.transaction():
            now = await self.db_now(conn, now)
            for job_id, deliveries in ids:
                cur = await conn.execute(
                    "UPDATE event_jobs SET status = 'queued', attempts = attempts - 1,"
                    " lease_owner = NULL, visible_at = %s, updated_at = %s"
                    " WHERE id = %s AND status = 'running' AND lease_owner = %s"
                    " AND deliveries = %s",
                    (now, now, job_id, owner, deliveries),
                )
                released += cur.rowcount
        return released

    async def expire_leases(self, owners: Iterable[str], now: float) -> int:
        owners = list(owners)
        if not owners:
            return 0
        async with self.store.connection() as conn, conn.transaction():
            now = await self.db_now(conn, now)
            cur = await conn.execute(
                "UPDATE event_jobs SET visible_at = %s WHERE status = 'running'"
                " AND lease_owner = ANY(%s) AND visible_at > %s",
                (now, owners, now),
            )
            return cur.rowcount

    async def running_owners(self) -> list[str]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT lease_owner FROM event_jobs"
                " WHERE status = 'running' AND lease_owner IS NOT NULL"
            )
            return [str(r[0]) for r in await cur.fetchall()]

    async def finish(self, owner: str, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        if not outcomes:
            return []
        # One statement for the batch. A job named twice gets its first outcome only: one
        # at a time, the second would find it finished already.
        first: dict[str, int] = {}
        for i, out in enumerate(outcomes):
            first.setdefault(out.id, i)
        batch = [outcomes[i] for i in sorted(first.values())]
        # What a result's seal is bound to. Read before the transaction (a job's namespace
        # and function never change) so the keys can be prepared outside it.
        owners: dict[str, tuple[str, str]] = {}
        if self.keys is not None:
            async with self.store.connection() as conn:
                cur = await conn.execute(
                    "SELECT id, namespace, function FROM event_jobs WHERE id = ANY(%s)",
                    ([out.id for out in batch],),
                )
                owners = {str(r[0]): (str(r[1]), str(r[2])) for r in await cur.fetchall()}
            await self.prepare(ns for ns, _ in owners.values())
        # An outcome for an unknown id updates nothing: sealing it does not matter.
        results = [
            self._seal(owners[out.id][0], "job-result", owners[out.id][1], out.id, out.result)
            if out.id in owners and out.result is not None
            else out.result
            for out in batch
        ]
        errors = [
            self._error_text(*owners[out.id], out.id, out.error)
            if out.id in owners
            else (orjson.dumps(out.error).decode() if out.error is not None else None)
            for out in batch
        ]
        async with self.store.connection() as conn, conn.transaction():
            caller_now, now = now, await self.db_now(conn, now)
            # A retry's due time moves with the clock its lease was judged on.
            shift = now - caller_now if self.database_clock else 0.0
            cur = await conn.execute(
                "UPDATE event_jobs AS j SET status = o.status, result_status = o.result_status,"
                " result = o.result, error = o.error, visible_at = o.visible,"
                " finished_at = o.finished, updated_at = %(now)s, lease_owner = NULL"
                " FROM unnest(%(ids)s::text[], %(tokens)s::int[], %(statuses)s::text[],"
                "   %(codes)s::int[], %(results)s::bytea[], %(errors)s::text[],"
                "   %(visible)s::float8[], %(finished)s::float8[])"
                "   AS o(id, deliveries, status, result_status, result, error, visible, finished)"
                " WHERE j.id = o.id AND j.status = 'running' AND j.lease_owner = %(owner)s"
                " AND j.deliveries = o.deliveries"
                " RETURNING j.id",
                {
                    "now": now,
                    "owner": owner,
                    "ids": [out.id for out in batch],
                    "tokens": [out.deliveries for out in batch],
                    "statuses": [out.status for out in batch],
                    "codes": [out.result_status for out in batch],
                    "results": results,
                    "errors": errors,
                    "visible": [
                        out.retry_at + shift if out.retry_at is not None else now for out in batch
                    ],
                    "finished": [now if out.status != QUEUED else None for out in batch],
                },
            )
            done = {str(r[0]) for r in await cur.fetchall()}
        return [first[out.id] == i and out.id in done for i, out in enumerate(outcomes)]

    # ------------------------------------------------------------ reading
    async def get(self, job_id: str) -> JobView | None:
        async with self.store.connection() as conn:
            return await self._get(conn, job_id)

    async def _get(self, conn: Conn, job_id: str) -> JobView | None:
        cur = await conn.execute(
            f"SELECT {_VIEW_COLUMNS}, result FROM event_jobs WHERE id = %s",  # noqa: S608
            (job_id,),
        )
        row = await cur.fetchone()
        return None if row is None else (await self._opened_views(conn, [row], True))[0]

    async def dead_letters(
        self, namespace: str, limit: int, after: str | None = None, function: str | None = None
    ) -> list[JobView]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_VIEW_COLUMNS} FROM event_jobs"  # noqa: S608 - constant columns
                " WHERE namespace = %s AND status IN ('failed', 'dead') AND id > %s"
                " AND (%s::text IS NULL OR function = %s) ORDER BY id LIMIT %s",
                (namespace, after or "", function, function, limit),
            )
            return await self._opened_views(conn, await cur.fetchall(), with_result=False)

    async def counts(self) -> dict[str, int]:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT status, count(*) FROM event_jobs GROUP BY status")
            rows = await cur.fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({str(status): int(n) for status, n in rows})
        return counts

    # ------------------------------------------------------------ dead letters
    async def replay(self, namespace: str, job_id: str, now: float) -> JobView | None:
        async with self.store.connection() as conn, conn.transaction():
            now = await self.db_now(conn, now)
            cur = await conn.execute(
                "SELECT status FROM event_jobs WHERE id = %s AND namespace = %s FOR UPDATE",
                (job_id, namespace),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            if row[0] not in DEAD_LETTER_STATUSES:
                raise NotDeadLetter(row[0])
            await conn.execute(
                "UPDATE event_jobs SET status = 'queued', attempts = 0, interruptions = 0,"
                " replays = replays + 1, visible_at = %s, updated_at = %s, finished_at = NULL,"
                " result_status = NULL, result = NULL, error = NULL, lease_owner = NULL"
                " WHERE id = %s",
                (now, now, job_id),
            )
            return await self._get(conn, job_id)

    async def prune(self, before: float, limit: int = 5000) -> int:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM event_jobs WHERE id IN (SELECT id FROM event_jobs"
                " WHERE status IN ('succeeded', 'failed') AND finished_at < %s LIMIT %s)",
                (before, limit),
            )
            return cur.rowcount

    # ------------------------------------------------------------ schedules
    async def set_schedules(
        self, namespace: str, function: str, crons: Sequence[str], now: float
    ) -> None:
        kept = set(crons)
        async with self.store.connection() as conn, conn.transaction():
            now = await self.db_now(conn, now)
            cur = await conn.execute(
                "SELECT cron FROM event_schedules WHERE namespace = %s AND function = %s"
                ' ORDER BY cron COLLATE "C" FOR UPDATE',  # one lock order: no deadlock
                (namespace, function),
            )
            dropped = [str(r[0]) for r in await cur.fetchall() if r[0] not in kept]
            if dropped:
                for table in ("event_schedules", "event_schedule_fires"):
                    await conn.execute(
                        f"DELETE FROM {table} WHERE namespace = %s AND function = %s"  # noqa: S608
                        " AND cron = ANY(%s)",
                        (namespace, function, dropped),
                    )
            for cron in sorted(kept):
                await conn.execute(
                    "INSERT INTO event_schedules (namespace, function, cron, since)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (namespace, function, cron, now),
                )

    async def schedules(self) -> list[Schedule]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT namespace, function, cron, since FROM event_schedules"
                ' ORDER BY namespace COLLATE "C", function COLLATE "C", cron COLLATE "C"'
            )
            return [Schedule(*row) for row in await cur.fetchall()]

    async def last_fired(self, namespace: str, function: str, cron: str) -> float | None:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT max(slot) FROM event_schedule_fires"
                " WHERE namespace = %s AND function = %s AND cron = %s",
                (namespace, function, cron),
            )
            row = await cur.fetchone()
        return float(row[0]) if row is not None and row[0] is not None else None

    async def fire(self, schedule: Schedule, slot: float, job: NewJob, now: float) -> bool:
        key = (schedule.namespace, schedule.function, schedule.cron)
        await self.prepare([job.namespace])
        async with self.store.connection() as conn, conn.transaction():
            now = await self.db_now(conn, now)
            # The schedule's row lock orders this schedule's fires across gateways: a fire
            # waiting here sees the one before it committed.
            cur = await conn.execute(
                "SELECT since FROM event_schedules WHERE namespace = %s AND function = %s"
                " AND cron = %s FOR UPDATE",
                key,
            )
            row = await cur.fetchone()
            if row is None or slot < row[0]:
                return False
            cur = await conn.execute(
                "SELECT 1 FROM event_schedule_fires WHERE namespace = %s AND function = %s"
                " AND cron = %s AND slot >= %s LIMIT 1",
                (*key, slot),
            )
            if await cur.fetchone() is not None:
                return False
            # The primary key (namespace, function, cron, slot) is the guarantee, even if
            # the lock above were skipped: a second insert of the slot inserts nothing.
            cur = await conn.execute(
                "INSERT INTO event_schedule_fires (namespace, function, cron, slot, job_id,"
                " fired_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (*key, slot, job.id, now),
            )
            if cur.rowcount != 1:
                return False
            await self.insert(conn, [job], now)
            # Only the newest fire matters for the checks above; keep a short history.
            await conn.execute(
                "DELETE FROM event_schedule_fires WHERE namespace = %(ns)s"
                " AND function = %(fn)s AND cron = %(cron)s AND slot < (SELECT min(slot) FROM"
                " (SELECT slot FROM event_schedule_fires WHERE namespace = %(ns)s"
                "  AND function = %(fn)s AND cron = %(cron)s ORDER BY slot DESC LIMIT %(n)s)"
                " AS newest)",
                {"ns": key[0], "fn": key[1], "cron": key[2], "n": FIRE_HISTORY},
            )
        return True

    # ------------------------------------------------------------ trace contexts
    async def put_trace(self, job_id: str, traceparent: str, tracestate: str | None) -> None:
        async with self.store.connection() as conn:
            await conn.execute(
                "INSERT INTO event_job_traces (id, traceparent, tracestate) VALUES (%s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET traceparent = excluded.traceparent,"
                " tracestate = excluded.tracestate",
                (job_id, traceparent, tracestate),
            )

    async def get_trace(self, job_id: str) -> tuple[str, str | None] | None:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT traceparent, tracestate FROM event_job_traces WHERE id = %s", (job_id,)
            )
            row = await cur.fetchone()
        return None if row is None else (str(row[0]), row[1])

    async def prune_traces(self) -> int:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM event_job_traces AS t"
                " WHERE NOT EXISTS (SELECT 1 FROM event_jobs AS j WHERE j.id = t.id)"
            )
            return cur.rowcount

    # ------------------------------------------------------------ data subjects
    async def subject_jobs(self, namespace: str, body_prefix: bytes) -> list[SubjectJob]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT id, function, status, created_at, body FROM event_jobs"
                " WHERE namespace = %s AND substring(body from 1 for %s) = %s"
                " ORDER BY created_at",
                (namespace, len(body_prefix), body_prefix),
            )
            rows = await cur.fetchall()
        return [SubjectJob(r[0], r[1], r[2], float(r[3]), bytes(r[4])) for r in rows]

    async def erase_subject(self, namespace: str, body_prefix: bytes) -> int:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM event_jobs WHERE namespace = %s"
                " AND substring(body from 1 for %s) = %s",
                (namespace, len(body_prefix), body_prefix),
            )
            return cur.rowcount

    async def purge_finished(self, namespace: str, before: float) -> int:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM event_jobs WHERE namespace = %s AND finished_at < %s"
                " AND status IN ('succeeded', 'failed', 'dead')",
                (namespace, before),
            )
            return cur.rowcount
