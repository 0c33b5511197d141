"""`JobQueueRepository` in memory: a fake for unit tests (no database, no thread), held to
the same conformance suite as the real backends. Each method runs without awaiting, so it
is atomic on its event loop, as the contract asks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from cumulo.store.jobs import (
    DEAD,
    DEAD_LETTER_STATUSES,
    FIRE_HISTORY,
    MAX_INTERRUPTIONS,
    QUEUED,
    RUNNING,
    STATUSES,
    Claimed,
    Enqueued,
    JobQueueRepository,
    JobView,
    NewJob,
    NotDeadLetter,
    Outcome,
    Schedule,
    SubjectJob,
    interrupted_error,
    request_hash,
)

if TYPE_CHECKING:
    from cumulo.store.memory_topics import MemoryTopicRepository

ScheduleKey = tuple[str, str, str]


@dataclass
class _Job:
    id: str
    namespace: str
    function: str
    source: str
    body: bytes
    idempotency_key: str | None
    request_hash: str
    status: str
    visible_at: float
    max_attempts: int
    created_at: float
    updated_at: float
    lease_owner: str | None = None
    deliveries: int = 0
    attempts: int = 0
    interruptions: int = 0
    replays: int = 0
    finished_at: float | None = None
    result_status: int | None = None
    result: bytes | None = None
    error: str | None = None  # JSON, as the real backends store it

    def view(self, with_result: bool) -> JobView:
        return JobView(
            id=self.id,
            namespace=self.namespace,
            function=self.function,
            source=self.source,
            status=self.status,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            deliveries=self.deliveries,
            replays=self.replays,
            created_at=self.created_at,
            updated_at=self.updated_at,
            finished_at=self.finished_at,
            next_attempt_at=self.visible_at if self.status == QUEUED else None,
            result_status=self.result_status,
            result=self.result if with_result else None,
            error=orjson.loads(self.error) if self.error is not None else None,
        )


class MemoryJobQueueRepository(JobQueueRepository):
    """Everything in dicts; bodies, results and errors kept as given."""

    def __init__(self) -> None:
        self.jobs: dict[str, _Job] = {}
        self._keys: dict[tuple[str, str], str] = {}  # (namespace, idempotency key) → id
        self._schedules: dict[ScheduleKey, float] = {}  # → since
        self._fires: dict[ScheduleKey, dict[float, str]] = {}  # → slot → job id
        self._traces: dict[str, tuple[str, str | None]] = {}
        self._topics: MemoryTopicRepository | None = None  # one, sharing these dicts

    def topics(self) -> MemoryTopicRepository:
        if self._topics is None:
            from cumulo.store.memory_topics import MemoryTopicRepository

            self._topics = MemoryTopicRepository(self)
        return self._topics

    # ------------------------------------------------------------ enqueue
    async def enqueue(self, jobs: Sequence[NewJob], now: float) -> list[Enqueued]:
        return [self.insert(job, now) for job in jobs]

    def insert(self, job: NewJob, now: float) -> Enqueued:
        """One job, synchronously (the memory topics fake shares it)."""
        digest = request_hash(job.function, job.body)
        if job.idempotency_key is not None:
            holder = self._keys.get((job.namespace, job.idempotency_key))
            if holder is not None:
                return Enqueued(
                    holder, created=False, conflict=self.jobs[holder].request_hash != digest
                )
        if job.id in self.jobs:
            raise ValueError(f"job id {job.id} already exists")
        self.jobs[job.id] = _Job(
            id=job.id,
            namespace=job.namespace,
            function=job.function,
            source=job.source,
            body=job.body,
            idempotency_key=job.idempotency_key,
            request_hash=digest,
            status=QUEUED,
            visible_at=now,
            max_attempts=job.max_attempts,
            created_at=now,
            updated_at=now,
        )
        if job.idempotency_key is not None:
            self._keys[(job.namespace, job.idempotency_key)] = job.id
        return Enqueued(job.id, created=True)

    # ------------------------------------------------------------ claim and lease
    async def claim(self, owner: str, limit: int, now: float, lease_s: float) -> list[Claimed]:
        if limit <= 0:
            return []
        error = orjson.dumps(interrupted_error()).decode()
        for job in self.jobs.values():
            if (
                job.status == RUNNING
                and job.visible_at <= now
                and job.interruptions + 1 >= MAX_INTERRUPTIONS
            ):
                job.status, job.lease_owner, job.error = DEAD, None, error
                job.updated_at = job.finished_at = now
        due = sorted(
            (
                j
                for j in self.jobs.values()
                if j.status in (QUEUED, RUNNING) and j.visible_at <= now
            ),
            key=lambda j: (j.visible_at, j.id),
        )[:limit]
        claimed = []
        for job in sorted(due, key=lambda j: j.id):
            if job.status == QUEUED:
                job.attempts += 1
            else:
                job.interruptions += 1
            job.deliveries += 1
            job.status, job.lease_owner = RUNNING, owner
            job.visible_at, job.updated_at = now + lease_s, now
            claimed.append(
                Claimed(
                    job.id,
                    job.namespace,
                    job.function,
                    job.body,
                    job.attempts,
                    job.max_attempts,
                    job.deliveries,
                )
            )
        return claimed

    def _held(self, owner: str) -> list[_Job]:
        return [j for j in self.jobs.values() if j.status == RUNNING and j.lease_owner == owner]

    async def extend(self, owner: str, now: float, lease_s: float) -> int:
        held = self._held(owner)
        for job in held:
            job.visible_at = now + lease_s
        return len(held)

    def _claim_holds(self, job_id: str, owner: str, deliveries: int) -> _Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.status != RUNNING or job.lease_owner != owner:
            return None
        return job if job.deliveries == deliveries else None

    async def release(self, owner: str, ids: Sequence[tuple[str, int]], now: float) -> int:
        released = 0
        for job_id, deliveries in ids:
            job = self._claim_holds(job_id, owner, deliveries)
            if job is not None:
                job.status, job.lease_owner = QUEUED, None
                job.attempts -= 1
                job.visible_at = job.updated_at = now
                released += 1
        return released

    async def expire_leases(self, owners: Iterable[str], now: float) -> int:
        expired = 0
        for owner in set(owners):
            for job in self._held(owner):
                if job.visible_at > now:
                    job.visible_at = now
                    expired += 1
        return expired

    async def running_owners(self) -> list[str]:
        return sorted(
            {j.lease_owner for j in self.jobs.values() if j.status == RUNNING and j.lease_owner}
        )

    async def finish(self, owner: str, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        applied = []
        for out in outcomes:
            job = self._claim_holds(out.id, owner, out.deliveries)
            if job is None:
                applied.append(False)
                continue
            job.status, job.lease_owner = out.status, None
            job.result_status, job.result = out.result_status, out.result
            job.error = orjson.dumps(out.error).decode() if out.error is not None else None
            job.visible_at = out.retry_at if out.retry_at is not None else now
            job.finished_at = now if out.status != QUEUED else None
            job.updated_at = now
            applied.append(True)
        return applied

    # ------------------------------------------------------------ reading
    async def get(self, job_id: str) -> JobView | None:
        job = self.jobs.get(job_id)
        return None if job is None else job.view(with_result=True)

    async def dead_letters(
        self, namespace: str, limit: int, after: str | None = None, function: str | None = None
    ) -> list[JobView]:
        found = sorted(
            (
                j
                for j in self.jobs.values()
                if j.namespace == namespace
                and j.status in DEAD_LETTER_STATUSES
                and j.id > (after or "")
                and (function is None or j.function == function)
            ),
            key=lambda j: j.id,
        )
        return [j.view(with_result=False) for j in found[: max(limit, 0)]]

    async def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for job in self.jobs.values():
            counts[job.status] += 1
        return counts

    # ------------------------------------------------------------ dead letters
    async def replay(self, namespace: str, job_id: str, now: float) -> JobView | None:
        job = self.jobs.get(job_id)
        if job is None or job.namespace != namespace:
            return None
        if job.status not in DEAD_LETTER_STATUSES:
            raise NotDeadLetter(job.status)
        job.status, job.attempts, job.interruptions = QUEUED, 0, 0
        job.replays += 1
        job.visible_at = job.updated_at = now
        job.finished_at = job.result_status = job.result = job.error = job.lease_owner = None
        return job.view(with_result=True)

    async def prune(self, before: float, limit: int = 5000) -> int:
        old = [
            j
            for j in self.jobs.values()
            if j.status in ("succeeded", "failed")
            and j.finished_at is not None
            and j.finished_at < before
        ][: max(limit, 0)]
        for job in old:
            del self.jobs[job.id]
            if job.idempotency_key is not None:
                self._keys.pop((job.namespace, job.idempotency_key), None)
        return len(old)

    # ------------------------------------------------------------ schedules
    async def set_schedules(
        self, namespace: str, function: str, crons: Sequence[str], now: float
    ) -> None:
        kept = set(crons)
        for key in [k for k in self._schedules if k[:2] == (namespace, function)]:
            if key[2] not in kept:
                del self._schedules[key]
                self._fires.pop(key, None)
        for cron in kept:
            self._schedules.setdefault((namespace, function, cron), now)

    async def schedules(self) -> list[Schedule]:
        return [Schedule(*key, since) for key, since in sorted(self._schedules.items())]

    async def last_fired(self, namespace: str, function: str, cron: str) -> float | None:
        fires = self._fires.get((namespace, function, cron))
        return max(fires) if fires else None

    async def fire(self, schedule: Schedule, slot: float, job: NewJob, now: float) -> bool:
        key = (schedule.namespace, schedule.function, schedule.cron)
        since = self._schedules.get(key)
        if since is None or slot < since:
            return False
        fires = self._fires.setdefault(key, {})
        if any(fired >= slot for fired in fires):
            return False
        self.insert(job, now)
        fires[slot] = job.id
        for old in sorted(fires)[:-FIRE_HISTORY]:
            del fires[old]
        return True

    # ------------------------------------------------------------ trace contexts
    async def put_trace(self, job_id: str, traceparent: str, tracestate: str | None) -> None:
        self._traces[job_id] = (traceparent, tracestate)

    async def get_trace(self, job_id: str) -> tuple[str, str | None] | None:
        return self._traces.get(job_id)

    async def prune_traces(self) -> int:
        gone = [job_id for job_id in self._traces if job_id not in self.jobs]
        for job_id in gone:
            del self._traces[job_id]
        return len(gone)

    # ------------------------------------------------------------ data subjects
    def _subject(self, namespace: str, body_prefix: bytes) -> list[_Job]:
        return [
            j
            for j in self.jobs.values()
            if j.namespace == namespace and j.body.startswith(body_prefix)
        ]

    async def subject_jobs(self, namespace: str, body_prefix: bytes) -> list[SubjectJob]:
        found = sorted(self._subject(namespace, body_prefix), key=lambda j: j.created_at)
        return [SubjectJob(j.id, j.function, j.status, j.created_at, j.body) for j in found]

    async def erase_subject(self, namespace: str, body_prefix: bytes) -> int:
        return self._drop([j.id for j in self._subject(namespace, body_prefix)])

    async def purge_finished(self, namespace: str, before: float) -> int:
        return self._drop(
            [
                j.id
                for j in self.jobs.values()
                if j.namespace == namespace
                and j.status in ("succeeded", "failed", "dead")
                and j.finished_at is not None
                and j.finished_at < before
            ]
        )

    def _drop(self, ids: list[str]) -> int:
        for jid in ids:
            job = self.jobs.pop(jid)
            if job.idempotency_key is not None:
                self._keys.pop((job.namespace, job.idempotency_key), None)
        return len(ids)
