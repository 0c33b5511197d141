"""Quantum jobs on disk: one SQLite file, `<data_dir>/quantum.db`.

Blocking calls; the service runs them on its own single database thread. Terminal states
(succeeded, failed, cancelled) are never overwritten: every state change is guarded in SQL.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running", "cancelling")

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
    result BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS quantum_jobs_idempotency
    ON quantum_jobs(namespace, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS quantum_jobs_namespace ON quantum_jobs(namespace, created_at);
CREATE INDEX IF NOT EXISTS quantum_jobs_state ON quantum_jobs(state);
"""


@dataclass(slots=True)
class JobRow:
    id: str
    namespace: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    idempotency_key: str | None
    request_hash: str
    request: bytes
    method: str | None
    device: str | None
    estimated_bytes: int | None
    num_pubs: int
    seed: int
    timeout_s: float
    attempts: int
    events: list[dict[str, Any]]
    error: dict[str, str] | None
    result: bytes | None  # JSON, kept encoded: the API sends it on as it is


_COLUMNS = (
    "id, namespace, state, created_at, started_at, finished_at, idempotency_key, request_hash, "
    "request, method, device, estimated_bytes, num_pubs, seed, timeout_s, attempts, events, error"
)


def _row(values: tuple[Any, ...], result: bytes | None) -> JobRow:
    events = orjson.loads(values[16])
    error = orjson.loads(values[17]) if values[17] is not None else None
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
        events=events,
        error=error,
        result=result,
    )


class DuplicateKey(Exception):
    """Another job of the namespace already holds this Idempotency-Key."""


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection used from one thread at a time (the service's database thread).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def insert(self, row: JobRow) -> None:
        try:
            self._db.execute(
                f"INSERT INTO quantum_jobs ({_COLUMNS}) VALUES "  # noqa: S608 - fixed names
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    orjson.dumps(row.events),
                    orjson.dumps(row.error) if row.error is not None else None,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise DuplicateKey(row.idempotency_key or row.id) from exc

    def get(self, job_id: str, *, with_result: bool = True) -> JobRow | None:
        cols = _COLUMNS + (", result" if with_result else "")
        cur = self._db.execute(
            f"SELECT {cols} FROM quantum_jobs WHERE id = ?",  # noqa: S608 - fixed names
            (job_id,),
        )
        values = cur.fetchone()
        if values is None:
            return None
        return _row(values[:18], values[18] if with_result else None)

    def by_idempotency_key(self, namespace: str, key: str) -> JobRow | None:
        cur = self._db.execute(
            "SELECT id FROM quantum_jobs WHERE namespace = ? AND idempotency_key = ?",
            (namespace, key),
        )
        found = cur.fetchone()
        return self.get(found[0], with_result=False) if found else None

    def list_jobs(self, namespace: str, state: str | None, limit: int) -> list[JobRow]:
        sql = f"SELECT {_COLUMNS} FROM quantum_jobs WHERE namespace = ?"  # noqa: S608
        args: list[Any] = [namespace]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit)
        return [_row(values, None) for values in self._db.execute(sql, args)]

    def active(self) -> list[JobRow]:
        cur = self._db.execute(
            f"SELECT {_COLUMNS} FROM quantum_jobs "  # noqa: S608 - fixed names
            "WHERE state IN ('queued', 'running', 'cancelling') ORDER BY created_at, id"
        )
        return [_row(values, None) for values in cur]

    def update(
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
    ) -> bool:
        """Move a job to `state`; False (and no change) if it is already terminal."""
        cur = self._db.execute(
            "UPDATE quantum_jobs SET state = ?, events = ?, "
            "started_at = COALESCE(?, started_at), finished_at = COALESCE(?, finished_at), "
            "attempts = COALESCE(?, attempts), error = COALESCE(?, error), "
            "result = COALESCE(?, result) "
            "WHERE id = ? AND state NOT IN ('succeeded', 'failed', 'cancelled')",
            (
                state,
                orjson.dumps(events),
                started_at,
                finished_at,
                attempts,
                orjson.dumps(error) if error is not None else None,
                result,
                job_id,
            ),
        )
        return cur.rowcount == 1
