"""`InvocationRepository` on PostgreSQL (the `invocations` table of migration 8). Nothing
is sealed (ids, codes, timings), as on SQLite.

A batch is one upsert statement from arrays (`unnest`), one round trip however many
records a flush carries. An upsert may not touch one row twice, so the batch is first
reduced to the last record of each id (what SQLite's `INSERT OR REPLACE` of the same batch
keeps), and sorted by id: two gateways upserting overlapping ids lock them in one order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cumulo.store.base import InvocationRecord
from cumulo.store.invocations import InvocationRepository

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore

_COLUMNS = "id, namespace, function, version, status, code, cold, started_at, duration_ms"
_UPSERT = (
    f"INSERT INTO invocations ({_COLUMNS}) "  # noqa: S608
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::integer[], %s::integer[], "
    "%s::text[], %s::boolean[], %s::double precision[], %s::double precision[]) "
    "ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, "
    "function = excluded.function, version = excluded.version, status = excluded.status, "
    "code = excluded.code, cold = excluded.cold, started_at = excluded.started_at, "
    "duration_ms = excluded.duration_ms"
)


class PostgresInvocationRepository(InvocationRepository):
    """Invocation records on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def append(self, records: list[InvocationRecord]) -> None:
        if not records:
            return
        last = {r.id: r for r in records}  # later records of an id replace earlier ones
        rows = [last[i] for i in sorted(last)]
        async with self.store.connection() as conn:
            await conn.execute(
                _UPSERT,
                (
                    [r.id for r in rows],
                    [r.namespace for r in rows],
                    [r.function for r in rows],
                    [r.version for r in rows],
                    [r.status for r in rows],
                    [r.code for r in rows],
                    [r.cold for r in rows],
                    [r.started_at for r in rows],
                    [r.duration_ms for r in rows],
                ),
            )

    async def get(self, namespace: str, invocation_id: str) -> InvocationRecord | None:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT function, version, status, code, cold, started_at, duration_ms "
                "FROM invocations WHERE namespace = %s AND id = %s",
                (namespace, invocation_id),
            )
            r = await cur.fetchone()
        if r is None:
            return None
        return InvocationRecord(
            invocation_id,
            namespace,
            str(r[0]),
            int(r[1]),
            int(r[2]),
            str(r[3]),
            bool(r[4]),
            float(r[5]),
            float(r[6]),
        )

    async def recent(self, namespace: str, function: str, limit: int) -> list[InvocationRecord]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT id, version, status, code, cold, started_at, duration_ms "
                "FROM invocations WHERE namespace = %s AND function = %s "
                "ORDER BY started_at DESC LIMIT %s",
                (namespace, function, limit),
            )
            rows = await cur.fetchall()
        return [
            InvocationRecord(
                str(r[0]),
                namespace,
                function,
                int(r[1]),
                int(r[2]),
                str(r[3]),
                bool(r[4]),
                float(r[5]),
                float(r[6]),
            )
            for r in rows
        ]

    async def delete(self, namespace: str, ids: list[str]) -> int:
        if not ids:
            return 0
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM invocations WHERE namespace = %s AND id = ANY(%s)",
                (namespace, list(ids)),
            )
            return cur.rowcount

    async def purge(self, namespace: str, before: float) -> int:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM invocations WHERE namespace = %s AND started_at < %s",
                (namespace, before),
            )
            return cur.rowcount

    async def namespaces(self) -> list[str]:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT DISTINCT namespace FROM invocations")
            rows = await cur.fetchall()
        return sorted(str(r[0]) for r in rows)
