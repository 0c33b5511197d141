"""`StateRepository` on PostgreSQL (the `state` table of migration 7), sealed as SQLite
seals it: a row's `key` is the keyed hash of (function, name) under the namespace's index
key, the name is sealed in `key_sealed` (purpose "state-key", item (function, hash)), the
value is sealed bound to (function, name) (purpose "state"). Data keys: store/postgres_keys.

Writes seal before their transaction (the data key is prepared on its own connection), and
every read-modify-write runs in one transaction holding the row's lock (`FOR UPDATE`), so
compare-and-set and increments from several gateways never lose a write. When the row does
not exist yet, two writers may both try to create it: `INSERT … ON CONFLICT DO NOTHING`
lets one win, and the other starts over and meets the winner's row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

from cumulo.store.base import StateRecord
from cumulo.store.postgres_keys import DataKeyCipher, PostgresDataKeys
from cumulo.store.state import StateRepository, incremented

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore

_WHERE = "WHERE namespace = %s AND function = %s AND key = %s"
_LOCK = f"SELECT value, version FROM state {_WHERE} FOR UPDATE"  # noqa: S608
_UPDATE = f"UPDATE state SET value = %s, version = %s, updated_at = %s {_WHERE}"  # noqa: S608
_INSERT = (
    "INSERT INTO state (namespace, function, key, key_sealed, value, version, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, 1, %s) ON CONFLICT (namespace, function, key) DO NOTHING"
)


class PostgresStateRepository(StateRepository):
    """Function state on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore, encryptor: DataKeyCipher) -> None:
        self.store = store
        self.keys = PostgresDataKeys(store, encryptor)
        self._enc = encryptor

    def _sid(self, namespace: str, function: str, key: str) -> str:
        return self._enc.keyed_hash(self.keys.table, namespace, "state-key", function, key)

    def _seal(self, namespace: str, purpose: str, item: tuple[str, ...], data: bytes) -> bytes:
        return self._enc.encrypt(self.keys.table, namespace, purpose, item, data)

    async def _open(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        namespace: str,
        purpose: str,
        item: tuple[str, ...],
        blob: bytes,
    ) -> bytes:
        await self.keys.load_for(namespace, [blob], conn)
        return self._enc.decrypt(self.keys.table, namespace, purpose, item, blob)

    async def _create(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        ids: tuple[str, str, str],
        name: str,
        stored: bytes,
        now: float,
    ) -> bool:
        """Insert the row at version 1; False when another writer created it first."""
        namespace, function, sid = ids
        sealed_name = self._seal(namespace, "state-key", (function, sid), name.encode())
        cur = await conn.execute(_INSERT, (*ids, sealed_name, stored, now))
        return cur.rowcount > 0

    async def get(self, namespace: str, function: str, key: str) -> StateRecord | None:
        await self.keys.prepare(namespace)
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT value, version FROM state {_WHERE}",  # noqa: S608
                (namespace, function, self._sid(namespace, function, key)),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            value = await self._open(conn, namespace, "state", (function, key), bytes(row[0]))
        return StateRecord(value, int(row[1]))

    async def put(
        self,
        namespace: str,
        function: str,
        key: str,
        value: bytes,
        expected_version: int | None,
        now: float,
    ) -> tuple[bool, int]:
        await self.keys.prepare(namespace)
        stored = self._seal(namespace, "state", (function, key), value)
        ids = (namespace, function, self._sid(namespace, function, key))
        async with self.store.connection() as conn:
            while True:
                async with conn.transaction():
                    # The version alone: the old value needs no decrypting to be overwritten.
                    cur = await conn.execute(_LOCK, ids)
                    row = await cur.fetchone()
                    version = 0 if row is None else int(row[1])
                    if expected_version is not None and expected_version != version:
                        return False, version
                    if row is not None:
                        await conn.execute(_UPDATE, (stored, version + 1, now, *ids))
                        return True, version + 1
                    if await self._create(conn, ids, key, stored, now):
                        return True, 1
                # Another writer created the row after our look: look again.

    async def delete(
        self, namespace: str, function: str, key: str, expected_version: int | None
    ) -> tuple[bool, int]:
        await self.keys.prepare(namespace)
        ids = (namespace, function, self._sid(namespace, function, key))
        async with self.store.connection() as conn, conn.transaction():
            cur = await conn.execute(_LOCK, ids)
            row = await cur.fetchone()
            version = 0 if row is None else int(row[1])
            if expected_version is not None and expected_version != version:
                return False, version
            if row is None:
                return False, 0
            await conn.execute(f"DELETE FROM state {_WHERE}", ids)  # noqa: S608
            return True, version

    async def incr(
        self, namespace: str, function: str, key: str, by: int, now: float
    ) -> tuple[int, int]:
        await self.keys.prepare(namespace)
        ids = (namespace, function, self._sid(namespace, function, key))
        item = (function, key)
        async with self.store.connection() as conn:
            while True:
                async with conn.transaction():
                    cur = await conn.execute(_LOCK, ids)
                    row = await cur.fetchone()
                    current = (
                        None
                        if row is None
                        else await self._open(conn, namespace, "state", item, bytes(row[0]))
                    )
                    value, data = incremented(current, by)
                    stored = self._seal(namespace, "state", item, data)
                    if row is not None:
                        version = int(row[1]) + 1
                        await conn.execute(_UPDATE, (stored, version, now, *ids))
                        return value, version
                    if await self._create(conn, ids, key, stored, now):
                        return value, 1

    async def list_keys(self, namespace: str, function: str, prefix: str, limit: int) -> list[str]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT key, key_sealed FROM state WHERE namespace = %s AND function = %s",
                (namespace, function),
            )
            rows = [
                (str(r[0]), None if r[1] is None else bytes(r[1])) for r in await cur.fetchall()
            ]
        if not rows:
            return []
        # After the connection went back: prepare may take one of its own.
        await self.keys.prepare(namespace)
        await self.keys.load_for(namespace, (s for _, s in rows if s is not None))
        # Names are sealed: the function's rows are opened and filtered here (a scan of that
        # one function's keys; no index can serve a prefix of a ciphertext), as on SQLite.
        names = []
        for sid, sealed in rows:
            name = (
                sid
                if sealed is None
                else self._enc.decrypt(
                    self.keys.table, namespace, "state-key", (function, sid), sealed
                ).decode()
            )
            if name.startswith(prefix):
                names.append(name)
        return sorted(names)[:limit]
