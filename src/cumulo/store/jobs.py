"""The events room's storage seam: the durable job queue (async invocations, schedule
firings, topic deliveries), cron schedules and their fires, and the trace context of
traced jobs.

One async interface, `JobQueueRepository`, whose contract is written here, and three
implementations held to one conformance suite (tests/store/test_jobs_conformance.py):

- `cumulo.store.sqlite_jobs.SQLiteJobQueueRepository`: the embedded default, in the
  platform's SQLite file through its own connection and database thread (the reference);
- `cumulo.store.postgres_jobs.PostgresJobQueueRepository`: PostgreSQL, shared by several
  gateways, claims with `FOR UPDATE SKIP LOCKED`;
- `cumulo.store.memory_jobs.MemoryJobQueueRepository`: an in-memory fake for unit tests.

States::

    queued ──claim──▶ running ──2xx──▶ succeeded
      ▲                 │ ├──4xx (not 429)──▶ failed      (permanent: retrying cannot help)
      │                 │ └──429/5xx, attempts left──▶ queued (visible_at = now + backoff)
      │                 └──429/5xx, no attempts left──▶ dead
      └──── replay ◀──── failed | dead                   (the dead-letter queue)

One time per job, its *visibility*, says when a claimer may take it: for a queued job the
time it becomes due, for a running one the end of its claimer's lease (pushed on by
heartbeats). A claimer that dies stops heartbeating, the lease runs out, and the next claim
takes the job again: delivery is AT LEAST ONCE, never lost. Each claim increments the job's
`deliveries`, the claim's fencing token: finishing or releasing names it, and a claimer
whose lease was lost (a newer delivery exists) is refused.

Times are seconds since the epoch, passed in by the caller (`now`), so tests drive a
backend with a fake clock; a backend may take them from the database's own clock instead
(PostgreSQL's `database_clock`, see there).

At rest: the SQLite backend, given the platform's cipher, seals bodies, results and errors
under the namespace data keys and keys the Idempotency-Key request hashes; the PostgreSQL
backend stores the bytes it is given (its sealing awaits the data-key seam, see
cumulo.store.postgres_jobs); the memory fake keeps what it is given. Either way a caller
gets back the bytes it stored.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`
(PostgreSQL; SQLite's errors pass through as they always have, and the dispatcher and the
scheduler retry either at their next pass). `NotDeadLetter` is the one rule error.
"""

from __future__ import annotations

import abc
import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cumulo.store.topics import TopicRepository

__all__ = [
    "DEAD",
    "DEAD_LETTER_STATUSES",
    "FAILED",
    "MAX_INTERRUPTIONS",
    "QUEUED",
    "RUNNING",
    "SOURCE_ASYNC",
    "SOURCE_SCHEDULE",
    "SOURCE_TOPIC",
    "STATUSES",
    "SUCCEEDED",
    "Claimed",
    "Enqueued",
    "JobQueueRepository",
    "JobView",
    "NewJob",
    "NotDeadLetter",
    "Outcome",
    "Schedule",
    "interrupted_error",
    "new_job_id",
    "request_hash",
]

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
DEAD = "dead"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, DEAD)
DEAD_LETTER_STATUSES = (FAILED, DEAD)

SOURCE_ASYNC = "async"
SOURCE_SCHEDULE = "schedule"
SOURCE_TOPIC = "topic"

# A job whose lease ran out this many times (its gateway died while running it each time) is
# moved to the dead letters: it may be what kills the gateway, and must not do so forever.
MAX_INTERRUPTIONS = 5

# How many fires of one schedule a backend keeps (only the newest matters to `fire`).
FIRE_HISTORY = 100


def interrupted_error() -> dict[str, Any]:
    """The error of a job moved to the dead letters after MAX_INTERRUPTIONS lost leases."""
    return {
        "code": "interrupted",
        "message": f"the platform stopped during {MAX_INTERRUPTIONS} attempts in a row",
    }


def new_job_id(now: float | None = None) -> str:
    """24 hex digits like the gateway's invocation ids: microseconds since the epoch, then 40
    random bits. Time-ordered ids append to the end of the primary key index."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros:014x}{os.urandom(5).hex()}"


def request_hash(function: str, body: bytes) -> str:
    """What an Idempotency-Key is bound to: the same key must come with the same request."""
    return hashlib.sha256(function.encode() + b"\0" + body).hexdigest()


@dataclass(frozen=True, slots=True)
class NewJob:
    id: str
    namespace: str
    function: str
    body: bytes
    max_attempts: int
    idempotency_key: str | None = None
    source: str = SOURCE_ASYNC


@dataclass(frozen=True, slots=True)
class Enqueued:
    id: str
    created: bool  # False: an earlier job with the same Idempotency-Key and request
    conflict: bool = False  # the key is taken by a different request; `id` is that job's


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    namespace: str
    function: str
    body: bytes
    attempts: int  # including this one
    max_attempts: int
    deliveries: int  # the claim's token: a finish must name it


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to. `status` is the new job status: succeeded, failed, dead, or
    queued (a retry, due at `retry_at`)."""

    id: str
    deliveries: int
    status: str
    result_status: int | None
    result: bytes | None
    error: dict[str, Any] | None
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class SubjectJob:
    """A job as the privacy room exports it."""

    id: str
    function: str
    status: str
    created_at: float
    body: bytes


@dataclass(frozen=True, slots=True)
class JobView:
    id: str
    namespace: str
    function: str
    source: str
    status: str
    attempts: int
    max_attempts: int
    deliveries: int
    replays: int
    created_at: float
    updated_at: float
    finished_at: float | None
    next_attempt_at: float | None
    result_status: int | None
    result: bytes | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Schedule:
    namespace: str
    function: str
    cron: str
    since: float


class NotDeadLetter(Exception):
    """Replay of a job that is still queued, running, or succeeded."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class JobQueueRepository(abc.ABC):
    """Where jobs, schedules and trace contexts live.

    Every method is one atomic step: concurrent calls, from one process or from several
    gateways on one database, each see the state before or after another, never half of
    it. Reads in one namespace never see another namespace's jobs.
    """

    async def open(self) -> None:
        """Make the repository ready (connect, create its tables); idempotent. A no-op for a
        backend whose schema is migrated by its store."""
        return None

    @abc.abstractmethod
    def topics(self) -> TopicRepository:
        """The topic repository on this queue's database (a publish's jobs are inserted in
        the publish's own transaction, so the two live together)."""

    # ------------------------------------------------------------ enqueue
    @abc.abstractmethod
    async def enqueue(self, jobs: Sequence[NewJob], now: float) -> list[Enqueued]:
        """Insert the jobs, queued and due at `now`, in ONE transaction (a group commit); one
        answer per job, in order. Committed when this returns.

        Idempotency-Keys are unique per namespace, across every gateway on the database: a
        job whose key the namespace already holds is not inserted; it answers with the
        holder's id, `created=False`, and `conflict=True` when the holder was another request
        (another body, or another function). Two gateways racing with one key get one job.
        Keys are forgotten with their job (`prune`)."""

    # ------------------------------------------------------------ claim and lease
    @abc.abstractmethod
    async def claim(self, owner: str, limit: int, now: float, lease_s: float) -> list[Claimed]:
        """Lease up to `limit` due jobs to `owner` until `now + lease_s`: queued jobs whose
        time has come and running jobs whose lease ran out (their claimer died), earliest due
        first (ties by id); the list is in id order. [] for `limit` <= 0.

        Concurrent claimers never get the same job while its lease holds. Each claim adds one
        to `deliveries` (the returned fencing token). Taking a queued job uses an attempt;
        re-taking one whose lease ran out does not (the platform failed, not the function)
        but counts an interruption. Before claiming, a running job whose lease ran out for
        the MAX_INTERRUPTIONS-th time goes dead with the `interrupted_error()`."""

    @abc.abstractmethod
    async def extend(self, owner: str, now: float, lease_s: float) -> int:
        """Heartbeat: push the lease of every job `owner` is running to `now + lease_s`; how
        many it holds."""

    @abc.abstractmethod
    async def release(self, owner: str, ids: Sequence[tuple[str, int]], now: float) -> int:
        """Give claimed jobs, as (id, deliveries), back unfinished (a graceful stop): queued,
        due at `now`, the attempt not counted. Only jobs `owner` still holds with that
        token; how many were released."""

    @abc.abstractmethod
    async def expire_leases(self, owners: Iterable[str], now: float) -> int:
        """End the leases of claimers known to be dead, so their jobs are due at `now` rather
        than when the lease would run out; how many leases ended."""

    @abc.abstractmethod
    async def running_owners(self) -> list[str]:
        """Every owner holding a running job (each once, in no particular order)."""

    @abc.abstractmethod
    async def finish(self, owner: str, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        """Record attempts' outcomes in ONE transaction; one bool per outcome, in order.

        An outcome counts only while its claim holds: the job is running, leased to `owner`
        with `deliveries` equal to the outcome's token. Otherwise (a lost lease: a newer
        delivery owns the job and records its own result) it is refused, False, and
        nothing changes. A queued outcome is due at its `retry_at` (or `now`); any other
        ends the job at `now` (`finished_at`)."""

    # ------------------------------------------------------------ reading
    @abc.abstractmethod
    async def get(self, job_id: str) -> JobView | None:
        """One job with its result, or None. `next_attempt_at` is set for queued jobs only."""

    @abc.abstractmethod
    async def dead_letters(
        self, namespace: str, limit: int, after: str | None = None, function: str | None = None
    ) -> list[JobView]:
        """The namespace's failed and dead jobs in id order (oldest first), ids above
        `after` (the last id of the previous page), of `function` when given; without their
        results (errors included)."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """Jobs per status, every status of STATUSES present (0 when none)."""

    # ------------------------------------------------------------ dead letters
    @abc.abstractmethod
    async def replay(self, namespace: str, job_id: str, now: float) -> JobView | None:
        """Queue a failed or dead job again under its own id, due at `now`, with fresh
        attempts and interruptions, result and error cleared, `replays` + 1; the job after.
        None for an unknown id or another namespace's; NotDeadLetter (with its status) when
        it has not ended in failure."""

    @abc.abstractmethod
    async def prune(self, before: float, limit: int = 5000) -> int:
        """Delete up to `limit` succeeded and failed jobs finished before `before` (their
        Idempotency-Keys with them); how many. Dead jobs stay until replayed: they wait for
        an operator."""

    # ------------------------------------------------------------ schedules
    @abc.abstractmethod
    async def set_schedules(
        self, namespace: str, function: str, crons: Sequence[str], now: float
    ) -> None:
        """Make `crons` the function's schedules ([] removes them). A cron kept from before
        keeps its `since` and firing history; a new one starts at `now`; a dropped one is
        forgotten with its history."""

    @abc.abstractmethod
    async def schedules(self) -> list[Schedule]:
        """Every schedule, ordered by (namespace, function, cron)."""

    @abc.abstractmethod
    async def last_fired(self, namespace: str, function: str, cron: str) -> float | None:
        """The newest slot of the schedule that fired, or None."""

    @abc.abstractmethod
    async def fire(self, schedule: Schedule, slot: float, job: NewJob, now: float) -> bool:
        """Record `slot` of the schedule as fired and enqueue `job`, atomically (neither
        without the other). EXACTLY ONCE per (schedule, slot) across every gateway on the
        database and across restarts: False, enqueuing nothing, when that slot or a later one
        has fired already, when the schedule is not stored, or when the slot predates its
        `since`."""

    # ------------------------------------------------------------ trace contexts
    @abc.abstractmethod
    async def put_trace(self, job_id: str, traceparent: str, tracestate: str | None) -> None:
        """Store (or replace) the W3C trace context of a job about to be enqueued."""

    @abc.abstractmethod
    async def get_trace(self, job_id: str) -> tuple[str, str | None] | None:
        """(traceparent, tracestate) of a job, or None."""

    @abc.abstractmethod
    async def prune_traces(self) -> int:
        """Forget the trace contexts whose job does not exist (pruned, or never inserted: an
        Idempotency-Key replay); how many."""

    # ------------------------------------------------------------ data subjects
    @abc.abstractmethod
    async def subject_jobs(self, namespace: str, body_prefix: bytes) -> list[SubjectJob]:
        """The namespace's jobs (any status) whose body starts with `body_prefix` (a body
        sealed to a data subject starts with its marker and pseudonym: cumulo.privacy),
        oldest `created_at` first, bodies as enqueued."""

    @abc.abstractmethod
    async def erase_subject(self, namespace: str, body_prefix: bytes) -> int:
        """Delete those jobs, whatever their status; how many."""

    @abc.abstractmethod
    async def purge_finished(self, namespace: str, before: float) -> int:
        """Delete the namespace's succeeded, failed and dead jobs finished before `before`
        (retention); how many."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds (a connection, a thread); a no-op when it owns
        nothing. A closed repository may be opened again."""
        return None

    async def __aenter__(self) -> JobQueueRepository:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
