"""`AuditRepository` in memory: a fake for unit tests (no database, no thread), held to the
same conformance suite as the real backends."""

from __future__ import annotations

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

_Rows = dict[str, dict[int, AuditRowRecord]]  # namespace -> seq -> row


class MemoryAuditRepository(AuditRepository):
    """Rows and heads in dicts. `append` runs without awaiting, so it is atomic on its
    event loop; a snapshot is a copy taken when it opens."""

    def __init__(self) -> None:
        self._rows: _Rows = {}
        self._heads: dict[str, AuditHeadRecord] = {}

    async def append(self, namespaces: Collection[str], link: ChainLink) -> AuditAppend:
        names = check_namespaces(namespaces)
        before = dict(self._heads)
        rows, heads = link(dict(before))
        check_link(names, before, rows, heads)
        for row in rows:
            if row.seq in self._rows.get(row.namespace, {}):
                raise Conflict(f"audit row {row.namespace!r}/{row.seq} exists already")
        for row in rows:
            self._rows.setdefault(row.namespace, {})[row.seq] = row
        for head in heads:
            self._heads[head.namespace] = head
        return AuditAppend(before, {**before, **{h.namespace: h for h in heads}})

    def snapshot(self) -> AbstractAsyncContextManager[AuditView]:
        return self._snapshot()

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[AuditView]:
        yield _MemoryView(dict(self._heads), {ns: dict(rows) for ns, rows in self._rows.items()})

    async def page(self, namespace: str, before: int | None, limit: int) -> list[AuditRowRecord]:
        rows = self._rows.get(namespace, {})
        seqs = sorted((s for s in rows if before is None or s < before), reverse=True)
        return [rows[s] for s in seqs[:limit]]


class _MemoryView(AuditView):
    def __init__(self, heads: dict[str, AuditHeadRecord], rows: _Rows) -> None:
        self._heads = heads
        self._rows = rows

    async def heads(self) -> dict[str, AuditHeadRecord]:
        return dict(self._heads)

    async def namespaces(self) -> list[str]:
        return sorted(ns for ns, rows in self._rows.items() if rows)

    async def rows(self, namespace: str, after_seq: int, limit: int) -> list[AuditRowRecord]:
        rows = self._rows.get(namespace, {})
        return [rows[s] for s in sorted(s for s in rows if s > after_seq)[:limit]]

    async def seq_of_hash(self, namespace: str, row_hash: bytes) -> int | None:
        return next(
            (r.seq for r in self._rows.get(namespace, {}).values() if r.hash == row_hash), None
        )
