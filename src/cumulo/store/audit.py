"""The audit room's storage seam: hash-chained rows per namespace and one head per chain.

One small async interface, `AuditRepository`, whose contract is written here, and several
implementations held to one conformance suite (tests/store/test_audit_conformance.py):

- `cumulo.store.sqlite_audit.SQLiteAuditRepository`: the embedded default, over
  `SQLiteStore`'s own audit methods on its database thread (same tables, same file);
- `cumulo.store.postgres_audit.PostgresAuditRepository`: PostgreSQL (migration 9), shared
  by several gateways;
- `cumulo.store.memory_audit.MemoryAuditRepository`: an in-memory fake for unit tests.

What a row and a head mean (the hashing, the head's HMAC, the registry's count) belongs to
the security room (cumulo.security.audit); a repository stores them and keeps them whole.
The one rule it owns is the chain's shape: a namespace's rows carry seqs 1, 2, 3, ... with
no gap and no fork, each row's `prev_hash` is the hash of the row before it, and the head
names the newest row. That holds with several gateways appending to one chain at once
because the chain link (previous hash, next seq) is computed inside the repository's atomic
step, from the head read there (`append`), never from what a gateway saw earlier.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType

__all__ = [
    "REGISTRY",
    "AuditAppend",
    "AuditHeadRecord",
    "AuditRepository",
    "AuditRowRecord",
    "AuditView",
    "ChainLink",
    "check_link",
    "check_namespaces",
]

# The head under this namespace is the registry (it counts the chains ever started). No
# namespace is empty, so it can not collide with a chain.
REGISTRY = ""


@dataclass(frozen=True, slots=True)
class AuditRowRecord:
    namespace: str
    seq: int
    ts: float
    actor: str
    action: str
    target: str
    result: str
    source: str
    details: str  # canonical JSON, already redacted
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class AuditHeadRecord:
    namespace: str
    seq: int
    hash: bytes
    mac: bytes


# Given the heads read inside the step, the rows to append and the heads to write.
ChainLink = Callable[
    [Mapping[str, AuditHeadRecord]],
    tuple[Sequence[AuditRowRecord], Sequence[AuditHeadRecord]],
]


@dataclass(frozen=True, slots=True)
class AuditAppend:
    """What one `append` did: `before`, the heads its link was given; `after`, those heads
    with the ones it wrote."""

    before: dict[str, AuditHeadRecord]
    after: dict[str, AuditHeadRecord]


def check_namespaces(namespaces: Collection[str]) -> list[str]:
    """The chains an append names, sorted and distinct; ValueError for none or REGISTRY."""
    names = sorted(set(namespaces))
    if not names:
        raise ValueError("an append names at least one namespace")
    if REGISTRY in names:
        raise ValueError("the registry is not a chain: it moves only when a chain starts")
    return names


def check_link(
    namespaces: Collection[str],
    before: Mapping[str, AuditHeadRecord],
    rows: Sequence[AuditRowRecord],
    heads: Sequence[AuditHeadRecord],
) -> None:
    """ValueError unless `rows` and `heads` continue the chains of `namespaces` from
    `before` (the append contract); shared by the backends so they refuse alike."""
    named = set(namespaces)
    last: dict[str, AuditRowRecord] = {}
    for row in rows:
        if row.namespace not in named:
            raise ValueError(f"a row for {row.namespace!r}, a namespace the append did not name")
        prev = last.get(row.namespace)
        head = before.get(row.namespace)
        seq = prev.seq + 1 if prev is not None else (head.seq + 1 if head is not None else 1)
        if row.seq != seq:
            raise ValueError(f"{row.namespace!r}: row {row.seq} where {seq} comes next")
        link = prev.hash if prev is not None else (head.hash if head is not None else None)
        if link is not None and row.prev_hash != link:
            raise ValueError(f"{row.namespace!r}: row {row.seq} does not chain to row {seq - 1}")
        last[row.namespace] = row
    written: set[str] = set()
    for h in heads:
        if h.namespace in written:
            raise ValueError(f"two heads for {h.namespace!r}")
        written.add(h.namespace)
        if h.namespace == REGISTRY:
            if all(n in before for n in named):
                raise ValueError("the registry is written only by an append that starts a chain")
            continue
        newest = last.get(h.namespace)
        if newest is None:
            raise ValueError(f"a head for {h.namespace!r} without a row appended to it")
        if (h.seq, h.hash) != (newest.seq, newest.hash):
            raise ValueError(f"the head of {h.namespace!r} is not its newest row")
    missing = sorted(set(last) - written)
    if missing:
        raise ValueError(f"rows appended to {missing[0]!r} without moving its head")


class AuditView(abc.ABC):
    """Reads from one committed state of the log (`AuditRepository.snapshot`): no append
    lands between two of them."""

    @abc.abstractmethod
    async def heads(self) -> dict[str, AuditHeadRecord]:
        """Every head, the registry's (under REGISTRY) included."""

    @abc.abstractmethod
    async def namespaces(self) -> list[str]:
        """The namespaces that have rows (with or without a head), in code-point order."""

    @abc.abstractmethod
    async def rows(self, namespace: str, after_seq: int, limit: int) -> list[AuditRowRecord]:
        """At most `limit` of the namespace's rows with seq > `after_seq`, oldest first."""

    @abc.abstractmethod
    async def seq_of_hash(self, namespace: str, row_hash: bytes) -> int | None:
        """The seq of a row of the namespace whose hash is `row_hash` (None: no such row)."""


class AuditRepository(abc.ABC):
    """Where the audit log lives."""

    @abc.abstractmethod
    async def append(self, namespaces: Collection[str], link: ChainLink) -> AuditAppend:
        """Append to the chains of `namespaces` in one atomic step, also across gateways.

        Inside the step, holding every named chain (a second append to any of them waits
        until this one committed or rolled back), the repository reads the heads and calls
        `link(heads)` once; the rows and heads it returns are written, or nothing is.
        `heads` holds the current head of each named namespace that has one; when one of
        them has none (a chain starts), it holds every head there is, the registry's
        included, read while holding the registry too (so two chains started at once are
        both counted). A backend may give more heads than that, never fewer.

        `link` runs inside the step: it must not await or do I/O, and whatever it raises
        propagates with nothing written. What it returns must continue each chain: rows of
        named namespaces only, seqs head+1, head+2, ... (1 for a chain that starts), each
        `prev_hash` the hash of the row before (the first row's is free), and for every
        namespace given rows exactly one head, equal to its newest row; a head under
        REGISTRY only in a step that starts a chain. Anything else is ValueError, nothing
        written; so is naming no namespace, or REGISTRY.

        Conflict (cumulo.errors) when a row's (namespace, seq) is taken already: rows were
        added behind the log's back; nothing is written. Returns the heads `link` was given
        and those heads with the written ones."""

    @abc.abstractmethod
    def snapshot(self) -> AbstractAsyncContextManager[AuditView]:
        """A view of one committed state for a verification: appends that commit while it
        is open are not seen. (SQLite: against this repository's appends, the one writer
        of a data dir; it waits for them, and they for it.)"""

    @abc.abstractmethod
    async def page(self, namespace: str, before: int | None, limit: int) -> list[AuditRowRecord]:
        """At most `limit` of the namespace's rows with seq < `before` (None: from the
        newest), newest first: a page of the dashboard's audit view."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds; a no-op when it owns nothing."""
        return None

    async def __aenter__(self) -> AuditRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
