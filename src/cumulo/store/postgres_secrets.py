"""`SecretRepository` on PostgreSQL (the `secrets` table of migration 7), sealed as SQLite
seals it: each value bound to its name (purpose "secret") under the namespace data key
(store/postgres_keys); names and update times in clear."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from cumulo.store.postgres_keys import DataKeyCipher, PostgresDataKeys
from cumulo.store.secrets import SecretInfo, SecretRepository

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore


class PostgresSecretRepository(SecretRepository):
    """Secrets on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore, encryptor: DataKeyCipher) -> None:
        self.store = store
        self.keys = PostgresDataKeys(store, encryptor)
        self._enc = encryptor

    async def set(self, namespace: str, name: str, value: bytes, now: float) -> None:
        await self.keys.prepare(namespace)
        stored = self._enc.encrypt(self.keys.table, namespace, "secret", (name,), value)
        async with self.store.connection() as conn:
            await conn.execute(
                "INSERT INTO secrets (namespace, name, value, updated_at) VALUES (%s,%s,%s,%s) "
                "ON CONFLICT (namespace, name) "
                "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (namespace, name, stored, now),
            )

    async def names(self, namespace: str) -> list[SecretInfo]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT name, updated_at FROM secrets WHERE namespace = %s "
                'ORDER BY name COLLATE "C"',
                (namespace,),
            )
            return [SecretInfo(str(r[0]), float(r[1])) for r in await cur.fetchall()]

    async def values(self, namespace: str, names: Iterable[str]) -> dict[str, bytes]:
        wanted = list(names)
        if not wanted:
            return {}
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT name, value FROM secrets WHERE namespace = %s AND name = ANY(%s)",
                (namespace, wanted),
            )
            rows = [(str(r[0]), bytes(r[1])) for r in await cur.fetchall()]
        if not rows:
            return {}
        # After the connection went back: prepare may take one of its own.
        await self.keys.prepare(namespace)
        await self.keys.load_for(namespace, (v for _, v in rows))
        return {
            name: self._enc.decrypt(self.keys.table, namespace, "secret", (name,), blob)
            for name, blob in rows
        }

    async def delete(self, namespace: str, name: str) -> bool:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM secrets WHERE namespace = %s AND name = %s", (namespace, name)
            )
            return cur.rowcount > 0
