"""`SubjectKeyStore` in a PostgreSQL database of its own, and the namespace data keys (of
the main database) that wrap its keys.

Why a database of its own: crypto-shredding holds only while no copy of the key outlives
the erasure. A `pg_dump` (or a restore of it) of the main database then never holds a
subject key, so backups of the main database may be kept as long as the operator likes.
`open()` refuses the main database itself (same server and database name), and any database
holding cumulo's main schema (`schema_migrations`). The key database's own backups, WAL and
PITR archives must be kept under a retention no longer than the erasure deadline, or not at
all (docs/privacy.md): a destroy deletes the row and then rewrites the table
(`VACUUM FULL`, a small table), so no live page of it keeps the key's bytes, but WAL
already written and archived does until it is dropped.

The schema is created by `open()` (`CREATE TABLE IF NOT EXISTS`, one small table and its
meta row) rather than by the main database's numbered migrations, which never run here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from cumulo.errors import ConfigError
from cumulo.store.postgres_keys import DataKeyCipher, PostgresDataKeys
from cumulo.store.subject_keys import Aead, NamespaceKeys, SubjectKeyStore, WrappedKey

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_keys (
    namespace text NOT NULL,
    pseudonym text NOT NULL,
    ns_key_version integer NOT NULL,
    wrapped bytea NOT NULL,
    created_at double precision NOT NULL,
    PRIMARY KEY (namespace, pseudonym));
CREATE TABLE IF NOT EXISTS keystore_meta (name text PRIMARY KEY, value bytea NOT NULL);
"""
# "cumulo keys" in ASCII: serialises schema creation by gateways starting together.
_SCHEMA_LOCK = 0x63756D756C6F6B
_IDENTITY = "SELECT current_database(), pg_postmaster_start_time()::text, inet_server_port()"


class PostgresNamespaceCipher(DataKeyCipher, Protocol):
    """The platform's Encryptor: what postgres_keys needs, plus `namespace_cipher`."""

    def namespace_cipher(
        self, store: Any, namespace: str, version: int | None = None
    ) -> tuple[int, Any]: ...


class PostgresNamespaceKeys(NamespaceKeys):
    """Namespace data keys from the main database's `data_keys` (store/postgres_keys)."""

    def __init__(self, store: PostgresStore, encryptor: PostgresNamespaceCipher) -> None:
        self.keys = PostgresDataKeys(store, encryptor)
        self.encryptor = encryptor

    async def cipher(self, namespace: str, version: int | None = None) -> tuple[int, Aead]:
        await self.keys.prepare(namespace)
        if version is not None and not self.keys.table.has(namespace, version):
            async with self.keys.store.connection() as conn:  # rotated by another gateway
                await self.keys._load(conn, namespace)
        return self.encryptor.namespace_cipher(self.keys.table, namespace, version)


async def _pseudonym_secret(conn: Any) -> bytes | None:
    cur = await conn.execute("SELECT value FROM keystore_meta WHERE name = 'pseudonym'")
    row = await cur.fetchone()
    return None if row is None else bytes(row[0])


class PostgresSubjectKeyStore(SubjectKeyStore):
    """Subject keys in the database at `dsn`, with a pool of its own (opened by `open()`,
    closed by `aclose()`). `main`: the platform's main store, which `dsn` must not be."""

    def __init__(self, dsn: str, *, main: PostgresStore | None = None, max_size: int = 4) -> None:
        from cumulo.store.postgres import PostgresStore

        self.main = main
        self.db = PostgresStore(dsn, max_size=max_size)

    async def open(self) -> bytes:
        try:
            async with self._schema() as conn:
                await conn.execute(
                    "INSERT INTO keystore_meta VALUES ('pseudonym', %s) ON CONFLICT DO NOTHING",
                    (os.urandom(32),),
                )
                secret = await _pseudonym_secret(conn)
        except BaseException:
            await self.db.close()
            raise
        assert secret is not None
        return secret

    async def adopt(self, secret: bytes, keys: list[tuple[str, str, int, bytes, float]]) -> int:
        """`cumulo migrate`: take over a SQLite keystore, its pseudonym secret and its
        subject keys (namespace, pseudonym, ns_key_version, wrapped, created_at) verbatim,
        in one transaction; returns the subject keys the database then holds. ConfigError,
        nothing written, when the database is not a separate one, holds another secret or
        holds subject keys already. Closes the pool when done."""
        try:
            async with self._schema() as conn:
                held = await _pseudonym_secret(conn)
                if held is not None and held != secret:
                    raise ConfigError(
                        "the subject-key database belongs to another platform (another "
                        "pseudonym secret): migrate into an empty one"
                    )
                cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM subject_keys)")
                found = await cur.fetchone()
                if found is not None and found[0]:
                    raise ConfigError(
                        "the subject-key database holds subject keys already: migrate into "
                        "an empty one"
                    )
                await conn.execute(
                    "INSERT INTO keystore_meta VALUES ('pseudonym', %s) ON CONFLICT DO NOTHING",
                    (secret,),
                )
                async with (
                    conn.cursor() as copy_cur,
                    copy_cur.copy(
                        "COPY subject_keys (namespace, pseudonym, ns_key_version, wrapped, "
                        "created_at) FROM STDIN"
                    ) as copy,
                ):
                    for key in keys:
                        await copy.write_row(key)
                cur = await conn.execute("SELECT count(*) FROM subject_keys")
                counted = await cur.fetchone()
        finally:
            await self.db.close()
        return int(counted[0]) if counted else 0

    @contextlib.asynccontextmanager
    async def _schema(self) -> AsyncIterator[Any]:
        """Open the pool, refuse the main database, and yield a connection inside one
        transaction that holds the schema lock, the schema made."""
        await self.db.open(migrate=False)
        await self._check_separate()
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await conn.execute(_SCHEMA.encode())
            yield conn

    async def _check_separate(self) -> None:
        async with self.db.connection() as conn:
            cur = await conn.execute(_IDENTITY)
            mine = await cur.fetchone()
            cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            found = await cur.fetchone()
        if found is not None and found[0]:
            raise ConfigError(
                "the subject-key database holds cumulo's main schema: give subject keys a "
                "database of their own (docs/privacy.md)"
            )
        if self.main is not None:
            async with self.main.connection() as conn:
                cur = await conn.execute(_IDENTITY)
                theirs = await cur.fetchone()
            if mine == theirs:
                raise ConfigError(
                    "the subject-key database is the main database: give subject keys a "
                    "database of their own (docs/privacy.md)"
                )

    async def get(self, namespace: str, pseudonym: str) -> WrappedKey | None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT ns_key_version, wrapped FROM subject_keys"
                " WHERE namespace = %s AND pseudonym = %s",
                (namespace, pseudonym),
            )
            row = await cur.fetchone()
        return None if row is None else WrappedKey(int(row[0]), bytes(row[1]))

    async def insert(
        self, namespace: str, pseudonym: str, key: WrappedKey, now: float
    ) -> WrappedKey:
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO subject_keys VALUES (%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                (namespace, pseudonym, key.ns_key_version, key.wrapped, now),
            )
        found = await self.get(namespace, pseudonym)
        if found is None:  # destroyed between the two statements: store ours again
            return await self.insert(namespace, pseudonym, key, now)
        return found

    async def has(self, namespace: str, pseudonym: str) -> bool:
        return await self.get(namespace, pseudonym) is not None

    async def destroy(self, namespace: str, pseudonym: str) -> bool:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM subject_keys WHERE namespace = %s AND pseudonym = %s",
                (namespace, pseudonym),
            )
            deleted = cur.rowcount > 0
            # A plain VACUUM leaves the dead tuple's bytes in the page's free space; FULL
            # rewrites the (small) table, so no live page keeps them. Autocommit: VACUUM
            # refuses to run in a transaction.
            await conn.execute("VACUUM FULL subject_keys")
        return deleted

    async def counts(self) -> dict[str, int]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT namespace, COUNT(*) FROM subject_keys GROUP BY namespace"
            )
            rows = await cur.fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    async def aclose(self) -> None:
        await self.db.close()
