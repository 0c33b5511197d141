"""`BundleRepository` on PostgreSQL: the `bundles` table (migration 10 in
cumulo.store.postgres), shared by every gateway on the database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cumulo.store.bundles import BundleRepository

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore


class PostgresBundleRepository(BundleRepository):
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def put(self, sha: str, data: bytes, now: float) -> None:
        async with self.store.connection() as conn:
            await conn.execute(
                "INSERT INTO bundles (sha, data, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (sha) DO UPDATE SET created_at = excluded.created_at",
                (sha, data, now),
            )

    async def get(self, sha: str) -> bytes | None:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT data FROM bundles WHERE sha = %s", (sha,))
            row = await cur.fetchone()
        return None if row is None else bytes(row[0])

    async def collect(self, referenced: set[str], older_than: float) -> list[str]:
        # A version row written since `referenced` was read still protects its bundle.
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM bundles b WHERE created_at < %s AND NOT (sha = ANY(%s)) "
                "AND NOT EXISTS (SELECT 1 FROM versions v WHERE v.bundle_sha = b.sha) "
                "RETURNING sha",
                (older_than, sorted(referenced)),
            )
            rows = await cur.fetchall()
        return sorted(str(r[0]) for r in rows)
