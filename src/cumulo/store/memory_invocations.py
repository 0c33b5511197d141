"""`InvocationRepository` in memory: a fake for unit tests, held to the same conformance
suite as the real backends."""

from __future__ import annotations

from cumulo.store.base import InvocationRecord
from cumulo.store.invocations import InvocationRepository


class MemoryInvocationRepository(InvocationRepository):
    """Records by id; each method runs without awaiting (atomic on its event loop)."""

    def __init__(self) -> None:
        self._records: dict[str, InvocationRecord] = {}

    async def append(self, records: list[InvocationRecord]) -> None:
        for r in records:
            self._records[r.id] = r

    async def get(self, namespace: str, invocation_id: str) -> InvocationRecord | None:
        found = self._records.get(invocation_id)
        return found if found is not None and found.namespace == namespace else None

    async def recent(self, namespace: str, function: str, limit: int) -> list[InvocationRecord]:
        mine = [
            r for r in self._records.values() if (r.namespace, r.function) == (namespace, function)
        ]
        mine.sort(key=lambda r: r.started_at, reverse=True)
        return mine[: max(limit, 0)]

    async def delete(self, namespace: str, ids: list[str]) -> int:
        gone = [
            i for i in ids if (r := self._records.get(i)) is not None and r.namespace == namespace
        ]
        for i in gone:
            del self._records[i]
        return len(gone)

    async def purge(self, namespace: str, before: float) -> int:
        return await self.delete(
            namespace,
            [
                i
                for i, r in self._records.items()
                if r.namespace == namespace and r.started_at < before
            ],
        )

    async def namespaces(self) -> list[str]:
        return sorted({r.namespace for r in self._records.values()})
