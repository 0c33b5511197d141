"""`LogRepository` in memory: a fake for unit tests (no database, no thread, nothing
sealed), held to the same conformance suite as the real backends."""

from __future__ import annotations

import itertools

import orjson

from cumulo.store.base import LogRecord
from cumulo.store.logs import LINE_OVERHEAD, LogRepository

_Line = tuple[int, LogRecord, int]  # seq, line, stored size


def stored_size(record: LogRecord) -> int:
    """What a line "holds" here: the JSON of [message, fields], the payload the real
    backends seal (their sizes add the seal's header and tag)."""
    return len(orjson.dumps([record.message, record.fields]))


class MemoryLogRepository(LogRepository):
    """Lines in per-function lists. Each method runs without awaiting, so it is atomic on
    its event loop, as the contract asks."""

    def __init__(self) -> None:
        self._lines: dict[tuple[str, str], list[_Line]] = {}
        self._seq = itertools.count(1)  # one sequence for every function, as in SQLite

    async def append(
        self,
        records: list[LogRecord],
        *,
        retain_rows: int | None = None,
        retain_bytes: int | None = None,
    ) -> None:
        written = set()
        for r in records:
            key = (r.namespace, r.function)
            self._lines.setdefault(key, []).append((next(self._seq), r, stored_size(r)))
            written.add(key)
        for key in written:
            self._lines[key] = _trimmed(self._lines[key], retain_rows, retain_bytes)

    async def query(
        self, namespace: str, function: str, *, after_seq: int = 0, limit: int = 100
    ) -> list[tuple[int, LogRecord]]:
        lines = [(s, r) for s, r, _ in self._lines.get((namespace, function), []) if s > after_seq]
        return lines[-limit:] if limit > 0 else []

    async def stats(self, namespace: str, function: str) -> tuple[int, int]:
        lines = self._lines.get((namespace, function), [])
        return len(lines), sum(size for _, _, size in lines)

    async def purge(self, namespace: str, before: float) -> int:
        deleted = 0
        for (ns, fn), lines in self._lines.items():
            if ns == namespace:
                kept = [line for line in lines if line[1].ts >= before]
                deleted += len(lines) - len(kept)
                self._lines[(ns, fn)] = kept
        return deleted


def _trimmed(lines: list[_Line], retain_rows: int | None, retain_bytes: int | None) -> list[_Line]:
    """The newest lines within both caps (lines are in seq order)."""
    if retain_rows is not None:
        lines = lines[max(len(lines) - retain_rows, 0) :]
    if retain_bytes is not None:
        total, keep = 0, 0
        for _, _, size in reversed(lines):
            total += size + LINE_OVERHEAD
            if total > retain_bytes:
                break
            keep += 1
        lines = lines[len(lines) - keep :]
    return lines
