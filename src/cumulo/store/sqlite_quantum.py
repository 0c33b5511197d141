"""`QuantumJobRepository` over its own SQLite file, `<data_dir>/quantum/quantum.db`.

Quantum jobs keep the file and the schema they always had, apart from the platform's
`cumulo.db`: an existing data dir keeps working. One connection, used from one thread of
the repository's own (so the blocking SQL never runs on the event loop and calls are
serialised as on the single database thread before). The file is created on first use,
not on construction: the platform starts the quantum service at boot only when the file
exists already.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from cumulo.errors import Conflict
from cumulo.store.quantum import (
    CONFLICT_IDEMPOTENCY_KEY,
    CONFLICT_JOB_ID,
    JobRow,
    QuantumJobRepository,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quantum_jobs (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    idempotency_key TEXT,
    request_hash TEXT NOT NULL,
    request BLOB NOT NULL,
    method TEXT,
    device TEXT,
    estimated_bytes INTEGER,
    num_pubs INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    timeout_s REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    events BLOB NOT NULL,
    error BLOB,
    result BLOB,
    owner TEXT,
    lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS quantum_jobs_idempotency
    ON quantum_jobs(namespace, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS quantum_jobs_namespace ON quantum_jobs(namespace, created_at);
CREATE INDEX IF NOT EXISTS quantum_jobs_state ON quantum_jobs(state);
"""

_COLUMNS = (
    "id, namespace, state, created_at, started_at, finished_at, idempotency_key, request_hash, "
    "request, method, device, estimated_bytes, num_pubs, seed, timeout_s, attempts, events, error, "
    "owner, lease_until, cancel_requested"
)
_NCOLS = 21
# Columns added after the first release: a quantum.db made before gets them on open.
_ADDED = (
    ("owner", "TEXT"),
    ("lease_until", "REAL"),
    ("cancel_requested", "INTEGER NOT NULL DEFAULT 0"),
)


def _row(values: tuple[Any, ...], result: bytes | None) -> JobRow:
    return JobRow(
        id=values[0],
        namespace=values[1],
        state=values[2],
        created_at=values[3],
        started_at=values[4],
        finished_at=values[5],
        idempotency_key=values[6],
        request_hash=values[7],
        request=values[8],
        method=values[9],
        device=values[10],
        estimated_bytes=values[11],
        num_pubs=values[12],
        seed=values[13],
        timeout_s=values[14],
        attempts=values[15],
        events=orjson.loads(values[16]),
        error=orjson.loads(values[17]) if values[17] is not None else None,
        result=result,
        owner=values[18],
        lease_until=values[19],
        cancel_requested=bool(values[20]),
    )


def _json(value: dict[str, str] | None) -> bytes | None:
    return None if value is None else orjson.dumps(value)


class SQLiteQuantumJobRepository(QuantumJobRepository):
    """The embedded backend. `aclose()` closes the file and stops the thread; a later
    call opens them again."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._thread: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------ the database thread
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cumulo-quantum-db")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args))

    def _conn(self) -> sqlite3.Connection:
        """The connection, opened (and the schema made) on first use; database thread only."""
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                have = {r[1] for r in db.execute("PRAGMA table_info(quantum_jobs)")}
                for name, kind in _ADDED:
                    if name not in have:
                        db.execute(f"ALTER TABLE quantum_jobs ADD COLUMN {name} {kind}")
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def aclose(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(thread, self._close)
        thread.shutdown(wait=True)

    # ------------------------------------------------------------ the SQL (database thread)
    def _insert(self, row: JobRow, events: bytes, error: bytes | None) -> None:
        try:
            self._conn().execute(
                f"INSERT INTO quantum_jobs ({_COLUMNS}, result) VALUES "  # noqa: S608 - fixed names
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    events,
                    error,
                    row.owner,
                    row.lease_until,
                    int(row.cancel_requested),
                    row.result,
                ),
            )
        except sqlite3.IntegrityError as exc:
            # SQLite names the columns of the broken rule: "... failed: quantum_jobs.id".
            text = str(exc)
            if text.startswith("UNIQUE constraint failed"):
                if text.endswith("quantum_jobs.id"):
                    raise Conflict(
                        f"quantum job {row.id} exists already", code=CONFLICT_JOB_ID
                    ) from exc
                raise Conflict(
                    "another job of the namespace holds this Idempotency-Key",
                    code=CONFLICT_IDEMPOTENCY_KEY,
                ) from exc
            raise

    def _get(self, job_id: str, with_result: bool) -> JobRow | None:
        cols = _COLUMNS + (", result" if with_result else "")
        values = (
            self._conn()
            .execute(
                f"SELECT {cols} FROM quantum_jobs WHERE id = ?",  # noqa: S608 - fixed names
                (job_id,),
            )
            .fetchone()
        )
        if values is None:
            return None
        return _row(values[:_NCOLS], values[_NCOLS] if with_result else None)

    def _by_idempotency_key(self, namespace: str, key: str) -> JobRow | None:
        values = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS} FROM quantum_jobs "  # noqa: S608 - fixed names
                "WHERE namespace = ? AND idempotency_key = ?",
                (namespace, key),
            )
            .fetchone()
        )
        return None if values is None else _row(values, None)

    def _list_jobs(self, namespace: str, state: str | None, limit: int) -> list[JobRow]:
        sql = f"SELECT {_COLUMNS} FROM quantum_jobs WHERE namespace = ?"  # noqa: S608
        args: list[Any] = [namespace]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit)
        return [_row(values, None) for values in self._conn().execute(sql, args)]

    def _active(self) -> list[JobRow]:
        cur = self._conn().execute(
            f"SELECT {_COLUMNS} FROM quantum_jobs "  # noqa: S608 - fixed names
            "WHERE state IN ('queued', 'running', 'cancelling') ORDER BY created_at, id"
        )
        return [_row(values, None) for values in cur]

    def _update(
        self,
        job_id: str,
        state: str,
        events: bytes,
        started_at: float | None,
        finished_at: float | None,
        attempts: int | None,
        error: bytes | None,
        result: bytes | None,
        owner: str | None,
    ) -> bool:
        # The terminal guard and the fence are in the statement itself: no read-then-write.
        cur = self._conn().execute(
            "UPDATE quantum_jobs SET state = ?, events = ?, "
            "started_at = COALESCE(?, started_at), finished_at = COALESCE(?, finished_at), "
            "attempts = COALESCE(?, attempts), error = COALESCE(?, error), "
            "result = COALESCE(?, result) "
            "WHERE id = ? AND state NOT IN ('succeeded', 'failed', 'cancelled') "
            "AND (? IS NULL OR owner = ?)",
            (
                state,
                events,
                started_at,
                finished_at,
                attempts,
                error,
                result,
                job_id,
                owner,
                owner,
            ),
        )
        return cur.rowcount == 1

    def _claim(self, job_id: str, owner: str, until: float, now: float) -> bool:
        cur = self._conn().execute(
            "UPDATE quantum_jobs SET owner = ?, lease_until = ? "
            "WHERE id = ? AND state IN ('queued', 'running', 'cancelling') "
            "AND (owner IS NULL OR owner = ? OR lease_until < ?)",
            (owner, until, job_id, owner, now),
        )
        return cur.rowcount == 1

    def _renew(self, owner: str, until: float) -> list[str]:
        db = self._conn()
        db.execute(
            "UPDATE quantum_jobs SET lease_until = ? "
            "WHERE owner = ? AND state IN ('queued', 'running', 'cancelling')",
            (until, owner),
        )
        cur = db.execute(
            "SELECT id FROM quantum_jobs WHERE owner = ? AND cancel_requested = 1 "
            "AND state IN ('queued', 'running', 'cancelling') ORDER BY created_at, id",
            (owner,),
        )
        return [r[0] for r in cur]

    def _request_cancel(self, job_id: str) -> bool:
        cur = self._conn().execute(
            "UPDATE quantum_jobs SET cancel_requested = 1 "
            "WHERE id = ? AND state IN ('queued', 'running', 'cancelling')",
            (job_id,),
        )
        return cur.rowcount == 1

    def _disown(self, owner: str) -> None:
        self._conn().execute(
            "UPDATE quantum_jobs SET owner = NULL, lease_until = NULL WHERE owner = ?", (owner,)
        )

    # ------------------------------------------------------------ the interface
    # JSON is encoded here, before the hop: the thread never reads the caller's lists,
    # which the caller may go on changing.
    async def insert(self, row: JobRow) -> None:
        await self._call(self._insert, row, orjson.dumps(row.events), _json(row.error))

    async def get(self, job_id: str, *, with_result: bool = True) -> JobRow | None:
        return await self._call(self._get, job_id, with_result)

    async def by_idempotency_key(self, namespace: str, key: str) -> JobRow | None:
        return await self._call(self._by_idempotency_key, namespace, key)

    async def list_jobs(self, namespace: str, state: str | None, limit: int) -> list[JobRow]:
        return await self._call(self._list_jobs, namespace, state, limit)

    async def active(self) -> list[JobRow]:
        return await self._call(self._active)

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
        return await self._call(
            self._update,
            job_id,
            state,
            orjson.dumps(events),
            started_at,
            finished_at,
            attempts,
            _json(error),
            result,
            owner,
        )

    async def claim(self, job_id: str, owner: str, until: float, now: float) -> bool:
        return await self._call(self._claim, job_id, owner, until, now)

    async def renew(self, owner: str, until: float) -> list[str]:
        return await self._call(self._renew, owner, until)

    async def request_cancel(self, job_id: str) -> bool:
        return await self._call(self._request_cancel, job_id)

    async def disown(self, owner: str) -> None:
        await self._call(self._disown, owner)
