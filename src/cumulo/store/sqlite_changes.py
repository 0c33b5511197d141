"""`ChangeFeed` on SQLite: gateways that share one data dir (one machine) share a
`control_changes` table in its database.

Each subscription reads the rows after the last one it saw every `poll_s` on its own
connection, off the event loop. Writers are serialised by SQLite and the sequence is
AUTOINCREMENT, so a reader never sees a later row before an earlier one: a gap in what it
reads means the rows were pruned before it read them, and it yields RESYNC.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

from cumulo.errors import StoreUnavailable
from cumulo.store.changes import RESYNC, Change, ChangeFeed, Subscription

SCHEMA = """
CREATE TABLE IF NOT EXISTS control_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, namespace TEXT NOT NULL,
    name TEXT NOT NULL, at REAL NOT NULL)
"""
KEEP_ROWS = 10_000  # a subscriber this far behind resyncs
BATCH = 500


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute(SCHEMA)
    return conn


class SQLiteChangeFeed(ChangeFeed):
    """The feed in the database at `path` (the platform's cumulo.db)."""

    def __init__(self, path: Path, *, poll_s: float = 0.1) -> None:
        self.path = path
        self.poll_s = poll_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _publish(self, change: Change) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = _connect(self.path)
            with self._conn:  # one transaction: the row and the pruning
                self._conn.execute("BEGIN IMMEDIATE")
                cur = self._conn.execute(
                    "INSERT INTO control_changes (topic, namespace, name, at) VALUES (?,?,?,?)",
                    (change.topic, change.namespace, change.name, time.time()),
                )
                self._conn.execute(
                    "DELETE FROM control_changes WHERE seq <= ?",
                    ((cur.lastrowid or 0) - KEEP_ROWS,),
                )

    async def publish(self, change: Change) -> None:
        try:
            await asyncio.to_thread(self._publish, change)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the database is unavailable: {exc}") from exc

    async def subscribe(self) -> Subscription:
        try:
            conn = await asyncio.to_thread(_connect, self.path)
            row = await asyncio.to_thread(
                lambda: conn.execute("SELECT coalesce(max(seq), 0) FROM control_changes").fetchone()
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the database is unavailable: {exc}") from exc
        return _SQLiteSubscription(conn, int(row[0]) if row else 0, self.poll_s)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _SQLiteSubscription(Subscription):
    def __init__(self, conn: sqlite3.Connection, last: int, poll_s: float) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._last = last
        self._poll_s = poll_s
        self._ready: list[Change] = []

    def _read(self) -> list[tuple[int, str, str, str]]:
        assert self._conn is not None
        return [
            (int(r[0]), r[1], r[2], r[3])
            for r in self._conn.execute(
                "SELECT seq, topic, namespace, name FROM control_changes WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (self._last, BATCH),
            )
        ]

    async def next(self) -> Change:
        while not self._ready:
            if self._conn is None:
                raise RuntimeError("the subscription is closed")
            try:
                rows = await asyncio.to_thread(self._read)
            except sqlite3.Error:
                rows = []  # locked or briefly unreadable: nothing is lost, read again
            if rows and rows[0][0] != self._last + 1:
                self._ready.append(RESYNC)
            for seq, topic, namespace, name in rows:
                self._last = seq
                with contextlib.suppress(ValueError):  # a topic a newer cumulo wrote
                    self._ready.append(Change(topic, namespace, name))
            if not self._ready:
                await asyncio.sleep(self._poll_s)
        return self._ready.pop(0)

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
