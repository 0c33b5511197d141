"""`SecretRepository` over `SQLiteStore`: each call runs the store's own secret method on
its database thread (`store.call`), so the embedded backend behaves exactly as before."""

from __future__ import annotations

from collections.abc import Iterable

from cumulo.store.secrets import SecretInfo, SecretRepository
from cumulo.store.sqlite import SQLiteStore


class SQLiteSecretRepository(SecretRepository):
    """The embedded backend. The store is opened and closed by its owner, not here."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def set(self, namespace: str, name: str, value: bytes, now: float) -> None:
        await self.store.call(self.store.secret_set, namespace, name, value, now)

    async def names(self, namespace: str) -> list[SecretInfo]:
        rows = await self.store.call(self.store.secret_names, namespace)
        return [SecretInfo(name, updated_at) for name, updated_at in rows]

    async def values(self, namespace: str, names: Iterable[str]) -> dict[str, bytes]:
        # Materialised here: the iterable is consumed on the store thread otherwise.
        return await self.store.call(self.store.secret_values, namespace, list(names))

    async def delete(self, namespace: str, name: str) -> bool:
        return await self.store.call(self.store.secret_delete, namespace, name)
