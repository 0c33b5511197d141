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

The privacy room erases records by id (`delete`) and purges old ones (`purge`) through
this interface (cumulo.privacy.data.SubjectData.erase and .purge).
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

    # ------------------------------------------------------------ privacy
    @abc.abstractmethod
    async def delete(self, namespace: str, ids: list[str]) -> int:
        """Delete the namespace's records with those ids (erasure); how many."""

    @abc.abstractmethod
    async def purge(self, namespace: str, before: float) -> int:
        """Delete the namespace's records started before `before` (retention); how many."""

    @abc.abstractmethod
    async def namespaces(self) -> list[str]:
        """Every namespace holding a record, each once, sorted."""

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
