"""The quantum room's storage seam: quantum job records.

One small async interface, `QuantumJobRepository`, whose contract is written here, and
several implementations that all pass one conformance suite
(tests/store/test_quantum_conformance.py):

- `cumulo.store.sqlite_quantum.SQLiteQuantumJobRepository`: the embedded default, its own
  SQLite file (`<data_dir>/quantum/quantum.db`) on its own database thread;
- `cumulo.store.postgres_quantum.PostgresQuantumJobRepository`: PostgreSQL through the
  `PostgresStore` pool (`store.quantum`), table `quantum_jobs`;
- `cumulo.store.memory_quantum.MemoryQuantumJobRepository`: an in-memory fake for tests.

The queue, the warm pool and the lifecycle rules live in `cumulo.quantum.service`; a
repository stores what it is given, with one rule of its own: a job in a terminal state
(`TERMINAL`) is never changed again.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`
(503 `store_unavailable`) from the driver's error; a uniqueness rule broken on insert is a
`cumulo.errors.Conflict`; nothing driver-specific escapes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = [
    "ACTIVE",
    "CONFLICT_IDEMPOTENCY_KEY",
    "CONFLICT_JOB_ID",
    "TERMINAL",
    "JobRow",
    "QuantumJobRepository",
]

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running", "cancelling")

# `Conflict.code` of a refused insert: which uniqueness rule it broke.
CONFLICT_IDEMPOTENCY_KEY = "idempotency_key_exists"
CONFLICT_JOB_ID = "job_exists"


@dataclass(frozen=True, slots=True)
class JobRow:
    """One quantum job as stored. `request` is the job's JSON body (sorted keys);
    `events` are `{"at", "state", "message"}` dicts, oldest first; `error` is
    `{"code", "message"}` or None."""

    id: str
    namespace: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    idempotency_key: str | None
    request_hash: str
    request: bytes
    method: str | None
    device: str | None
    estimated_bytes: int | None
    num_pubs: int
    seed: int
    timeout_s: float
    attempts: int
    events: list[dict[str, Any]]
    error: dict[str, str] | None
    result: bytes | None  # JSON, kept encoded: the API sends it on as it is
    # The gateway that runs it (several gateways on one store), its lease, and whether
    # another gateway asked it to cancel; None/False on a store with one gateway.
    owner: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False


class QuantumJobRepository(abc.ABC):
    """Where quantum jobs live.

    Every method is one atomic step: concurrent calls (from one process or from several
    gateways on one database) each see a job before or after another call's change, never
    half of it. Returned records are the caller's own (mutating their lists or dicts
    changes nothing stored). Lists are ordered by `created_at` and then by `id` in code
    point order, so equal timestamps still give one stable order.
    """

    @abc.abstractmethod
    async def insert(self, row: JobRow) -> None:
        """Store a new job as given (`result` included when it is not None).

        An idempotency key is unique per namespace (None never clashes). Raises
        `cumulo.errors.Conflict` with code `CONFLICT_IDEMPOTENCY_KEY` when another job of
        the namespace holds `row.idempotency_key` (two racing inserts with one key: exactly
        one is stored), or `CONFLICT_JOB_ID` when a job with `row.id` exists. A refused
        insert stores nothing."""

    @abc.abstractmethod
    async def get(self, job_id: str, *, with_result: bool = True) -> JobRow | None:
        """The job with that id, in any namespace (the caller checks the namespace), or
        None. Its `result` is None when `with_result` is false (the blob is not read)."""

    @abc.abstractmethod
    async def by_idempotency_key(self, namespace: str, key: str) -> JobRow | None:
        """The namespace's job holding that idempotency key, without its result, or None."""

    @abc.abstractmethod
    async def list_jobs(self, namespace: str, state: str | None, limit: int) -> list[JobRow]:
        """At most `limit` of the namespace's jobs (only those in `state` unless it is
        None), newest first: `created_at` descending, then `id` descending. Results are
        not read (`result` is None)."""

    @abc.abstractmethod
    async def active(self) -> list[JobRow]:
        """Every job of every namespace in an `ACTIVE` state (queued, running,
        cancelling), oldest first: `created_at` ascending, then `id` ascending. Results
        are not read. (What a restart resumes.)"""

    @abc.abstractmethod
    async def update(
        self,
        job_id: str,
        *,
        state: str,
        events: list[dict[str, Any]],
        started_at: float | None = None,
        finished_at: float | None = None,
        attempts: int | None = None,
        error: dict[str, str] | None = None,
        result: bytes | None = None,
        owner: str | None = None,
    ) -> bool:
        """Move a job to `state` with `events` replacing its list; each other field given
        (not None) replaces the stored one, None keeps it.

        False, and nothing changed, when there is no such job or the job is already in a
        `TERMINAL` state: terminal states are never overwritten, so of several racing
        updates of an active job to terminal states exactly one returns True and sticks.
        With `owner`, also False unless `owner` holds the job's lease (a fencing token: a
        gateway whose lease another took over writes nothing)."""

    # ------------------------------------------------------------ leases (several gateways)
    @abc.abstractmethod
    async def claim(self, job_id: str, owner: str, until: float, now: float) -> bool:
        """Make `owner` the gateway that runs an active job, its lease ending at `until`.

        True when the job is active and nobody else holds it: no owner, a lease that ran
        out before `now`, or `owner` itself. False, and nothing changed, otherwise (another
        gateway's live lease; a finished or unknown job). Of racing claims one wins."""

    @abc.abstractmethod
    async def renew(self, owner: str, until: float) -> list[str]:
        """Extend every lease `owner` holds on an active job to `until`; returns the ids
        of those jobs whose cancellation another gateway asked for (`request_cancel`)."""

    @abc.abstractmethod
    async def request_cancel(self, job_id: str) -> bool:
        """Ask the gateway that runs an active job to cancel it (it sees the request at
        its next `renew`). False when the job is not active."""

    @abc.abstractmethod
    async def disown(self, owner: str) -> None:
        """Give up every lease `owner` holds (a gateway stopping cleanly), so another
        gateway may claim those jobs at once."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds (a connection, a thread); a no-op when it
        owns nothing."""
        return None

    async def __aenter__(self) -> QuantumJobRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
