"""`QuantumJobRepository` in memory: a fake for unit tests (no database, no thread), held
to the same conformance suite as the real backends."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from cumulo.errors import Conflict
from cumulo.store.quantum import (
    ACTIVE,
    CONFLICT_IDEMPOTENCY_KEY,
    CONFLICT_JOB_ID,
    TERMINAL,
    JobRow,
    QuantumJobRepository,
)


def _copy(value: Any) -> Any:
    # Through JSON, as a real backend stores events and errors: the caller's lists and
    # dicts are never the stored ones.
    return orjson.loads(orjson.dumps(value))


class MemoryQuantumJobRepository(QuantumJobRepository):
    """Jobs in a dict. Each method runs without awaiting, so it is atomic on its event
    loop, as the contract asks."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobRow] = {}

    def _out(self, row: JobRow, *, with_result: bool) -> JobRow:
        return dataclasses.replace(
            row,
            events=_copy(row.events),
            error=_copy(row.error),
            result=row.result if with_result else None,
        )

    async def insert(self, row: JobRow) -> None:
        if row.id in self._jobs:
            raise Conflict(f"quantum job {row.id} exists already", code=CONFLICT_JOB_ID)
        if row.idempotency_key is not None and any(
            j.namespace == row.namespace and j.idempotency_key == row.idempotency_key
            for j in self._jobs.values()
        ):
            raise Conflict(
                "another job of the namespace holds this Idempotency-Key",
                code=CONFLICT_IDEMPOTENCY_KEY,
            )
        self._jobs[row.id] = self._out(row, with_result=True)

    async def get(self, job_id: str, *, with_result: bool = True) -> JobRow | None:
        row = self._jobs.get(job_id)
        return None if row is None else self._out(row, with_result=with_result)

    async def by_idempotency_key(self, namespace: str, key: str) -> JobRow | None:
        for row in self._jobs.values():
            if row.namespace == namespace and row.idempotency_key == key:
                return self._out(row, with_result=False)
        return None

    async def list_jobs(self, namespace: str, state: str | None, limit: int) -> list[JobRow]:
        rows = [
            r
            for r in self._jobs.values()
            if r.namespace == namespace and (state is None or r.state == state)
        ]
        rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return [self._out(r, with_result=False) for r in rows[: max(limit, 0)]]

    async def active(self) -> list[JobRow]:
        rows = sorted(
            (r for r in self._jobs.values() if r.state in ACTIVE),
            key=lambda r: (r.created_at, r.id),
        )
        return [self._out(r, with_result=False) for r in rows]

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
        row = self._jobs.get(job_id)
        if row is None or row.state in TERMINAL or (owner is not None and row.owner != owner):
            return False
        self._jobs[job_id] = dataclasses.replace(
            row,
            state=state,
            events=_copy(events),
            started_at=row.started_at if started_at is None else started_at,
            finished_at=row.finished_at if finished_at is None else finished_at,
            attempts=row.attempts if attempts is None else attempts,
            error=row.error if error is None else _copy(error),
            result=row.result if result is None else result,
        )
        return True

    async def claim(self, job_id: str, owner: str, until: float, now: float) -> bool:
        row = self._jobs.get(job_id)
        if row is None or row.state not in ACTIVE:
            return False
        free = row.owner is None or row.owner == owner or (row.lease_until or 0) < now
        if free:
            self._jobs[job_id] = dataclasses.replace(row, owner=owner, lease_until=until)
        return free

    async def renew(self, owner: str, until: float) -> list[str]:
        cancels = []
        for job_id, row in sorted(self._jobs.items(), key=lambda kv: (kv[1].created_at, kv[0])):
            if row.owner == owner and row.state in ACTIVE:
                self._jobs[job_id] = dataclasses.replace(row, lease_until=until)
                if row.cancel_requested:
                    cancels.append(job_id)
        return cancels

    async def request_cancel(self, job_id: str) -> bool:
        row = self._jobs.get(job_id)
        if row is None or row.state not in ACTIVE:
            return False
        self._jobs[job_id] = dataclasses.replace(row, cancel_requested=True)
        return True

    async def disown(self, owner: str) -> None:
        for job_id, row in list(self._jobs.items()):
            if row.owner == owner:
                self._jobs[job_id] = dataclasses.replace(row, owner=None, lease_until=None)
