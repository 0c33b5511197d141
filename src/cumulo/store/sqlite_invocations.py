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
