"""The durable queue, dispatcher and service on their own: a fake clock, a fake function, no
sleeps and no server. Every time is passed in, so leases and backoffs are exact."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from cumulo.errors import Conflict, FunctionTimeout, NotFound
from cumulo.events.dispatcher import RetryPolicy, outcome_of
from cumulo.events.queue import (
    DEAD,
    FAILED,
    QUEUED,
    SUCCEEDED,
    Claimed,
    NewJob,
    new_job_id,
)
from cumulo.events.service import EventsService
from cumulo.sdk.spec import FunctionConfig
from cumulo.store.sqlite_jobs import SQLiteJobQueueRepository

LEASE = 10.0


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def job(
    body: bytes = b"{}",
    *,
    ns: str = "default",
    fn: str = "f",
    attempts: int = 3,
    key: str | None = None,
) -> NewJob:
    return NewJob(new_job_id(), ns, fn, body, attempts, idempotency_key=key)


# The queue's own cases (claims, leases, fencing, idempotency, dead letters, pruning) run on
# every backend in tests/store/test_jobs_conformance.py.


# ---------------------------------------------------------------- retry decisions
def claimed(attempts: int, max_attempts: int = 3) -> Claimed:
    return Claimed("j", "default", "f", b"{}", attempts, max_attempts, attempts)


def test_backoff_is_exponential_capped_with_full_jitter() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=10.0)
    assert [policy.delay(n, lambda: 1.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.delay(3, lambda: 0.25) == 1.0
    assert policy.delay(1, lambda: 0.0) == 0.0
    assert policy.delay(10_000, lambda: 1.0) == 10.0  # no overflow


@pytest.mark.parametrize(
    ("status", "attempts", "expected"),
    [
        (200, 1, SUCCEEDED),
        (204, 3, SUCCEEDED),
        (400, 1, FAILED),
        (404, 1, FAILED),
        (413, 1, FAILED),
        (429, 1, QUEUED),
        (408, 2, QUEUED),
        (500, 1, QUEUED),
        (502, 2, QUEUED),
        (504, 3, DEAD),
        (429, 3, DEAD),
    ],
)
def test_which_statuses_retry(status: int, attempts: int, expected: str) -> None:
    body = orjson.dumps({"error": {"code": "c", "message": "m"}})
    out = outcome_of(claimed(attempts), status, body, 100.0, RetryPolicy(2.0, 60.0), lambda: 0.5)
    assert out.status == expected
    if expected == QUEUED:
        assert out.retry_at == 100.0 + 0.5 * 2.0 * 2 ** (attempts - 1)
    if expected != SUCCEEDED:
        assert out.error == {"code": "c", "message": "m"}


def test_a_non_json_error_body_becomes_a_short_error() -> None:
    out = outcome_of(claimed(3), 503, b"upstream down", 0.0, RetryPolicy(), lambda: 0.0)
    assert out.error == {"code": "http_503", "message": "upstream down"}


# ---------------------------------------------------------------- the service, driven by hand
class FakeFunction:
    """An InvokeFn: answers from a script of statuses, records every call."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.calls: list[tuple[str, str, bytes, str]] = []
        self.gate: asyncio.Event | None = None
        self.raise_exc: Exception | None = None

    async def __call__(self, ns: str, fn: str, body: bytes, inv: str) -> tuple[int, bytes]:
        self.calls.append((ns, fn, body, inv))
        if self.gate is not None:
            await self.gate.wait()
        if self.raise_exc is not None:
            raise self.raise_exc
        status = self.statuses.pop(0) if self.statuses else 200
        if status >= 400:
            return status, orjson.dumps({"error": {"code": f"e{status}", "message": "failed"}})
        return status, orjson.dumps({"echo": orjson.loads(body)})


def run_service(
    tmp_path: Path,
    fake: FakeFunction,
    scenario: Callable[[EventsService, FakeClock], Awaitable[Any]],
    *,
    max_attempts: int = 3,
    clock: FakeClock | None = None,
    rng: Callable[[], float] = lambda: 1.0,
) -> Any:
    clock = clock or FakeClock()

    async def config_of(ns: str, fn: str) -> FunctionConfig:
        return FunctionConfig(max_attempts=max_attempts)

    async def main() -> Any:
        service = EventsService(
            SQLiteJobQueueRepository(tmp_path / "cumulo.db"),
            fake,
            config_of=config_of,
            clock=clock,
            rng=rng,
            concurrency=4,
            lease_s=LEASE,
            retry_base_s=2.0,
            retry_cap_s=60.0,
        )
        await service.start(run=False)
        try:
            return await scenario(service, clock)
        finally:
            await service.stop(drain_s=0)

    return asyncio.run(main())


async def pump(service: EventsService) -> int:
    """One dispatch round, waiting for the started jobs to be recorded."""
    n = await service.dispatcher.run_once()
    await service.dispatcher.idle()
    return n


def test_success_records_the_result_and_passes_the_job_id(tmp_path: Path) -> None:
    fake = FakeFunction()

    async def scenario(service: EventsService, clock: FakeClock) -> None:
        enq = await service.enqueue("default", "f", b'{"a":1}')
        assert await pump(service) == 1
        view = await service.get(enq.id)
        assert view is not None
        assert (view.status, view.attempts, view.result_status) == (SUCCEEDED, 1, 200)
        assert orjson.loads(view.result or b"") == {"echo": {"a": 1}}
        assert fake.calls == [("default", "f", b'{"a":1}', enq.id)]

    run_service(tmp_path, fake, scenario)


def test_retries_back_off_then_succeed(tmp_path: Path) -> None:
    fake = FakeFunction([503, 500])

    async def scenario(service: EventsService, clock: FakeClock) -> None:
        enq = await service.enqueue("default", "f", b"{}")
        start = clock.now
        assert await pump(service) == 1
        view = await service.get(enq.id)
        assert view is not None
        assert (view.status, view.attempts) == (QUEUED, 1)
        assert view.next_attempt_at == start + 2.0  # rng 1.0 × base 2 × 2**0
        assert view.error == {"code": "e503", "message": "failed"}
        clock.now = start + 1.99
        assert await pump(service) == 0  # still backing off
        clock.now = start + 2.0
        assert await pump(service) == 1
        view = await service.get(enq.id)
        assert view is not None
        assert view.next_attempt_at == start + 2.0 + 4.0  # the second backoff doubles
        clock.now += 4.0
        assert await pump(service) == 1
        view = await service.get(enq.id)
        assert view is not None
        assert (view.status, view.attempts, view.error) == (SUCCEEDED, 3, None)
        assert len(fake.calls) == 3

    run_service(tmp_path, fake, scenario)


def test_exhausted_jobs_go_dead_and_replay_runs_them_again(tmp_path: Path) -> None:
    fake = FakeFunction([500, 500])

    async def scenario(service: EventsService, clock: FakeClock) -> None:
        enq = await service.enqueue("default", "f", b"{}")
        for _ in range(2):
            assert await pump(service) == 1
            clock.now += 60
        view = await service.get(enq.id)
        assert view is not None
        assert (view.status, view.attempts) == (DEAD, 2)
        assert [v.id for v in await service.dead_letters("default")] == [enq.id]
        assert await service.dead_letters("other") == []
        with pytest.raises(NotFound):
            await service.replay("other", enq.id)
        replayed = await service.replay("default", enq.id)
        assert (replayed.status, replayed.attempts, replayed.replays) == (QUEUED, 0, 1)
        with pytest.raises(Conflict):
            await service.replay("default", enq.id)
        assert await pump(service) == 1
        view = await service.get(enq.id)
        assert view is not None
        assert (view.status, view.attempts) == (SUCCEEDED, 1)
        assert await service.dead_letters("default") == []

    run_service(tmp_path, fake, scenario, max_attempts=2)


def test_a_permanent_error_is_not_retried(tmp_path: Path) -> None:
    fake = FakeFunction([400])

    async def scenario(service: EventsService, clock: FakeClock) -> None:
        enq = await service.enqueue("default", "f", b"{}")
        await pump(service)
        clock.now += 3600
        assert await pump(service) == 0
        view = await service.get(enq.id)
        assert view is not None
        assert (view.status, view.attempts, view.result_status) == (FAILED, 1, 400)
        assert len(fake.calls) == 1

    run_service(tmp_path, fake, scenario)


def test_an_invoke_that_raises_is_retried(tmp_path: Path) -> None:
    fake = FakeFunction()
    fake.raise_exc = FunctionTimeout("too slow")

    async def scenario(service: EventsService, clock: FakeClock) -> None:
        enq = await service.enqueue("default", "f", b"{}")
        await pump(service)
        view = await service.get(enq.id)
        assert view is not None
        assert view.status == QUEUED
        assert view.error is not None
        assert view.error["code"] == "function_timeout"
        fake.raise_exc = RuntimeError("bug")
        clock.now += 60
        await pump(service)
        view = await service.get(enq.id)
        assert view is not None
        assert view.error == {"code": "internal", "message": "invoke failed: RuntimeError"}

    run_service(tmp_path, fake, scenario)


def test_idempotent_enqueue_through_the_service(tmp_path: Path) -> None:
    async def scenario(service: EventsService, clock: FakeClock) -> None:
        first, again = await asyncio.gather(
            service.enqueue("default", "f", b'{"x":1}', "order-7"),
            service.enqueue("default", "f", b'{"x":1}', "order-7"),
        )
        assert first.id == again.id
        assert [first.created, again.created].count(True) == 1
        with pytest.raises(Conflict):
            await service.enqueue("default", "f", b'{"x":2}', "order-7")
        assert (await service.counts())[QUEUED] == 1

    run_service(tmp_path, FakeFunction(), scenario)


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    fake = FakeFunction()
    fake.gate = asyncio.Event()

    async def scenario(service: EventsService, clock: FakeClock) -> None:
        for i in range(10):
            await service.enqueue("default", "f", orjson.dumps(i))
        assert await service.dispatcher.run_once() == 4
        assert await service.dispatcher.run_once() == 0  # every slot is taken
        assert fake.gate is not None
        fake.gate.set()
        await service.dispatcher.idle()
        assert await pump(service) == 4
        assert await pump(service) == 2
        assert (await service.counts())[SUCCEEDED] == 10

    run_service(tmp_path, fake, scenario)


def test_stop_hands_running_jobs_back_and_the_next_start_runs_them(tmp_path: Path) -> None:
    stuck = FakeFunction()
    stuck.gate = asyncio.Event()  # never set: the function is still running at stop
    clock = FakeClock()

    async def first(service: EventsService, clock: FakeClock) -> str:
        enq = await service.enqueue("default", "f", b"{}")
        assert await service.dispatcher.run_once() == 1
        return enq.id

    job_id = run_service(tmp_path, stuck, first, clock=clock)
    fresh = FakeFunction()

    async def second(service: EventsService, clock: FakeClock) -> None:
        view = await service.get(job_id)
        assert view is not None
        assert (view.status, view.attempts) == (QUEUED, 0)
        assert await pump(service) == 1
        view = await service.get(job_id)
        assert view is not None
        assert (view.status, view.attempts) == (SUCCEEDED, 1)

    run_service(tmp_path, fresh, second, clock=clock)
    assert len(fresh.calls) == 1


def test_jobs_of_a_killed_gateway_run_again_at_the_next_start(tmp_path: Path) -> None:
    """The lease holder's process is gone (its pid no longer exists): no need to wait for
    the lease to run out."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    import socket

    dead_owner = f"{socket.gethostname()}:{int(gone.stdout)}:0000"

    async def killed() -> str:
        async with SQLiteJobQueueRepository(tmp_path / "cumulo.db") as queue:
            [enq] = await queue.enqueue([job()], now=0)
            await queue.claim(dead_owner, 1, now=FakeClock().now, lease_s=3600)
            return enq.id

    job_id = asyncio.run(killed())
    fake = FakeFunction()

    async def scenario(service: EventsService, clock: FakeClock) -> None:
        assert await pump(service) == 1
        view = await service.get(job_id)
        assert view is not None
        assert (view.status, view.attempts, view.deliveries) == (SUCCEEDED, 1, 2)

    run_service(tmp_path, fake, scenario)
