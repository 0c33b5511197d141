"""`MeteringRepository` on PostgreSQL (migration 2 in store/postgres.py), over the pool of
`PostgresStore`: several gateways flush into one database, and their deltas add up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from cumulo.store.metering import (
    MeteringRepository,
    MonthUsage,
    Quota,
    UsageDelta,
    UsageRow,
    int64_error,
)

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore

# `INSERT … ON CONFLICT DO UPDATE` is atomic per row under concurrency: a writer that meets
# a row another transaction is writing waits for it, then adds to what that one committed.
UPSERT = """
INSERT INTO usage_hourly AS u (namespace, function, hour, invocations, errors, gb_seconds,
    cpu_seconds, wall_seconds, bytes_in, bytes_out, peak_rss_mb)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (namespace, function, hour) DO UPDATE SET
    invocations = u.invocations + excluded.invocations,
    errors = u.errors + excluded.errors,
    gb_seconds = u.gb_seconds + excluded.gb_seconds,
    cpu_seconds = u.cpu_seconds + excluded.cpu_seconds,
    wall_seconds = u.wall_seconds + excluded.wall_seconds,
    bytes_in = u.bytes_in + excluded.bytes_in,
    bytes_out = u.bytes_out + excluded.bytes_out,
    peak_rss_mb = GREATEST(u.peak_rss_mb, excluded.peak_rss_mb)
"""

# SUM(bigint) is numeric in PostgreSQL: cast back, so rows hold ints as on SQLite. COLLATE
# "C" orders by code points (UTF-8 bytes), whatever the database's locale.
_BY_FUNCTION = """
SELECT namespace, function, NULL, SUM(invocations)::bigint, SUM(errors)::bigint,
    SUM(gb_seconds), SUM(cpu_seconds), SUM(bytes_in)::bigint, SUM(bytes_out)::bigint,
    SUM(wall_seconds), MAX(peak_rss_mb)
FROM usage_hourly WHERE hour >= %s AND hour < %s {only}
GROUP BY namespace, function ORDER BY namespace COLLATE "C", function COLLATE "C"
"""
_BY_HOUR = """
SELECT namespace, function, hour, invocations, errors, gb_seconds, cpu_seconds, bytes_in,
    bytes_out, wall_seconds, peak_rss_mb
FROM usage_hourly WHERE hour >= %s AND hour < %s {only}
ORDER BY hour, namespace COLLATE "C", function COLLATE "C"
"""
# Two fixed texts per query rather than `%s IS NULL OR …`: the namespace filter then uses
# the primary key's index, and no NULL parameter needs a type.
_ONLY = "AND namespace = %s"
BY_FUNCTION_ALL, BY_FUNCTION_ONE = (_BY_FUNCTION.format(only=o) for o in ("", _ONLY))
BY_HOUR_ALL, BY_HOUR_ONE = (_BY_HOUR.format(only=o) for o in ("", _ONLY))


def _out_of_range(exc: psycopg.Error) -> ValueError:
    return int64_error((str(exc).strip().splitlines() or [type(exc).__name__])[0])


class PostgresMeteringRepository(MeteringRepository):
    """Metering on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    # ------------------------------------------------------------ usage
    async def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        if not deltas:
            return
        # Rows are written (and so locked, to commit) in one order by every gateway: two
        # flushes touching the same rows wait for each other instead of deadlocking.
        ordered = sorted(deltas, key=lambda d: (d.namespace, d.function, d.hour))
        rows = [
            (
                d.namespace,
                d.function,
                d.hour,
                d.invocations,
                d.errors,
                d.gb_seconds,
                d.cpu_seconds,
                d.wall_seconds,
                d.bytes_in,
                d.bytes_out,
                d.peak_rss_mb,
            )
            for d in ordered
        ]
        try:
            async with (
                self.store.connection() as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                await cur.executemany(UPSERT, rows)
        except psycopg.errors.NumericValueOutOfRange as exc:
            raise _out_of_range(exc) from exc

    async def month_to_date(self, month_start: int) -> dict[str, MonthUsage]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT namespace, SUM(invocations)::bigint, SUM(gb_seconds) FROM usage_hourly "
                "WHERE hour >= %s GROUP BY namespace",
                (month_start,),
            )
            rows = await cur.fetchall()
        return {ns: MonthUsage(int(inv), float(gbs)) for ns, inv, gbs in rows}

    async def usage_by_function(
        self, since: int, until: int, namespace: str | None = None
    ) -> list[UsageRow]:
        sql = BY_FUNCTION_ALL if namespace is None else BY_FUNCTION_ONE
        return await self._query(sql, since, until, namespace)

    async def usage_by_hour(
        self, since: int, until: int, namespace: str | None = None
    ) -> list[UsageRow]:
        sql = BY_HOUR_ALL if namespace is None else BY_HOUR_ONE
        return await self._query(sql, since, until, namespace)

    async def _query(
        self, sql: str, since: int, until: int, namespace: str | None
    ) -> list[UsageRow]:
        params: tuple[Any, ...] = (since, until) if namespace is None else (since, until, namespace)
        async with self.store.connection() as conn:
            cur = await conn.execute(sql.encode(), params)
            rows = await cur.fetchall()
        return [
            UsageRow(
                r[0],
                r[1],
                None if r[2] is None else int(r[2]),
                int(r[3]),
                int(r[4]),
                float(r[5]),
                float(r[6]),
                int(r[7]),
                int(r[8]),
                float(r[9]),
                float(r[10]),
            )
            for r in rows
        ]

    # ------------------------------------------------------------ quotas
    async def set_quota(self, namespace: str, quota: Quota, now: float) -> None:
        try:
            async with self.store.connection() as conn:
                if quota.empty:
                    await conn.execute(
                        "DELETE FROM metering_quotas WHERE namespace = %s", (namespace,)
                    )
                    return
                await conn.execute(
                    "INSERT INTO metering_quotas (namespace, gb_seconds, invocations, updated_at) "
                    "VALUES (%s, %s::float8, %s::bigint, %s) "
                    "ON CONFLICT (namespace) DO UPDATE SET gb_seconds = excluded.gb_seconds, "
                    "invocations = excluded.invocations, updated_at = excluded.updated_at",
                    (namespace, quota.gb_seconds, quota.invocations, now),
                )
        except psycopg.errors.NumericValueOutOfRange as exc:
            raise _out_of_range(exc) from exc

    async def all_quotas(self) -> dict[str, Quota]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT namespace, gb_seconds, invocations FROM metering_quotas"
            )
            rows = await cur.fetchall()
        return {ns: Quota(gbs, None if inv is None else int(inv)) for ns, gbs, inv in rows}
