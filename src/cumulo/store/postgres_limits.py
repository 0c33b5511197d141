"""`LimitRepository` on PostgreSQL (migration 12 in store/postgres.py), over the pool of
`PostgresStore`: gateways on many machines exchange their limit usage in one database.

Clock: by default every exchange's `now` is the database's `clock_timestamp()`, read in
its transaction, so windows and in-flight expiries are on one clock whatever the gateways'
clocks say; `clock` (the conformance suite's fake) uses the caller's time instead.

Locking: a gateway writes only its own rows, and the pruning of old rows skips rows
another transaction holds (`FOR UPDATE SKIP LOCKED`, left for the next exchange), so
exchanges from several gateways never wait for each other and cannot deadlock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from cumulo.store.limits import (
    KEEP_WINDOWS,
    Clock,
    LimitExchange,
    LimitRepository,
    LimitTotals,
    check_exchange,
    window_of,
)

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore

_PRUNE_USAGE = """
DELETE FROM limit_usage WHERE ctid IN (
    SELECT ctid FROM limit_usage WHERE win < %s FOR UPDATE SKIP LOCKED)
"""
_PRUNE_INFLIGHT = """
DELETE FROM limit_inflight WHERE ctid IN (
    SELECT ctid FROM limit_inflight WHERE expires_at <= %s FOR UPDATE SKIP LOCKED)
"""
_ADD_USAGE = """
INSERT INTO limit_usage AS u (key, win, gateway, used) VALUES (%s, %s, %s, %s)
ON CONFLICT (key, win, gateway) DO UPDATE SET used = u.used + excluded.used
"""
_OTHERS_USAGE = """
SELECT key, win, SUM(used)::bigint FROM limit_usage WHERE gateway <> %s GROUP BY key, win
"""
_OTHERS_INFLIGHT = """
SELECT namespace, SUM(inflight)::bigint FROM limit_inflight
WHERE gateway <> %s AND expires_at > %s GROUP BY namespace
"""


class PostgresLimitRepository(LimitRepository):
    """Shared limits on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore, clock: Clock | None = None) -> None:
        self.store = store
        self._clock = clock  # None: the database's clock

    async def exchange(self, report: LimitExchange) -> LimitTotals:
        check_exchange(report)
        gateway = report.gateway
        try:
            async with (
                self.store.connection() as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                if self._clock is None:
                    await cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
                    row = await cur.fetchone()
                    now = float(row[0]) if row else 0.0
                else:
                    now = self._clock()
                window = window_of(now)
                await cur.execute(_PRUNE_USAGE, (window - KEEP_WINDOWS + 1,))
                await cur.execute(_PRUNE_INFLIGHT, (now,))
                used = [(k, window, gateway, n) for k, n in sorted(report.used.items()) if n]
                if used:
                    await cur.executemany(_ADD_USAGE, used)
                await cur.execute("DELETE FROM limit_inflight WHERE gateway = %s", (gateway,))
                inflight = [
                    (gateway, ns, n, now + report.ttl_s)
                    for ns, n in sorted(report.inflight.items())
                    if n
                ]
                if inflight:
                    await cur.executemany(
                        "INSERT INTO limit_inflight (gateway, namespace, inflight, expires_at) "
                        "VALUES (%s, %s, %s, %s)",
                        inflight,
                    )
                await cur.execute(_OTHERS_USAGE, (gateway,))
                others_used = {(str(k), int(w)): int(n) for k, w, n in await cur.fetchall()}
                await cur.execute(_OTHERS_INFLIGHT, (gateway, now))
                others_inflight = {str(ns): int(n) for ns, n in await cur.fetchall()}
        except psycopg.errors.NumericValueOutOfRange as exc:
            raise ValueError(f"a count does not fit a signed 64-bit integer ({exc})") from exc
        return LimitTotals(others_used, others_inflight)

    async def leave(self, gateway: str) -> None:
        async with self.store.connection() as conn:
            await conn.execute("DELETE FROM limit_inflight WHERE gateway = %s", (gateway,))
