"""The invocations room's storage seam: one record per finished invocation.

One small async interface, `InvocationRepository`, whose contract is written here, and
several implementations held to one conformance suite
(tests/store/test_invocations_conformance.py):

- `cumulo.store.sqlite_invocations.SQLiteInvocationRepository`: the embedded default, over
  `SQLiteStore`'s own invocation methods on its database thread (the reference behaviour);
- `cumulo.store.postgres_invocations.PostgresInvocationRepository`: PostgreSQL
  (migration 8), shared by several gateways;
- `cumulo.store.memory_invocations.MemoryInvocationRepository`: an in-memory fake.

Records are `cumulo.store.base.InvocationRecord`s (nothing in them is sealed: ids, status
codes and timings). An invocation id is unique across namespaces (the gateway makes them).

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`.

Not on this seam yet: the privacy room deletes records with its own SQL (erasure by id and
the retention purge: cumulo.privacy.data.SubjectData.erase and .purge), on SQLite only.
"""

from __future__ import annotations

import abc
from types import TracebackType

from cumulo.store.base import InvocationRecord

__all__ = ["InvocationRecord", "InvocationRepository"]


class InvocationRepository(abc.ABC):
    """Where invocation records live. Every method is one atomic step, also across
    several gateways on one database. Reads in one namespace never see another's records."""

    @abc.abstractmethod
    async def append(self, records: list[InvocationRecord]) -> None:
        """Store the records, all or none. A record whose id is stored already replaces
        it (also within `records`: the last one wins). [] does nothing."""

    @abc.abstractmethod
    async def get(self, namespace: str, invocation_id: str) -> InvocationRecord | None:
        """The record with that id in that namespace, or None."""

    @abc.abstractmethod
    async def recent(self, namespace: str, function: str, limit: int) -> list[InvocationRecord]:
        """At most `limit` of the function's records, latest `started_at` first (records
        started at the same instant in no promised order)."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds; a no-op when it owns nothing."""
        return None

    async def __aenter__(self) -> InvocationRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
