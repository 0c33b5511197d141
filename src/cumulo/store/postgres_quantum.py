"""`QuantumJobRepository` on PostgreSQL: table `quantum_jobs` (migration 3 in
`cumulo.store.postgres`), reached through `PostgresStore.quantum`.

Every method is one statement, so each is atomic on its own: the per-namespace
idempotency key is a partial unique index (racing inserts: one row, the others a
Conflict), and the terminal guard of `update` is in its WHERE clause, which PostgreSQL
re-checks against the row's newest version when another transaction changed it first (two
gateways finishing one job: one wins). Events and errors are `json` (kept as written);
requests and results `bytea` (the bytes given, returned as they are).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from cumulo.errors import Conflict
from cumulo.store.quantum import (
    CONFLICT_IDEMPOTENCY_KEY,
    CONFLICT_JOB_ID,
    JobRow,
    QuantumJobRepository,
)

if TYPE_CHECKING:  # postgres.py imports this module: no import back at run time
    from cumulo.store.postgres import PostgresStore

_FIELDS = (
    "id, namespace, state, created_at, started_at, finished_at, idempotency_key, request_hash, "
    "request, method, device, estimated_bytes, num_pubs, seed, timeout_s, attempts, "
    "owner, lease_until, cancel_requested"
)
_COLUMNS = _FIELDS + ", events::text, error::text"
_ACTIVE = "state IN ('queued', 'running', 'cancelling')"
# The primary key's name as PostgreSQL makes it (migration 3 names no constraint).
_ID_CONSTRAINT = "quantum_jobs_pkey"


def _row(r: tuple[Any, ...], result: bytes | None) -> JobRow:
    return JobRow(
        id=r[0],
        namespace=r[1],
        state=r[2],
        created_at=r[3],
        started_at=r[4],
        finished_at=r[5],
        idempotency_key=r[6],
        request_hash=r[7],
        request=bytes(r[8]),
        method=r[9],
        device=r[10],
        estimated_bytes=r[11],
        num_pubs=r[12],
        seed=r[13],
        timeout_s=r[14],
        attempts=r[15],
        owner=r[16],
        lease_until=r[17],
        cancel_requested=r[18],
        events=orjson.loads(r[19]),
        error=orjson.loads(r[20]) if r[20] is not None else None,
        result=result,
    )


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


class PostgresQuantumJobRepository(QuantumJobRepository):
    """Quantum jobs on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def insert(self, row: JobRow) -> None:
        try:
            async with self.store.connection() as conn:
                await conn.execute(
                    f"INSERT INTO quantum_jobs ({_FIELDS}, events, error, result) "  # noqa: S608
                    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"
                    "%s::json,%s::json,%s)",
                    (
                        row.id,
                        row.namespace,
                        row.state,
                        row.created_at,
                        row.started_at,
                        row.finished_at,
                        row.idempotency_key,
                        row.request_hash,
                        row.request,
                        row.method,
                        row.device,
                        row.estimated_bytes,
                        row.num_pubs,
                        row.seed,
                        row.timeout_s,
                        row.attempts,
                        row.owner,
                        row.lease_until,
                        row.cancel_requested,
                        _json(row.events),
                        _json(row.error),
                        row.result,
                    ),
                )
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == _ID_CONSTRAINT:
                raise Conflict(
                    f"quantum job {row.id} exists already", code=CONFLICT_JOB_ID
                ) from exc
            raise Conflict(
                "another job of the namespace holds this Idempotency-Key",
                code=CONFLICT_IDEMPOTENCY_KEY,
            ) from exc

    async def get(self, job_id: str, *, with_result: bool = True) -> JobRow | None:
        cols = _COLUMNS + (", result" if with_result else "")
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT {cols} FROM quantum_jobs WHERE id = %s",  # noqa: S608 - fixed names
                (job_id,),
            )
            r = await cur.fetchone()
        if r is None:
            return None
        blob = r[21] if with_result else None
        return _row(r, bytes(blob) if blob is not None else None)

    async def by_idempotency_key(self, namespace: str, key: str) -> JobRow | None:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM quantum_jobs "  # noqa: S608 - fixed names
                "WHERE namespace = %s AND idempotency_key = %s",
                (namespace, key),
            )
            r = await cur.fetchone()
        return None if r is None else _row(r, None)

    async def list_jobs(self, namespace: str, state: str | None, limit: int) -> list[JobRow]:
        # Ids compare by code point ("C"), as SQLite compares them, not by the locale.
        sql = f"SELECT {_COLUMNS} FROM quantum_jobs WHERE namespace = %s"  # noqa: S608
        args: list[Any] = [namespace]
        if state is not None:
            sql += " AND state = %s"
            args.append(state)
        sql += ' ORDER BY created_at DESC, id COLLATE "C" DESC LIMIT %s'
        args.append(limit)
        async with self.store.connection() as conn:
            cur = await conn.execute(sql, args)
            return [_row(r, None) for r in await cur.fetchall()]

    async def active(self) -> list[JobRow]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM quantum_jobs "  # noqa: S608 - fixed names
                "WHERE state IN ('queued', 'running', 'cancelling') "
                'ORDER BY created_at, id COLLATE "C"'
            )
            return [_row(r, None) for r in await cur.fetchall()]

    async def update(
        self,
        job_id: str,
        *,
        state: str,
        events: list[dict[str, Any]],
        started_at: float | None = None,
        finished_at: float | None = None,
        attempts: int | None = None,
        error: dict[str, str] | None = None,
        result: bytes | None = None,
        owner: str | None = None,
    ) -> bool:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "UPDATE quantum_jobs SET state = %s, events = %s::json, "
                "started_at = COALESCE(%s, started_at), "
                "finished_at = COALESCE(%s, finished_at), "
                "attempts = COALESCE(%s, attempts), "
                "error = COALESCE(%s::json, error), "
                "result = COALESCE(%s, result) "
                "WHERE id = %s AND state NOT IN ('succeeded', 'failed', 'cancelled') "
                "AND (%s::text IS NULL OR owner = %s)",
                (
                    state,
                    _json(events),
                    started_at,
                    finished_at,
                    attempts,
                    _json(error),
                    result,
                    job_id,
                    owner,
                    owner,
                ),
            )
            return cur.rowcount == 1

    async def claim(self, job_id: str, owner: str, until: float, now: float) -> bool:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "UPDATE quantum_jobs SET owner = %s, lease_until = %s "  # noqa: S608
                f"WHERE id = %s AND {_ACTIVE} "
                "AND (owner IS NULL OR owner = %s OR lease_until < %s)",
                (owner, until, job_id, owner, now),
            )
            return cur.rowcount == 1

    async def renew(self, owner: str, until: float) -> list[str]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "UPDATE quantum_jobs SET lease_until = %s "  # noqa: S608 - fixed names
                f"WHERE owner = %s AND {_ACTIVE} RETURNING id, cancel_requested, created_at",
                (until, owner),
            )
            rows = await cur.fetchall()
        return [r[0] for r in sorted(rows, key=lambda r: (r[2], r[0])) if r[1]]

    async def request_cancel(self, job_id: str) -> bool:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "UPDATE quantum_jobs SET cancel_requested = true "  # noqa: S608
                f"WHERE id = %s AND {_ACTIVE}",
                (job_id,),
            )
            return cur.rowcount == 1

    async def disown(self, owner: str) -> None:
        async with self.store.connection() as conn:
            await conn.execute(
                "UPDATE quantum_jobs SET owner = NULL, lease_until = NULL WHERE owner = %s",
                (owner,),
            )
