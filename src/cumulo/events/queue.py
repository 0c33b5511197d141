"""The durable job queue, as the events service sees it: the records, states and rules of
`cumulo.store.jobs` (re-exported here), kept behind a `JobQueueRepository`.

Where the jobs live is the repository's business: the platform's SQLite file
(`cumulo.store.sqlite_jobs`, the default, sealing payloads at rest), PostgreSQL shared by
several gateways (`cumulo.store.postgres_jobs`), or memory in unit tests. The contract
(at-least-once delivery, leases and heartbeats, the delivery count as a fencing token,
schedule slots fired exactly once, Idempotency-Keys unique per namespace) is written in
`cumulo.store.jobs`.
"""

from __future__ import annotations

from cumulo.store.jobs import (
    DEAD,
    DEAD_LETTER_STATUSES,
    FAILED,
    MAX_INTERRUPTIONS,
    QUEUED,
    RUNNING,
    SOURCE_ASYNC,
    SOURCE_SCHEDULE,
    SOURCE_TOPIC,
    STATUSES,
    SUCCEEDED,
    Claimed,
    Enqueued,
    JobQueueRepository,
    JobView,
    NewJob,
    NotDeadLetter,
    Outcome,
    Schedule,
    new_job_id,
    request_hash,
)

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
    "new_job_id",
    "request_hash",
]
