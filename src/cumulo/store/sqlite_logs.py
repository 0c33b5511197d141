"""`LogRepository` over `SQLiteStore`: each call runs the store's own log methods on its
database thread (`store.call`), so the embedded backend behaves exactly as before (same
`logs` table, same sealing through the store's encryptor, same trimming)."""

from __future__ import annotations

from cumulo.store.base import LogRecord
from cumulo.store.logs import LogRepository
from cumulo.store.sqlite import SQLiteStore


class SQLiteLogRepository(LogRepository):
    """The embedded backend. The store is opened and closed by its owner, not here."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def append(
        self,
        records: list[LogRecord],
        *,
        retain_rows: int | None = None,
        retain_bytes: int | None = None,
    ) -> None:
        if not records:
            return
        await self.store.call(
            self.store.append_logs, records, retain_rows=retain_rows, retain_bytes=retain_bytes
        )

    async def query(
        self, namespace: str, function: str, *, after_seq: int = 0, limit: int = 100
    ) -> list[tuple[int, LogRecord]]:
        return await self.store.call(
            self.store.query_logs, namespace, function, after_seq=after_seq, limit=limit
        )

    async def stats(self, namespace: str, function: str) -> tuple[int, int]:
        return await self.store.call(self.store.log_stats, namespace, function)

    async def shrink_memory(self) -> None:
        await self.store.call(self.store.shrink_memory)

    async def purge(self, namespace: str, before: float) -> int:
        def step() -> int:
            return self.store.db.execute(
                "DELETE FROM logs WHERE namespace = ? AND ts < ?", (namespace, before)
            ).rowcount

        return await self.store.call(step)
