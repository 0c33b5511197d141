"""The logs room's storage seam: the stored lines of each function's log.

One small async interface, `LogRepository`, whose contract is written here, and several
implementations held to one conformance suite (tests/store/test_logs_conformance.py):

- `cumulo.store.sqlite_logs.SQLiteLogRepository`: the embedded default, over `SQLiteStore`'s
  own log methods on its database thread (the reference behaviour);
- `cumulo.store.postgres_logs.PostgresLogRepository`: PostgreSQL (migration 8), shared by
  several gateways, sealed like SQLite (cumulo.store.postgres_keys);
- `cumulo.store.memory_logs.MemoryLogRepository`: an in-memory fake for unit tests.

Lines are `cumulo.store.base.LogRecord`s; callers (observability.logs.Recorder) cap, redact
and buffer them before they reach a repository, which stores what it is given.

Each stored line has a `seq`: a positive integer, unique in its (namespace, function) and
increasing in the order lines were appended to that function (within one `append`, in list
order). A reader that polls with `after_seq` = the last seq it saw misses no line and sees
none twice, also when several gateways append to one function (on PostgreSQL a line with a
lower seq is never committed after one with a higher seq of the same function). Seqs need
not be consecutive, nor comparable between functions.

At rest (the real backends, with an encryptor): a line's message and fields are sealed
together, bound to (function, version, invocation id) (purpose "log"): a row moved to
another function, version or invocation does not open, and one that does not open raises
`cumulo.security.crypto.CryptoError`. Namespace, function, version, invocation id,
timestamp and level stay in clear (what queries and retention filter on).

A line's stored size is what the backend holds for its message and fields (the sealed blob
on the real backends; the JSON of [message, fields] in memory). Retention counts each line
as its stored size plus `LINE_OVERHEAD` bytes.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`.

The privacy room's retention purge deletes old lines through `purge`
(cumulo.privacy.data.SubjectData.purge).
"""

from __future__ import annotations

import abc
from types import TracebackType

from cumulo.store.base import LogRecord

__all__ = ["LINE_OVERHEAD", "LogRecord", "LogRepository"]

# What retention adds per line to its stored size: the row's other columns and index entry,
# roughly (SQLiteStore._trim_logs counts the same).
LINE_OVERHEAD = 64


class LogRepository(abc.ABC):
    """Where function log lines live.

    `append` is one atomic step, also across several gateways on one database: its lines
    and the trimming after them are committed together, and two appends to one function
    are ordered (the second's lines get higher seqs and are trimmed with the first's in
    view). Reads in one (namespace, function) never see another's lines.
    """

    @abc.abstractmethod
    async def append(
        self,
        records: list[LogRecord],
        *,
        retain_rows: int | None = None,
        retain_bytes: int | None = None,
    ) -> None:
        """Store the lines (of any functions), in list order; then, for each function
        written to, drop its oldest lines so that at most `retain_rows` lines remain and
        the kept lines' stored sizes plus `LINE_OVERHEAD` each sum to at most
        `retain_bytes` (None: no such cap). The newest lines are kept: trimming removes a
        prefix of the function's lines in seq order, so a single line over `retain_bytes`
        leaves none. Functions not written to are not trimmed. [] does nothing."""

    @abc.abstractmethod
    async def query(
        self, namespace: str, function: str, *, after_seq: int = 0, limit: int = 100
    ) -> list[tuple[int, LogRecord]]:
        """(seq, line) of the newest `limit` lines with seq > `after_seq`, oldest first."""

    @abc.abstractmethod
    async def stats(self, namespace: str, function: str) -> tuple[int, int]:
        """(lines, stored bytes) of a function's log: its line count and the sum of its
        lines' stored sizes (without `LINE_OVERHEAD`). (0, 0) when it has none."""

    async def shrink_memory(self) -> None:
        """Give back caches the backend grew (after a burst of appends); a no-op where
        there is nothing to give (the embedded store shrinks SQLite's page cache)."""
        return None

    @abc.abstractmethod
    async def purge(self, namespace: str, before: float) -> int:
        """Delete the namespace's lines with `ts` before `before` (retention); how many."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds; a no-op when it owns nothing."""
        return None

    async def __aenter__(self) -> LogRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
