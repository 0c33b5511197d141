"""`StateRepository` over `SQLiteStore`: each call runs the store's own state method on its
database thread (`store.call`), so the embedded backend behaves exactly as before (same
tables, same sealing through the store's encryptor)."""

from __future__ import annotations

from cumulo.store.base import StateRecord
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.state import StateRepository


class SQLiteStateRepository(StateRepository):
    """The embedded backend. The store is opened and closed by its owner, not here."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def get(self, namespace: str, function: str, key: str) -> StateRecord | None:
        return await self.store.call(self.store.state_get, namespace, function, key)

    async def put(
        self,
        namespace: str,
        function: str,
        key: str,
        value: bytes,
        expected_version: int | None,
        now: float,
    ) -> tuple[bool, int]:
        return await self.store.call(
            self.store.state_put, namespace, function, key, value, expected_version, now
        )

    async def delete(
        self, namespace: str, function: str, key: str, expected_version: int | None
    ) -> tuple[bool, int]:
        return await self.store.call(
            self.store.state_delete, namespace, function, key, expected_version
        )

    async def incr(
        self, namespace: str, function: str, key: str, by: int, now: float
    ) -> tuple[int, int]:
        return await self.store.call(self.store.state_incr, namespace, function, key, by, now)

    async def list_keys(self, namespace: str, function: str, prefix: str, limit: int) -> list[str]:
        return await self.store.call(self.store.state_list, namespace, function, prefix, limit)
