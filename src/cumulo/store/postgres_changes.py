"""`ChangeFeed` on PostgreSQL: NOTIFY on the `cumulo_changes` channel, a control epoch
for what NOTIFY cannot promise.

A publish bumps the one-row `control_epoch` table and sends `pg_notify` in one
transaction, so the notification leaves at commit carrying the epoch it made. Each
subscription holds its own connection (LISTEN cannot share a pooled one) and remembers the
newest epoch it saw. Notifications sent while a listener is disconnected are lost, so a
listener yields RESYNC after every reconnect, and compares the epoch every `check_s`: an
epoch newer than any notification it saw means one went missing (RESYNC too).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import psycopg

from cumulo.errors import StoreUnavailable
from cumulo.store.changes import RESYNC, Change, ChangeFeed, Subscription
from cumulo.store.postgres import PostgresStore, _unavailable

CHANNEL = "cumulo_changes"
RECONNECT_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # back-off between attempts, then 2 s each


class PostgresChangeFeed(ChangeFeed):
    def __init__(self, store: PostgresStore, *, check_s: float = 2.0) -> None:
        self.store = store
        self.check_s = check_s

    async def publish(self, change: Change) -> None:
        async with self.store.connection() as conn, conn.transaction():
            cur = await conn.execute("UPDATE control_epoch SET epoch = epoch + 1 RETURNING epoch")
            row = await cur.fetchone()
            epoch = int(row[0]) if row else 0
            payload = {"t": change.topic, "ns": change.namespace, "n": change.name, "e": epoch}
            await conn.execute(
                "SELECT pg_notify(%s, %s)", (CHANNEL, orjson.dumps(payload).decode())
            )

    async def subscribe(self) -> Subscription:
        subscription = _PostgresSubscription(self.store.dsn, self.check_s)
        await subscription.connect()
        subscription.start()
        return subscription


async def _read_epoch(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT epoch FROM control_epoch")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


class _PostgresSubscription(Subscription):
    def __init__(self, dsn: str, check_s: float) -> None:
        self._dsn = dsn
        self._check_s = check_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._seen = 0
        self._queue: asyncio.Queue[Change] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """LISTEN on a connection of our own; StoreUnavailable when the server is out of
        reach. Changes committed after this returns are seen."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=5
            )
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                self._seen = await _read_epoch(conn)
            except BaseException:
                await conn.close()
                raise
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc
        self._conn = conn

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen_forever())

    async def _listen_forever(self) -> None:
        failures = 0
        while True:
            try:
                if self._conn is None:
                    await self.connect()
                    failures = 0
                    self._queue.put_nowait(RESYNC)  # what was sent meanwhile is lost
                await self._listen(self._conn)  # type: ignore[arg-type]
            except (psycopg.Error, StoreUnavailable):
                conn, self._conn = self._conn, None
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
                await asyncio.sleep(RECONNECT_S[min(failures, len(RECONNECT_S) - 1)])
                failures += 1

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            async for notify in conn.notifies(timeout=self._check_s):
                change = self._parse(notify.payload)
                if change is not None:
                    self._queue.put_nowait(change)
            epoch = await _read_epoch(conn)
            if epoch > self._seen:
                self._seen = epoch
                self._queue.put_nowait(RESYNC)

    def _parse(self, payload: str) -> Change | None:
        try:
            data = orjson.loads(payload)
            self._seen = max(self._seen, int(data["e"]))
            return Change(str(data["t"]), str(data["ns"]), str(data["n"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # not ours, or a topic a newer cumulo sends: the epoch still counts

    async def next(self) -> Change:
        return await self._queue.get()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
