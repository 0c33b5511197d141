"""`InvocationRepository` over `SQLiteStore`: each call runs the store's own invocation
methods on its database thread (`store.call`), so the embedded backend behaves exactly as
before (same `invocations` table)."""

from __future__ import annotations

from cumulo.store.base import InvocationRecord
from cumulo.store.invocations import InvocationRepository
from cumulo.store.sqlite import SQLiteStore


class SQLiteInvocationRepository(InvocationRepository):
    """The embedded backend. The store is opened and closed by its owner, not here."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def append(self, records: list[InvocationRecord]) -> None:
        if not records:
            return
        await self.store.call(self.store.append_invocations, records)

    async def get(self, namespace: str, invocation_id: str) -> InvocationRecord | None:
        return await self.store.call(self.store.get_invocation, namespace, invocation_id)

    async def recent(self, namespace: str, function: str, limit: int) -> list[InvocationRecord]:
        return await self.store.call(self.store.list_invocations, namespace, function, limit)

    async def delete(self, namespace: str, ids: list[str]) -> int:
        def step() -> int:
            deleted = 0
            with self.store.transaction() as db:
                for i in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
                    chunk = ids[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    deleted += db.execute(
                        f"DELETE FROM invocations WHERE namespace = ? AND id IN ({marks})",  # noqa: S608
                        (namespace, *chunk),
                    ).rowcount
            return deleted

        return await self.store.call(step) if ids else 0

    async def purge(self, namespace: str, before: float) -> int:
        def step() -> int:
            return self.store.db.execute(
                "DELETE FROM invocations WHERE namespace = ? AND started_at < ?",
                (namespace, before),
            ).rowcount

        return await self.store.call(step)

    async def namespaces(self) -> list[str]:
        def step() -> list[str]:
            rows = self.store.db.execute("SELECT DISTINCT namespace FROM invocations").fetchall()
            return sorted(str(r[0]) for r in rows)

        return await self.store.call(step)
