"""`AuditRepository` on PostgreSQL (the `audit_log` and `audit_heads` tables of migration 9),
shared by several gateways appending to the same chains.

An append is one transaction that first takes a transaction-scoped advisory lock per named
chain (`pg_advisory_xact_lock(NAMESPACE_LOCKS, hash of the namespace)`), in ascending key
order, then reads their heads: a second gateway appending to one of those chains waits
until the first committed, then reads the head it wrote, so each chain gets one row per seq
and every row links to the one before. A lock, not `SELECT … FOR UPDATE`, because a chain
that starts has no head row to lock yet. When one of the chains starts, the registry lock
(a key space of its own) is taken last and every head is read, so two chains started at
once by two gateways are both counted. Lock order (chains ascending, the registry last, in
different key spaces) rules deadlocks out; two namespaces sharing a hash only share a lock.

A snapshot is one `REPEATABLE READ, READ ONLY` transaction on one pooled connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import AsyncConnection

from cumulo.errors import Conflict
from cumulo.store.audit import (
    AuditAppend,
    AuditHeadRecord,
    AuditRepository,
    AuditRowRecord,
    AuditView,
    ChainLink,
    check_link,
    check_namespaces,
)

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore

# The first key of the two-key advisory locks (a key space apart from the one-key locks,
# such as the migration lock): "audn" and "audr" in ASCII.
NAMESPACE_LOCKS = 0x6175646E
REGISTRY_LOCK = 0x61756472

_ROW_COLUMNS = "seq, ts, actor, action, target, result, source, details, prev_hash, hash"
_HEADS = "SELECT namespace, seq, hash, mac FROM audit_heads"
_INSERT_ROW = (
    "INSERT INTO audit_log (namespace, seq, ts, actor, action, target, result, source, "
    "details, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_UPSERT_HEAD = (
    "INSERT INTO audit_heads (namespace, seq, hash, mac) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (namespace) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
    "mac = excluded.mac"
)


def chain_lock_key(namespace: str) -> int:
    """The second advisory-lock key of a chain: 32 bits of a hash of its namespace."""
    digest = hashlib.sha256(b"cumulo audit chain\x00" + namespace.encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


def _head(r: tuple[Any, ...]) -> AuditHeadRecord:
    return AuditHeadRecord(str(r[0]), int(r[1]), bytes(r[2]), bytes(r[3]))


def _row(namespace: str, r: tuple[Any, ...]) -> AuditRowRecord:
    return AuditRowRecord(
        namespace, int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], bytes(r[8]), bytes(r[9])
    )


class PostgresAuditRepository(AuditRepository):
    """The audit log on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def append(self, namespaces: Collection[str], link: ChainLink) -> AuditAppend:
        names = check_namespaces(namespaces)
        async with self.store.connection() as conn, conn.transaction():
            for key in sorted({chain_lock_key(n) for n in names}):
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (NAMESPACE_LOCKS, key))
            cur = await conn.execute(_HEADS + " WHERE namespace = ANY(%s)", (names,))
            before = {h.namespace: h for h in map(_head, await cur.fetchall())}
            if any(n not in before for n in names):
                await conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (REGISTRY_LOCK,))
                cur = await conn.execute(_HEADS)
                before = {h.namespace: h for h in map(_head, await cur.fetchall())}
            rows, heads = link(dict(before))
            check_link(names, before, rows, heads)
            try:
                async with conn.cursor() as batch:
                    if rows:
                        await batch.executemany(
                            _INSERT_ROW,
                            [
                                (
                                    r.namespace,
                                    r.seq,
                                    r.ts,
                                    r.actor,
                                    r.action,
                                    r.target,
                                    r.result,
                                    r.source,
                                    r.details,
                                    r.prev_hash,
                                    r.hash,
                                )
                                for r in rows
                            ],
                        )
                    if heads:
                        await batch.executemany(
                            _UPSERT_HEAD, [(h.namespace, h.seq, h.hash, h.mac) for h in heads]
                        )
            except psycopg.errors.UniqueViolation as exc:
                raise Conflict(
                    "audit rows exist past their chain's head: they were added outside the log",
                    code="audit_conflict",
                ) from exc
        return AuditAppend(before, {**before, **{h.namespace: h for h in heads}})

    def snapshot(self) -> AbstractAsyncContextManager[AuditView]:
        return self._snapshot()

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[AuditView]:
        async with self.store.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield _PostgresView(conn)

    async def page(self, namespace: str, before: int | None, limit: int) -> list[AuditRowRecord]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM audit_log "  # noqa: S608
                "WHERE namespace = %s AND seq < %s ORDER BY seq DESC LIMIT %s",
                (namespace, before if before is not None else 2**62, limit),
            )
            return [_row(namespace, r) for r in await cur.fetchall()]


class _PostgresView(AuditView):
    def __init__(self, conn: AsyncConnection[tuple[Any, ...]]) -> None:
        self.conn = conn

    async def heads(self) -> dict[str, AuditHeadRecord]:
        cur = await self.conn.execute(_HEADS)
        return {h.namespace: h for h in map(_head, await cur.fetchall())}

    async def namespaces(self) -> list[str]:
        cur = await self.conn.execute("SELECT DISTINCT namespace FROM audit_log")
        return sorted(str(r[0]) for r in await cur.fetchall())

    async def rows(self, namespace: str, after_seq: int, limit: int) -> list[AuditRowRecord]:
        cur = await self.conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM audit_log "  # noqa: S608
            "WHERE namespace = %s AND seq > %s ORDER BY seq LIMIT %s",
            (namespace, after_seq, limit),
        )
        return [_row(namespace, r) for r in await cur.fetchall()]

    async def seq_of_hash(self, namespace: str, row_hash: bytes) -> int | None:
        cur = await self.conn.execute(
            "SELECT seq FROM audit_log WHERE namespace = %s AND hash = %s LIMIT 1",
            (namespace, row_hash),
        )
        row = await cur.fetchone()
        return None if row is None else int(row[0])
