"""Namespace data keys on PostgreSQL (the `data_keys` table of migration 7), for the
platform's synchronous `cumulo.security.crypto.Encryptor`.

The Encryptor seals exactly as it does for SQLite (same AES-GCM format, AADs, key
hierarchy and keyed hashes); only where it finds its wrapped data keys differs. Its calls
are synchronous and read keys through a sync key table, so an async backend splits the work
in two:

1. `await keys.prepare(namespace)`, before any encrypt or keyed hash of that namespace:
   loads the namespace's `data_keys` rows into `keys.table` (a `CachedKeyTable`), creating
   version 1 first when it has none (`INSERT … ON CONFLICT DO NOTHING`, so gateways racing
   on a new namespace agree on one key: each unwraps the row that won, never its own
   candidate), then has the Encryptor unwrap and cache the newest key
   (`Encryptor.prepare(keys.table, namespace)`). Cheap once done: a dict lookup.
2. `await keys.load_for(namespace, blobs, conn)`, before decrypting blobs read from the
   database: reloads the namespace's rows when a blob names a key version not loaded yet
   (another gateway rotated), on the caller's connection (no second pooled connection
   inside a transaction). It only reads: safe inside a transaction.

Then `encryptor.encrypt/decrypt/keyed_hash(keys.table, …)` run synchronously on the event
loop. `CachedKeyTable.db.in_transaction` is always True, so the Encryptor never tries to
create a key on that path: an unprepared namespace fails loudly ("prepare() it") instead.

The Encryptor comes in as `DataKeyCipher` (the store imports no room); its two
helpers for this backend, `key_version` and `new_data_key`, are all it gained (with a looser
`KeyTable.db` type).

One Encryptor per database: its caches are keyed by namespace alone, so an Encryptor that
serves a SQLite store must not also serve a PostgreSQL one (give each its own Encryptor over
the same master). Keyed hashes derive from a namespace's data key version 1, not from the
master directly: the same master and the same `data_keys` rows (copied from SQLite) give
the same state ids; a database whose keys were created on its own has its own ids.

Not here yet: data-key and master rotation on PostgreSQL (`security.crypto.rotate_*` take a
SQLiteStore); a version created elsewhere is picked up by `load_for`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from psycopg import AsyncConnection

from cumulo.store.sqlite import DataKeyRecord

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore

_SELECT = "SELECT version, master_id, wrapped, created_at FROM data_keys WHERE namespace = %s"
_INSERT = (
    "INSERT INTO data_keys (namespace, version, master_id, wrapped, created_at) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (namespace, version) DO NOTHING"
)


class DataKeyCipher(Protocol):
    """cumulo.security.crypto.Encryptor as this backend uses it (the store imports no room:
    the gateway hands the platform's Encryptor class in). `store` is a key table."""

    def prepare(self, store: Any, namespace: str) -> None: ...

    def encrypt(
        self, store: Any, namespace: str, purpose: str, item: Sequence[str], data: bytes
    ) -> bytes: ...

    def decrypt(
        self, store: Any, namespace: str, purpose: str, item: Sequence[str], blob: bytes
    ) -> bytes: ...

    def keyed_hash(self, store: Any, namespace: str, purpose: str, *parts: str) -> str: ...

    def key_version(self, blob: bytes) -> int | None: ...

    def new_data_key(self, namespace: str, version: int) -> tuple[str, bytes]: ...


class CachedKeyTable:
    """The `cumulo.security.crypto.KeyTable` the Encryptor reads: the rows `PostgresDataKeys`
    loaded, in memory. It never writes (see the module doc)."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[int, DataKeyRecord]] = {}

    @property
    def db(self) -> CachedKeyTable:
        return self

    @property
    def in_transaction(self) -> bool:
        # Tells the Encryptor not to create keys here: `PostgresDataKeys.prepare` does.
        return True

    def loaded(self, namespace: str) -> bool:
        return bool(self._rows.get(namespace))

    def has(self, namespace: str, version: int) -> bool:
        return version in self._rows.get(namespace, {})

    def replace(self, namespace: str, rows: Iterable[DataKeyRecord]) -> None:
        self._rows[namespace] = {r.version: r for r in rows}

    def data_key(self, namespace: str, version: int) -> DataKeyRecord | None:
        return self._rows.get(namespace, {}).get(version)

    def latest_data_key_version(self, namespace: str) -> int | None:
        return max(self._rows.get(namespace, {}), default=None)

    def insert_data_key(
        self, namespace: str, version: int, master_id: str, wrapped: bytes, now: float
    ) -> bool:
        raise RuntimeError(
            f"namespace {namespace!r}: data keys are created by PostgresDataKeys.prepare"
        )


class PostgresDataKeys:
    """The Encryptor and the key table one PostgreSQL database's sealed rows go through."""

    def __init__(self, store: PostgresStore, encryptor: DataKeyCipher) -> None:
        self.store = store
        self.encryptor = encryptor
        self.table = CachedKeyTable()

    async def prepare(self, namespace: str) -> None:
        """Make sure `namespace` has a data key, loaded and unwrapped. Call outside any
        transaction of the caller's (it may insert, on a connection of its own). Raises
        CryptoError when the key is wrapped by another master."""
        if not self.table.loaded(namespace):
            async with self.store.connection() as conn:
                await self._load(conn, namespace)
                if not self.table.loaded(namespace):
                    master_id, wrapped = self.encryptor.new_data_key(namespace, 1)
                    await conn.execute(_INSERT, (namespace, 1, master_id, wrapped, time.time()))
                    await self._load(conn, namespace)  # ours, or the one that won the race
        self.encryptor.prepare(self.table, namespace)

    async def load_for(
        self,
        namespace: str,
        blobs: Iterable[bytes],
        conn: AsyncConnection[tuple[Any, ...]] | None = None,
    ) -> None:
        """Load the key versions `blobs` were sealed under, if any is missing. Read-only, so
        safe inside the caller's transaction: pass its `conn` there (no second pooled
        connection while one is held); without one, a pooled connection is taken."""
        versions = (self.encryptor.key_version(blob) for blob in blobs)
        if all(v is None or self.table.has(namespace, v) for v in versions):
            return
        if conn is not None:
            await self._load(conn, namespace)
            return
        async with self.store.connection() as own:
            await self._load(own, namespace)

    async def _load(self, conn: AsyncConnection[tuple[Any, ...]], namespace: str) -> None:
        cur = await conn.execute(_SELECT, (namespace,))
        rows = await cur.fetchall()
        self.table.replace(
            namespace,
            (
                DataKeyRecord(namespace, int(r[0]), str(r[1]), bytes(r[2]), float(r[3]))
                for r in rows
            ),
        )
