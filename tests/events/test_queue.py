"""The durable queue, dispatcher and service on their own: a fake clock, a fake function, no
sleeps and no server. Every time is passed in, so leases and backoffs are exact."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cumulo.errors import Conflict, FunctionTimeout, NotFound
from cumulo.events.dispatcher import RetryPolicy, outcome_of
from cumulo.events.queue import (
    DEAD,
    FAILED,
    MAX_INTERRUPTIONS,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Claimed,
    JobQueue,
    NewJob,
    NotDeadLetter,
    Outcome,
    new_job_id,
)
from cumulo.events.service import EventsService
from cumulo.sdk.spec import FunctionConfig

LEASE = 10.0


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    q = JobQueue(tmp_path / "cumulo.db")
    yield q
    q.close()


def job(
    body: bytes = b"{}",
    *,
    ns: str = "default",
    fn: str = "f",
    attempts: int = 3,
    key: str | None = None,
) -> NewJob:
    return NewJob(new_job_id(), ns, fn, body, attempts, idempotency_key=key)


def ok(c: Claimed, body: bytes = b'{"ok":true}') -> Outcome:
    return Outcome(c.id, c.deliveries, SUCCEEDED, 200, body, None)


# ---------------------------------------------------------------- the queue itself
def test_claim_takes_due_jobs_once_and_records_success(queue: JobQueue) -> None:
    ids = [r.id for r in queue.enqueue([job(b'{"n":1}'), job(b'{"n":2}')], now=100)]
    first = queue.claim("a", 1, now=100, lease_s=LEASE)
    second = queue.claim("b", 5, now=100, lease_s=LEASE)
    assert [c.id for c in first + second] == ids  # oldest first, each to one claimer
    assert queue.claim("c", 5, now=100, lease_s=LEASE) == []
    assert first[0].attempts == 1
    assert first[0].body == b'{"n":1}'
    assert queue.finish("a", [ok(first[0])], now=101) == [True]
    view = queue.get(ids[0])
    assert view is not None
    assert (view.status, view.attempts, view.result, view.finished_at) == (
        SUCCEEDED,
        1,
        b'{"ok":true}',
        101,
    )
    running = queue.get(ids[1])
    assert running is not None
    assert running.status == RUNNING


def test_a_job_is_invisible_until_due(queue: JobQueue) -> None:
    queue.enqueue([job()], now=100)
    assert queue.claim("a", 1, now=99.5, lease_s=LEASE) == []
    assert len(queue.claim("a", 1, now=100, lease_s=LEASE)) == 1


def test_an_expired_lease_makes_the_job_visible_again(queue: JobQueue) -> None:
    """A claimer that dies (SIGKILL) stops heartbeating; after the lease the job runs again
    (at least once), without using up an attempt, and the dead claimer's late result is
    ignored."""
    [enq] = queue.enqueue([job()], now=0)
    [c1] = queue.claim("dead", 1, now=0, lease_s=LEASE)
    assert queue.claim("b", 1, now=LEASE - 0.01, lease_s=LEASE) == []
    [c2] = queue.claim("b", 1, now=LEASE, lease_s=LEASE)
    assert c2.id == enq.id
    assert (c2.attempts, c2.deliveries) == (1, 2)
    assert queue.finish("dead", [ok(c1)], now=LEASE + 1) == [False]
    assert queue.finish("b", [ok(c2, b"2")], now=LEASE + 1) == [True]
    view = queue.get(enq.id)
    assert view is not None
    assert (view.status, view.result) == (SUCCEEDED, b"2")


def test_heartbeats_extend_the_lease(queue: JobQueue) -> None:
    queue.enqueue([job()], now=0)
    queue.claim("a", 1, now=0, lease_s=LEASE)
    assert queue.extend("a", until=LEASE + 5) == 1
    assert queue.claim("b", 1, now=LEASE + 1, lease_s=LEASE) == []
    assert len(queue.claim("b", 1, now=LEASE + 5, lease_s=LEASE)) == 1


def test_release_hands_jobs_back_without_counting_the_attempt(queue: JobQueue) -> None:
    [enq] = queue.enqueue([job()], now=0)
    [c] = queue.claim("a", 1, now=0, lease_s=LEASE)
    assert queue.release("a", [(c.id, c.deliveries)], now=1) == 1
    view = queue.get(enq.id)
    assert view is not None
    assert (view.status, view.attempts, view.next_attempt_at) == (QUEUED, 0, 1)
    [again] = queue.claim("b", 1, now=1, lease_s=LEASE)
    assert again.attempts == 1


def test_a_job_that_keeps_killing_its_gateway_goes_dead(queue: JobQueue) -> None:
    [enq] = queue.enqueue([job()], now=0)
    now = 0.0
    for _ in range(MAX_INTERRUPTIONS + 1):
        claimed = queue.claim("x", 1, now=now, lease_s=LEASE)
        now += LEASE
    assert claimed == []
    view = queue.get(enq.id)
    assert view is not None
    assert view.status == DEAD
    assert view.error is not None
    assert view.error["code"] == "interrupted"


def test_idempotency_key_same_request_same_id_other_request_conflicts(queue: JobQueue) -> None:
    [a] = queue.enqueue([job(b'{"x":1}', key="k1")], now=0)
    [b, c, d] = queue.enqueue(
        [job(b'{"x":1}', key="k1"), job(b'{"x":2}', key="k1"), job(b'{"x":1}', key="k1", fn="g")],
        now=1,
    )
    assert a.created
    assert (b.id, b.created, b.conflict) == (a.id, False, False)
    assert (c.id, c.conflict) == (a.id, True)
    assert d.conflict  # the key is the namespace's: another function is another request
    [other_ns] = queue.enqueue([job(b'{"x":1}', key="k1", ns="other")], now=2)
    assert other_ns.created
    assert other_ns.id != a.id
    assert queue.counts()[QUEUED] == 2


def test_dead_letters_replay_and_namespaces(queue: JobQueue) -> None:
    [a, b, c] = queue.enqueue([job(), job(), job(ns="other")], now=0)
    claimed = {x.id: x for x in queue.claim("w", 3, now=0, lease_s=LEASE)}
    error = {"code": "boom", "message": "no"}
    queue.finish(
        "w",
        [
            Outcome(a.id, claimed[a.id].deliveries, DEAD, 500, None, error),
            Outcome(b.id, claimed[b.id].deliveries, FAILED, 400, None, error),
            Outcome(c.id, claimed[c.id].deliveries, DEAD, 500, None, error),
        ],
        now=1,
    )
    letters = queue.dead_letters("default", limit=10)
    assert [(v.id, v.status) for v in letters] == [(a.id, DEAD), (b.id, FAILED)]
    assert [v.id for v in queue.dead_letters("default", limit=1, after=a.id)] == [b.id]
    assert queue.replay("default", c.id, now=2) is None  # another namespace's: unknown
    replayed = queue.replay("default", a.id, now=2)
    assert replayed is not None
    assert (replayed.status, replayed.attempts, replayed.replays, replayed.error) == (
        QUEUED,
        0,
        1,
        None,
    )
    with pytest.raises(NotDeadLetter):
        queue.replay("default", a.id, now=3)
    assert [x.id for x in queue.claim("w", 5, now=2, lease_s=LEASE)] == [a.id]


def test_prune_forgets_old_finished_jobs_but_keeps_dead_ones(queue: JobQueue) -> None:
    [a, b] = queue.enqueue([job(key="k"), job()], now=0)
    claimed = {x.id: x for x in queue.claim("w", 2, now=0, lease_s=LEASE)}
    queue.finish(
        "w",
        [ok(claimed[a.id]), Outcome(b.id, claimed[b.id].deliveries, DEAD, 500, None, None)],
        now=1,
    )
    assert queue.prune(before=1) == 0
    assert queue.prune(before=2) == 1
    assert queue.get(a.id) is None
    assert queue.get(b.id) is not None
    [again] = queue.enqueue([job(key="k")], now=3)  # the key expired with its job
    assert again.created


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
            tmp_path / "cumulo.db",
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
    queue = JobQueue(tmp_path / "cumulo.db")
    [enq] = queue.enqueue([job()], now=0)
    queue.claim(dead_owner, 1, now=FakeClock().now, lease_s=3600)
    queue.close()
    fake = FakeFunction()

    async def scenario(service: EventsService, clock: FakeClock) -> None:
        assert await pump(service) == 1
        view = await service.get(enq.id)
        assert view is not None
        assert (view.status, view.attempts, view.deliveries) == (SUCCEEDED, 1, 2)

    run_service(tmp_path, fake, scenario)
