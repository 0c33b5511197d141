"""`AuditRepository` over `SQLiteStore`: each call runs the store's own audit methods on its
database thread (`store.call`), so the embedded backend keeps its tables, its file and its
on-disk format (chains written before the seam verify unchanged).

An append is one `BEGIN IMMEDIATE` transaction that reads every head and writes the rows and
heads (SQLite's write lock holds the chains, also against another process on the file). A
snapshot's reads are separate calls on the thread, so the repository keeps appends out
while one is open: an `asyncio.Lock`, FIFO, which also keeps appends in the order they came.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager

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
from cumulo.store.sqlite import SQLiteStore


class SQLiteAuditRepository(AuditRepository):
    """The embedded backend. The store is opened and closed by its owner, not here."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _exclusive(self) -> asyncio.Lock:
        # One lock per event loop: tests (and the CLI) drive a repository from several
        # `asyncio.run`s, and a lock that ever waited is bound to its loop.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    def _append(self, names: list[str], link: ChainLink) -> AuditAppend:
        store = self.store
        with store.transaction():
            before = store.audit_heads()
            rows, heads = link(before)
            check_link(names, before, rows, heads)
            try:
                store.audit_write(list(rows), list(heads))
            except sqlite3.IntegrityError as exc:
                raise Conflict(
                    "audit rows exist past their chain's head: they were added outside the log",
                    code="audit_conflict",
                ) from exc
        return AuditAppend(before, {**before, **{h.namespace: h for h in heads}})

    async def append(self, namespaces: Collection[str], link: ChainLink) -> AuditAppend:
        names = check_namespaces(namespaces)
        async with self._exclusive():
            return await self.store.call(self._append, names, link)

    def snapshot(self) -> AbstractAsyncContextManager[AuditView]:
        return self._snapshot()

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[AuditView]:
        async with self._exclusive():
            yield _SQLiteView(self.store)

    async def page(self, namespace: str, before: int | None, limit: int) -> list[AuditRowRecord]:
        return await self.store.call(self.store.audit_page, namespace, before, limit)


class _SQLiteView(AuditView):
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def heads(self) -> dict[str, AuditHeadRecord]:
        return await self.store.call(self.store.audit_heads)

    async def namespaces(self) -> list[str]:
        return await self.store.call(self.store.audit_namespaces)

    async def rows(self, namespace: str, after_seq: int, limit: int) -> list[AuditRowRecord]:
        return await self.store.call(self.store.audit_rows, namespace, after_seq, limit)

    async def seq_of_hash(self, namespace: str, row_hash: bytes) -> int | None:
        return await self.store.call(self.store.audit_seq_of_hash, namespace, row_hash)
