"""`AlertRepository` over its own SQLite file, `<data-dir>/insights.db`.

The file and its schema are the ones cumulo.ai.alerts kept before the seam: an existing
data directory keeps its alerts. One connection, opened on first use (a platform that never
raises an alert never creates the file), used from worker threads under a lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson

from cumulo.errors import Conflict
from cumulo.store.alerts import MAX_ALERTS, Alert, AlertRepository

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

_COLUMNS = "id, ts, namespace, kind, entity, reasons, score, window_start, window_s, observed"
# rowid breaks ties in ts: it grows with each insert, and both indexes end in it.
_NEWEST_FIRST = "ORDER BY ts DESC, rowid DESC"


def _row(a: Alert) -> tuple[Any, ...]:
    return (
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


def _alert(r: tuple[Any, ...]) -> Alert:
    return Alert(
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


class SQLiteAlertRepository(AlertRepository):
    """The embedded backend. `max_alerts`: how many of the newest are kept."""

    def __init__(self, path: Path, *, max_alerts: int = MAX_ALERTS) -> None:
        self.path = path
        self.max_alerts = max_alerts
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            self.path.chmod(0o600)
        return self._db

    def _add(self, alerts: list[Alert]) -> None:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")
            try:
                db.executemany(
                    f"INSERT INTO alerts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    [_row(a) for a in alerts],
                )
                db.execute(
                    f"DELETE FROM alerts WHERE rowid IN (SELECT rowid FROM alerts {_NEWEST_FIRST} "  # noqa: S608
                    "LIMIT -1 OFFSET ?)",
                    (self.max_alerts,),
                )
            except sqlite3.IntegrityError as exc:
                # Roll back, or the connection would stay inside this transaction.
                db.execute("ROLLBACK")
                raise Conflict("an alert with that id exists already", code="alert_exists") from exc
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _list(self, namespace: str | None, since: float | None, limit: int) -> list[Alert]:
        where: list[str] = []
        args: list[str | float] = []
        if namespace is not None:
            where.append("namespace = ?")
            args.append(namespace)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        sql = f"SELECT {_COLUMNS} FROM alerts"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" {_NEWEST_FIRST} LIMIT ?"
        with self._lock:
            if self._db is None and not self.path.exists():
                return []
            rows = self._conn().execute(sql, (*args, limit)).fetchall()
        return [_alert(r) for r in rows]

    async def add(self, alerts: list[Alert]) -> None:
        if alerts:
            await asyncio.to_thread(self._add, alerts)

    async def list(
        self, namespace: str | None, since: float | None = None, limit: int = 100
    ) -> list[Alert]:
        return await asyncio.to_thread(self._list, namespace, since, limit)

    def close(self) -> None:
        """Close the connection (a later call opens it again)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def aclose(self) -> None:
        self.close()
