"""`SubjectKeyStore` in `<data-dir>/subject-keys.db`: a SQLite file of its own, never
cumulo.db, so a backup of cumulo.db never holds a subject key. It runs with
`secure_delete=ON` and a rollback journal (no WAL copy of deleted pages), and every destroy
VACUUMs it: freed pages keep no key bytes. Created 0600. Calls run on the platform store's
database thread (one thread for both files, as before the seam)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from cumulo.store.sqlite import SQLiteStore
from cumulo.store.subject_keys import (
    Aead,
    NamespaceCipher,
    NamespaceKeys,
    SubjectKeyStore,
    WrappedKey,
)

KEYSTORE_FILE = "subject-keys.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_keys (
    namespace TEXT NOT NULL, pseudonym TEXT NOT NULL, ns_key_version INTEGER NOT NULL,
    wrapped BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (namespace, pseudonym));
CREATE TABLE IF NOT EXISTS keystore_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


class _File:
    """The blocking half, on the store thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise RuntimeError("the subject key store is not open")
        return self.conn

    def open(self) -> bytes:
        if self.conn is None:
            if not self.path.exists():
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # DELETE journal (no WAL holding old pages), deleted content zeroed in place.
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            self.conn = conn
        self.db.execute(
            "INSERT OR IGNORE INTO keystore_meta VALUES ('pseudonym', ?)", (os.urandom(32),)
        )
        row = self.db.execute("SELECT value FROM keystore_meta WHERE name = 'pseudonym'").fetchone()
        return bytes(row[0])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def get(self, ns: str, p: str) -> WrappedKey | None:
        row = self.db.execute(
            "SELECT ns_key_version, wrapped FROM subject_keys "
            "WHERE namespace = ? AND pseudonym = ?",
            (ns, p),
        ).fetchone()
        return None if row is None else WrappedKey(int(row[0]), bytes(row[1]))

    def insert(self, ns: str, p: str, key: WrappedKey, now: float) -> WrappedKey:
        self.db.execute(
            "INSERT OR IGNORE INTO subject_keys VALUES (?,?,?,?,?)",
            (ns, p, key.ns_key_version, key.wrapped, now),
        )
        found = self.get(ns, p)
        assert found is not None
        return found

    def destroy(self, ns: str, p: str) -> bool:
        cur = self.db.execute(
            "DELETE FROM subject_keys WHERE namespace = ? AND pseudonym = ?", (ns, p)
        )
        self.db.execute("VACUUM")
        return cur.rowcount > 0

    def counts(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT namespace, COUNT(*) FROM subject_keys GROUP BY namespace"
        ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}


class SQLiteSubjectKeyStore(SubjectKeyStore):
    def __init__(self, path: Path, store: SQLiteStore) -> None:
        self.path = path
        self.store = store
        self._f = _File(path)

    async def open(self) -> bytes:
        return await self.store.call(self._f.open)

    async def get(self, namespace: str, pseudonym: str) -> WrappedKey | None:
        return await self.store.call(self._f.get, namespace, pseudonym)

    async def insert(
        self, namespace: str, pseudonym: str, key: WrappedKey, now: float
    ) -> WrappedKey:
        return await self.store.call(self._f.insert, namespace, pseudonym, key, now)

    async def has(self, namespace: str, pseudonym: str) -> bool:
        return await self.get(namespace, pseudonym) is not None

    async def destroy(self, namespace: str, pseudonym: str) -> bool:
        return await self.store.call(self._f.destroy, namespace, pseudonym)

    async def counts(self) -> dict[str, int]:
        return await self.store.call(self._f.counts)

    async def aclose(self) -> None:
        await self.store.call(self._f.close)


class SQLiteNamespaceKeys(NamespaceKeys):
    """Namespace data keys from cumulo.db (`data_keys`), through the platform's Encryptor on
    the store thread (outside a transaction, so a new namespace gets its key)."""

    def __init__(self, store: SQLiteStore, encryptor: NamespaceCipher) -> None:
        self.store = store
        self.encryptor = encryptor

    async def cipher(self, namespace: str, version: int | None = None) -> tuple[int, Aead]:
        return await self.store.call(
            self.encryptor.namespace_cipher, self.store, namespace, version
        )
