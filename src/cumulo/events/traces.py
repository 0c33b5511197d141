"""The W3C trace context of async jobs enqueued while tracing is on, so that each attempt's
span continues the enqueuing request's trace — after a restart, or on another gateway.

A table beside the queue's (on its connection and thread), written only when tracing is on:
a platform that does not trace never creates it. A row is written before its job, so the
dispatcher cannot claim a traced job before its trace context is there; rows whose job was
never inserted (an Idempotency-Key replay) or has been pruned go at the next prune.
"""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS event_job_traces (
    id TEXT PRIMARY KEY,
    traceparent TEXT NOT NULL,
    tracestate TEXT
)
"""


class JobTraces:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.execute(SCHEMA)

    def put(self, job_id: str, traceparent: str, tracestate: str | None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO event_job_traces (id, traceparent, tracestate)"
            " VALUES (?, ?, ?)",
            (job_id, traceparent, tracestate),
        )

    def get(self, job_id: str) -> tuple[str, str | None] | None:
        row = self._db.execute(
            "SELECT traceparent, tracestate FROM event_job_traces WHERE id = ?", (job_id,)
        ).fetchone()
        return None if row is None else (str(row[0]), row[1])

    def prune(self) -> int:
        return self._db.execute(
            "DELETE FROM event_job_traces WHERE id NOT IN (SELECT id FROM event_jobs)"
        ).rowcount
