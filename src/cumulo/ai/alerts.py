"""Anomaly alerts, kept in their own SQLite file: `<data-dir>/insights.db`.

Apart from cumulo.db on purpose: alerts are derived, append-mostly data that a flood of
anomalies must never slow the platform's own store down, and the file can be deleted to
start afresh. Every alert is also recorded in the tamper-evident audit log (insights.py),
which is the durable record; this table is what `GET /v1/alerts` lists. Rows hold metadata
only (entity, counts, score), never a body or a credential.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

MAX_ALERTS = 100_000  # oldest dropped beyond this

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    entity TEXT NOT NULL,
    reasons TEXT NOT NULL,
    score REAL NOT NULL,
    window_start REAL NOT NULL,
    window_s REAL NOT NULL,
    observed TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ns_ts ON alerts (namespace, ts);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
"""


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    ts: float
    namespace: str  # "*": platform-wide (an anonymous source, the admin key)
    kind: str  # "caller" or "function"
    entity: str  # key id, "source:ADDR" or "namespace/function"
    reasons: list[str]  # rate_spike, error_storm, auth_failures, many_functions, latency
    score: float
    window_start: float
    window_s: float
    observed: dict[str, Any]  # the window's counts

    @staticmethod
    def new(**fields: Any) -> Alert:
        return Alert(id="alr_" + uuid.uuid4().hex[:16], **fields)

    def public(self) -> dict[str, Any]:
        return asdict(self)


class AlertStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            self.path.chmod(0o600)
        return self._db

    def add_sync(self, alerts: list[Alert]) -> None:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        a.id,
                        a.ts,
                        a.namespace,
                        a.kind,
                        a.entity,
                        orjson.dumps(a.reasons).decode(),
                        a.score,
                        a.window_start,
                        a.window_s,
                        orjson.dumps(a.observed).decode(),
                    )
                    for a in alerts
                ],
            )
            db.execute(
                "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts ORDER BY ts DESC "
                "LIMIT -1 OFFSET ?)",
                (MAX_ALERTS,),
            )
            db.execute("COMMIT")

    def list_sync(self, namespace: str | None, since: float | None, limit: int) -> list[Alert]:
        """Newest first; `namespace` None: every namespace."""
        where: list[str] = []
        args: list[str | float] = []
        if namespace is not None:
            where.append("namespace = ?")
            args.append(namespace)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        sql = "SELECT * FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC LIMIT ?"
        with self._lock:
            if self._db is None and not self.path.exists():
                return []
            rows = self._conn().execute(sql, (*args, limit)).fetchall()
        return [
            Alert(
                id=r[0],
                ts=r[1],
                namespace=r[2],
                kind=r[3],
                entity=r[4],
                reasons=list(orjson.loads(r[5])),
                score=r[6],
                window_start=r[7],
                window_s=r[8],
                observed=dict(orjson.loads(r[9])),
            )
            for r in rows
        ]

    async def add(self, alerts: list[Alert]) -> None:
        await asyncio.to_thread(self.add_sync, alerts)

    async def list(
        self, namespace: str | None, since: float | None = None, limit: int = 100
    ) -> list[Alert]:
        return await asyncio.to_thread(self.list_sync, namespace, since, limit)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
