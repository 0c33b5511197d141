"""`MeteringRepository` in the platform's SQLite database (`SQLiteStore`): every call runs
on the store's database thread (`store.call`). The tables and their SQL are the ones
metering always used, so an existing data directory keeps its usage and quotas."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from cumulo.store.metering import (
    MeteringRepository,
    MonthUsage,
    Quota,
    UsageDelta,
    UsageRow,
    int64_error,
)
from cumulo.store.sqlite import SQLiteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_hourly (
    namespace TEXT NOT NULL, function TEXT NOT NULL, hour INTEGER NOT NULL,
    invocations INTEGER NOT NULL, errors INTEGER NOT NULL, gb_seconds REAL NOT NULL,
    cpu_seconds REAL NOT NULL, wall_seconds REAL NOT NULL, bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL, peak_rss_mb REAL NOT NULL,
    PRIMARY KEY (namespace, function, hour));
CREATE INDEX IF NOT EXISTS usage_hourly_by_hour ON usage_hourly (hour);
CREATE TABLE IF NOT EXISTS quotas (
    namespace TEXT PRIMARY KEY, gb_seconds REAL, invocations INTEGER, updated_at REAL NOT NULL);
"""

# Deltas add to what is there (nothing is rewritten), inside one transaction per call.
UPSERT = """
INSERT INTO usage_hourly (namespace, function, hour, invocations, errors, gb_seconds,
    cpu_seconds, wall_seconds, bytes_in, bytes_out, peak_rss_mb)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (namespace, function, hour) DO UPDATE SET
    invocations = invocations + excluded.invocations,
    errors = errors + excluded.errors,
    gb_seconds = gb_seconds + excluded.gb_seconds,
    cpu_seconds = cpu_seconds + excluded.cpu_seconds,
    wall_seconds = wall_seconds + excluded.wall_seconds,
    bytes_in = bytes_in + excluded.bytes_in,
    bytes_out = bytes_out + excluded.bytes_out,
    peak_rss_mb = max(peak_rss_mb, excluded.peak_rss_mb)
"""

# Hours in [since, until); namespace NULL: every namespace. SQLite's default BINARY
# collation compares UTF-8 bytes, which orders as code points do.
BY_FUNCTION = """
SELECT namespace, function, NULL, SUM(invocations), SUM(errors), SUM(gb_seconds),
    SUM(cpu_seconds), SUM(bytes_in), SUM(bytes_out), SUM(wall_seconds), MAX(peak_rss_mb)
FROM usage_hourly WHERE hour >= ? AND hour < ? AND (? IS NULL OR namespace = ?)
GROUP BY namespace, function ORDER BY namespace, function
"""
BY_HOUR = """
SELECT namespace, function, hour, invocations, errors, gb_seconds, cpu_seconds, bytes_in,
    bytes_out, wall_seconds, peak_rss_mb
FROM usage_hourly WHERE hour >= ? AND hour < ? AND (? IS NULL OR namespace = ?)
ORDER BY hour, namespace, function
"""


class SQLiteMeteringRepository(MeteringRepository):
    """The embedded backend. The store is opened and closed by its owner, not here; the
    tables are created on the first call after each opening (CREATE … IF NOT EXISTS)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._schema_on: sqlite3.Connection | None = None  # the connection that has them

    def _db(self) -> sqlite3.Connection:
        """The store's connection, with the metering tables (on the database thread)."""
        db = self.store.db
        if db is not self._schema_on:
            db.executescript(SCHEMA)
            self._schema_on = db
        return db

    # ------------------------------------------------------------ usage
    async def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        if not deltas:
            return
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
            for d in deltas
        ]
        try:
            await self.store.call(self._add, rows)
        except OverflowError as exc:  # sqlite3 binds integers as 64-bit
            raise int64_error(exc) from exc

    def _add(self, rows: Sequence[tuple[object, ...]]) -> None:
        self._db()
        with self.store.transaction() as db:  # rolled back when a row fails
            db.executemany(UPSERT, rows)

    async def month_to_date(self, month_start: int) -> dict[str, MonthUsage]:
        return await self.store.call(self._month_to_date, month_start)

    def _month_to_date(self, month_start: int) -> dict[str, MonthUsage]:
        rows = (
            self._db()
            .execute(
                "SELECT namespace, SUM(invocations), SUM(gb_seconds) FROM usage_hourly "
                "WHERE hour >= ? GROUP BY namespace",
                (month_start,),
            )
            .fetchall()
        )
        return {ns: MonthUsage(int(inv), float(gbs)) for ns, inv, gbs in rows}

    async def usage_by_function(
        self, since: int, until: int, namespace: str | None = None
    ) -> list[UsageRow]:
        return await self.store.call(self._query, BY_FUNCTION, since, until, namespace)

    async def usage_by_hour(
        self, since: int, until: int, namespace: str | None = None
    ) -> list[UsageRow]:
        return await self.store.call(self._query, BY_HOUR, since, until, namespace)

    def _query(self, sql: str, since: int, until: int, namespace: str | None) -> list[UsageRow]:
        rows = self._db().execute(sql, (since, until, namespace, namespace)).fetchall()
        return [
            UsageRow(
                r[0],
                r[1],
                r[2],
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
            await self.store.call(self._set_quota, namespace, quota, now)
        except OverflowError as exc:
            raise int64_error(exc) from exc

    def _set_quota(self, namespace: str, quota: Quota, now: float) -> None:
        db = self._db()
        if quota.empty:
            db.execute("DELETE FROM quotas WHERE namespace = ?", (namespace,))
            return
        db.execute(
            "INSERT INTO quotas (namespace, gb_seconds, invocations, updated_at) "
            "VALUES (?, ?, ?, ?) "
            "ON CONFLICT (namespace) DO UPDATE SET gb_seconds = excluded.gb_seconds, "
            "invocations = excluded.invocations, updated_at = excluded.updated_at",
            (namespace, quota.gb_seconds, quota.invocations, now),
        )

    async def all_quotas(self) -> dict[str, Quota]:
        return await self.store.call(self._all_quotas)

    def _all_quotas(self) -> dict[str, Quota]:
        rows = self._db().execute("SELECT namespace, gb_seconds, invocations FROM quotas")
        return {ns: Quota(gbs, inv) for ns, gbs, inv in rows.fetchall()}
