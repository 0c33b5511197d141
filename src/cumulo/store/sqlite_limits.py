"""`LimitRepository` on SQLite: its own small database (`limits.db` in the data dir), so
the gateways of one machine share it without taking cumulo.db's write lock ten times a
second each.

WAL lets readers and the one writer proceed together; each exchange is one short
`BEGIN IMMEDIATE` transaction on the repository's own connection, off the event loop.
The rows are ephemeral (a lost one costs at most one sync interval of accuracy), so the
database is not fsynced on every commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cumulo.errors import StoreUnavailable
from cumulo.store.limits import (
    KEEP_WINDOWS,
    Clock,
    LimitExchange,
    LimitRepository,
    LimitTotals,
    check_exchange,
    window_of,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS limit_usage (
    key TEXT NOT NULL, win INTEGER NOT NULL, gateway TEXT NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (key, win, gateway));
CREATE INDEX IF NOT EXISTS limit_usage_by_win ON limit_usage (win);
CREATE TABLE IF NOT EXISTS limit_inflight (
    gateway TEXT NOT NULL, namespace TEXT NOT NULL, inflight INTEGER NOT NULL,
    expires_at REAL NOT NULL, PRIMARY KEY (gateway, namespace));
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 2000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.executescript(SCHEMA)
    return conn


class SQLiteLimitRepository(LimitRepository):
    """The database at `path` (created with its tables on first use); `clock`: epoch
    seconds (the gateways of one machine share its clock)."""

    def __init__(self, path: Path, clock: Clock = time.time) -> None:
        self.path = path
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = _connect(self.path)
        return self._conn

    async def exchange(self, report: LimitExchange) -> LimitTotals:
        check_exchange(report)
        return await self._run(self._exchange, report)

    def _exchange(self, report: LimitExchange) -> LimitTotals:
        now = self._clock()
        window = window_of(now)
        gateway = report.gateway
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM limit_usage WHERE win < ?", (window - KEEP_WINDOWS + 1,))
                db.execute("DELETE FROM limit_inflight WHERE expires_at <= ?", (now,))
                db.executemany(
                    "INSERT INTO limit_usage (key, win, gateway, used) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key, win, gateway) DO UPDATE SET used = used + excluded.used",
                    [(key, window, gateway, n) for key, n in sorted(report.used.items()) if n],
                )
                db.execute("DELETE FROM limit_inflight WHERE gateway = ?", (gateway,))
                db.executemany(
                    "INSERT INTO limit_inflight (gateway, namespace, inflight, expires_at) "
                    "VALUES (?, ?, ?, ?)",
                    [
                        (gateway, ns, n, now + report.ttl_s)
                        for ns, n in sorted(report.inflight.items())
                        if n
                    ],
                )
                used = db.execute(
                    "SELECT key, win, SUM(used) FROM limit_usage WHERE gateway <> ? "
                    "GROUP BY key, win",
                    (gateway,),
                ).fetchall()
                inflight = db.execute(
                    "SELECT namespace, SUM(inflight) FROM limit_inflight "
                    "WHERE gateway <> ? AND expires_at > ? GROUP BY namespace",
                    (gateway, now),
                ).fetchall()
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return LimitTotals(
            {(str(k), int(w)): int(n) for k, w, n in used},
            {str(ns): int(n) for ns, n in inflight},
        )

    async def leave(self, gateway: str) -> None:
        await self._run(self._leave, gateway)

    def _leave(self, gateway: str) -> None:
        with self._lock:
            self._db().execute("DELETE FROM limit_inflight WHERE gateway = ?", (gateway,))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn` off the event loop; the driver's errors become StoreUnavailable."""
        try:
            return await asyncio.to_thread(fn, *args)
        except OverflowError as exc:  # sqlite3 binds integers as 64-bit
            raise ValueError(f"a count does not fit a signed 64-bit integer ({exc})") from exc
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the limits database is unavailable: {exc}") from exc

    async def aclose(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
