"""The metering tables in the platform's SQLite database; each function runs on the
store's own thread through `store.call(fn, store, ...)`."""

from __future__ import annotations

from dataclasses import dataclass

from cumulo.metering.meter import Delta, DeltaKey, MonthToDate
from cumulo.metering.quota import Quota
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

# Deltas add to what is there: a flush is one transaction, so a row is either fully added
# or not at all, and each delta is written exactly once.
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

# Hours starting in [since, until); namespace NULL: every namespace.
BY_FUNCTION = """
SELECT namespace, function, NULL, SUM(invocations), SUM(errors), SUM(gb_seconds),
    SUM(cpu_seconds), SUM(bytes_in), SUM(bytes_out)
FROM usage_hourly WHERE hour >= ? AND hour < ? AND (? IS NULL OR namespace = ?)
GROUP BY namespace, function ORDER BY namespace, function
"""
BY_HOUR = """
SELECT namespace, function, hour, invocations, errors, gb_seconds, cpu_seconds, bytes_in,
    bytes_out
FROM usage_hourly WHERE hour >= ? AND hour < ? AND (? IS NULL OR namespace = ?)
ORDER BY hour, namespace, function
"""


@dataclass(frozen=True, slots=True)
class UsageRow:
    namespace: str
    function: str
    hour: int | None  # None: summed over the whole range
    invocations: int
    errors: int
    gb_seconds: float
    cpu_seconds: float
    bytes_in: int
    bytes_out: int


def create_tables(store: SQLiteStore) -> None:
    store.db.executescript(SCHEMA)


def write_deltas(store: SQLiteStore, deltas: dict[DeltaKey, Delta]) -> None:
    rows = [
        (
            ns,
            fn,
            hour,
            d.invocations,
            d.errors,
            d.gb_seconds,
            d.cpu_seconds,
            d.wall_seconds,
            d.bytes_in,
            d.bytes_out,
            d.peak_rss_mb,
        )
        for (ns, fn, hour), d in deltas.items()
    ]
    with store.transaction() as db:
        db.executemany(UPSERT, rows)


def month_to_date(store: SQLiteStore, month_start: float) -> dict[str, MonthToDate]:
    rows = store.db.execute(
        "SELECT namespace, SUM(invocations), SUM(gb_seconds) FROM usage_hourly "
        "WHERE hour >= ? GROUP BY namespace",
        (int(month_start),),
    ).fetchall()
    return {ns: MonthToDate(int(inv), float(gbs)) for ns, inv, gbs in rows}


def query_usage(
    store: SQLiteStore, namespace: str | None, since: int, until: float, by_hour: bool
) -> list[UsageRow]:
    """Rows of hours starting in [since, until), per function (or per function and hour);
    `namespace` None: every namespace."""
    sql = BY_HOUR if by_hour else BY_FUNCTION
    params = (since, until, namespace, namespace)
    return [
        UsageRow(r[0], r[1], r[2], int(r[3]), int(r[4]), float(r[5]), float(r[6]), r[7], r[8])
        for r in store.db.execute(sql, params).fetchall()
    ]


def all_quotas(store: SQLiteStore) -> dict[str, Quota]:
    rows = store.db.execute("SELECT namespace, gb_seconds, invocations FROM quotas").fetchall()
    return {ns: Quota(gbs, inv) for ns, gbs, inv in rows}


def set_quota(store: SQLiteStore, namespace: str, quota: Quota, now: float) -> None:
    if quota.empty:
        store.db.execute("DELETE FROM quotas WHERE namespace = ?", (namespace,))
        return
    store.db.execute(
        "INSERT INTO quotas (namespace, gb_seconds, invocations, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (namespace) DO UPDATE SET gb_seconds = excluded.gb_seconds, "
        "invocations = excluded.invocations, updated_at = excluded.updated_at",
        (namespace, quota.gb_seconds, quota.invocations, now),
    )
