"""One behaviour for every `JobQueueRepository` (and its `TopicRepository`): in memory,
SQLite and PostgreSQL.

Each test runs against each backend (`-k memory`, `-k sqlite`, `-k postgresql`), on a fake
clock (PostgreSQL with `database_clock=False`), so leases and backoffs are exact. A backend
is opened with `backend.open()`; every opening reaches the same database, as a second
gateway would. PostgreSQL runs on a real cluster (tests/pg.py), never a mock; the
PostgreSQL-only cases at the end race two pools on one database, on the database clock.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import orjson
import pytest

from cumulo.security.crypto import CryptoError, Encryptor, MasterKey
from cumulo.store.jobs import (
    DEAD,
    FAILED,
    MAX_INTERRUPTIONS,
    QUEUED,
    RUNNING,
    SOURCE_TOPIC,
    STATUSES,
    SUCCEEDED,
    Claimed,
    JobQueueRepository,
    NewJob,
    NotDeadLetter,
    Outcome,
    Schedule,
    new_job_id,
    request_hash,
)
from cumulo.store.memory_jobs import MemoryJobQueueRepository
from cumulo.store.postgres import PostgresStore
from cumulo.store.postgres_jobs import PostgresJobQueueRepository
from cumulo.store.sealing import SEALED_MAGIC, SUBJECT_MAGIC
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.sqlite_jobs import SQLiteJobQueueRepository
from cumulo.store.topics import DEFAULT_MAX_ATTEMPTS, Published, Subscription
from tests.store.backends import BACKENDS, Backend, make_backend, run

LEASE = 10.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[JobQueueRepository]:
    return make_backend(
        request,
        tmp_path,
        memory=MemoryJobQueueRepository,
        sqlite=lambda tmp: SQLiteJobQueueRepository(tmp / "cumulo.db"),
        postgres=lambda store: PostgresJobQueueRepository(store, database_clock=False),
    )


def job(
    body: bytes = b"{}",
    *,
    ns: str = "default",
    fn: str = "f",
    attempts: int = 3,
    key: str | None = None,
    job_id: str | None = None,
) -> NewJob:
    return NewJob(job_id or new_job_id(), ns, fn, body, attempts, idempotency_key=key)


def ok(c: Claimed, body: bytes = b'{"ok":true}') -> Outcome:
    return Outcome(c.id, c.deliveries, SUCCEEDED, 200, body, None)


# ---------------------------------------------------------------- enqueue and claim
def test_claim_takes_due_jobs_once_and_records_success(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        ids = [r.id for r in await q.enqueue([job(b'{"n":1}'), job(b'{"n":2}')], now=100)]
        first = await q.claim("a", 1, now=100, lease_s=LEASE)
        second = await q.claim("b", 5, now=100, lease_s=LEASE)
        assert [c.id for c in first + second] == ids  # oldest first, each to one claimer
        assert await q.claim("c", 5, now=100, lease_s=LEASE) == []
        assert (first[0].attempts, first[0].deliveries, first[0].max_attempts) == (1, 1, 3)
        assert first[0].body == b'{"n":1}'
        assert await q.finish("a", [ok(first[0])], now=101) == [True]
        view = await q.get(ids[0])
        assert view is not None
        assert (view.status, view.attempts, view.result, view.finished_at) == (
            SUCCEEDED,
            1,
            b'{"ok":true}',
            101,
        )
        assert (view.result_status, view.error, view.next_attempt_at) == (200, None, None)
        assert (view.created_at, view.updated_at, view.source) == (100, 101, "async")
        running = await q.get(ids[1])
        assert running is not None
        assert running.status == RUNNING
        assert await q.get("nope") is None

    run(backend, body)


def test_claim_takes_the_earliest_due_first_and_lists_by_id(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        await q.enqueue([job(job_id="c")], now=5)
        await q.enqueue([job(job_id="b"), job(job_id="a")], now=7)
        await q.enqueue([job(job_id="d")], now=6)
        assert await q.claim("w", 0, now=10, lease_s=LEASE) == []
        assert [c.id for c in await q.claim("w", 2, now=10, lease_s=LEASE)] == ["c", "d"]
        assert [c.id for c in await q.claim("w", 1, now=10, lease_s=LEASE)] == ["a"]

    run(backend, body)


def test_a_job_is_invisible_until_due(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        await q.enqueue([job()], now=100)
        assert await q.claim("a", 1, now=99.5, lease_s=LEASE) == []
        assert len(await q.claim("a", 1, now=100, lease_s=LEASE)) == 1

    run(backend, body)


def test_an_expired_lease_makes_the_job_visible_again(backend: Backend) -> None:
    """A claimer that dies stops heartbeating; after the lease the job runs again (at least
    once) without using up an attempt, and the dead claimer's late result is refused."""

    async def body(q: JobQueueRepository) -> None:
        [enq] = await q.enqueue([job()], now=0)
        [c1] = await q.claim("dead", 1, now=0, lease_s=LEASE)
        assert await q.claim("b", 1, now=LEASE - 0.01, lease_s=LEASE) == []
        [c2] = await q.claim("b", 1, now=LEASE, lease_s=LEASE)
        assert c2.id == enq.id
        assert (c2.attempts, c2.deliveries) == (1, 2)
        assert await q.finish("dead", [ok(c1)], now=LEASE + 1) == [False]
        assert await q.finish("b", [ok(c2, b"2")], now=LEASE + 1) == [True]
        view = await q.get(enq.id)
        assert view is not None
        assert (view.status, view.result) == (SUCCEEDED, b"2")

    run(backend, body)


def test_a_stale_delivery_token_is_refused_even_from_the_same_owner(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        [enq] = await q.enqueue([job()], now=0)
        [c1] = await q.claim("w", 1, now=0, lease_s=LEASE)
        [c2] = await q.claim("w", 1, now=LEASE, lease_s=LEASE)  # its own lease ran out
        assert await q.finish("w", [ok(c1)], now=LEASE + 1) == [False]
        assert await q.release("w", [(c1.id, c1.deliveries)], now=LEASE + 1) == 0
        assert await q.finish("other", [ok(c2)], now=LEASE + 1) == [False]
        view = await q.get(enq.id)
        assert view is not None
        assert view.status == RUNNING
        assert await q.finish("w", [ok(c2), ok(c2)], now=LEASE + 2) == [True, False]

    run(backend, body)


def test_heartbeats_extend_the_lease(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        await q.enqueue([job(), job()], now=0)
        await q.claim("a", 2, now=0, lease_s=LEASE)
        assert await q.extend("a", now=5, lease_s=LEASE) == 2
        assert await q.extend("nobody", now=5, lease_s=LEASE) == 0
        assert await q.claim("b", 1, now=LEASE + 1, lease_s=LEASE) == []
        assert len(await q.claim("b", 2, now=LEASE + 5, lease_s=LEASE)) == 2

    run(backend, body)


def test_release_hands_jobs_back_without_counting_the_attempt(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        [enq] = await q.enqueue([job()], now=0)
        [c] = await q.claim("a", 1, now=0, lease_s=LEASE)
        assert await q.release("b", [(c.id, c.deliveries)], now=1) == 0  # not b's
        assert await q.release("a", [(c.id, c.deliveries)], now=1) == 1
        view = await q.get(enq.id)
        assert view is not None
        assert (view.status, view.attempts, view.next_attempt_at) == (QUEUED, 0, 1)
        [again] = await q.claim("b", 1, now=1, lease_s=LEASE)
        assert (again.attempts, again.deliveries) == (1, 2)

    run(backend, body)


def test_expire_leases_of_dead_owners_and_running_owners(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        await q.enqueue([job(), job(), job()], now=0)
        await q.claim("gone", 2, now=0, lease_s=3600)
        await q.claim("alive", 1, now=0, lease_s=3600)
        assert sorted(await q.running_owners()) == ["alive", "gone"]
        assert await q.claim("x", 5, now=1, lease_s=LEASE) == []
        assert await q.expire_leases(["gone", "unknown"], now=1) == 2
        assert await q.expire_leases([], now=1) == 0
        taken = await q.claim("x", 5, now=1, lease_s=LEASE)
        assert [(c.attempts, c.deliveries) for c in taken] == [(1, 2), (1, 2)]
        assert sorted(await q.running_owners()) == ["alive", "x"]

    run(backend, body)


def test_a_job_that_keeps_killing_its_gateway_goes_dead(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        [enq] = await q.enqueue([job()], now=0)
        now = 0.0
        claimed: list[Claimed] = []
        for _ in range(MAX_INTERRUPTIONS + 1):
            claimed = await q.claim("x", 1, now=now, lease_s=LEASE)
            now += LEASE
        assert claimed == []
        view = await q.get(enq.id)
        assert view is not None
        assert (view.status, view.finished_at) == (DEAD, (MAX_INTERRUPTIONS) * LEASE)
        assert view.error is not None
        assert view.error["code"] == "interrupted"
        assert [v.id for v in await q.dead_letters("default", limit=10)] == [enq.id]

    run(backend, body)


# ---------------------------------------------------------------- outcomes
def test_a_retry_is_due_at_its_retry_time_and_keeps_its_error(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        [enq] = await q.enqueue([job()], now=0)
        [c] = await q.claim("w", 1, now=0, lease_s=LEASE)
        error = {"code": "e503", "message": "failed"}
        retry = Outcome(c.id, c.deliveries, QUEUED, 503, None, error, retry_at=2.5)
        assert await q.finish("w", [retry], now=1) == [True]
        view = await q.get(enq.id)
        assert view is not None
        assert (view.status, view.next_attempt_at, view.finished_at) == (QUEUED, 2.5, None)
        assert (view.result_status, view.error, view.attempts) == (503, error, 1)
        assert await q.claim("w", 1, now=2.4, lease_s=LEASE) == []
        [again] = await q.claim("w", 1, now=2.5, lease_s=LEASE)
        assert (again.attempts, again.deliveries) == (2, 2)

    run(backend, body)


def test_finish_records_a_batch_in_order(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        [a, b] = await q.enqueue([job(), job()], now=0)
        claims = {c.id: c for c in await q.claim("w", 2, now=0, lease_s=LEASE)}
        stale = Outcome("missing", 1, SUCCEEDED, 200, b"", None)
        results = await q.finish(
            "w",
            [
                ok(claims[a.id]),
                stale,
                Outcome(b.id, claims[b.id].deliveries, FAILED, 400, None, {"code": "bad"}),
            ],
            now=3,
        )
        assert results == [True, False, True]
        counts = await q.counts()
        assert set(counts) == set(STATUSES)
        assert (counts[SUCCEEDED], counts[FAILED], counts[QUEUED], counts[RUNNING]) == (1, 1, 0, 0)

    run(backend, body)


# ---------------------------------------------------------------- idempotency keys
def test_idempotency_key_same_request_same_id_other_request_conflicts(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        [a] = await q.enqueue([job(b'{"x":1}', key="k1")], now=0)
        [b, c, d] = await q.enqueue(
            [
                job(b'{"x":1}', key="k1"),
                job(b'{"x":2}', key="k1"),
                job(b'{"x":1}', key="k1", fn="g"),
            ],
            now=1,
        )
        assert a.created
        assert (b.id, b.created, b.conflict) == (a.id, False, False)
        assert (c.id, c.created, c.conflict) == (a.id, False, True)
        assert d.conflict  # the key is the namespace's: another function is another request
        [other_ns] = await q.enqueue([job(b'{"x":1}', key="k1", ns="other")], now=2)
        assert other_ns.created
        assert other_ns.id != a.id
        assert (await q.counts())[QUEUED] == 2

    run(backend, body)


def test_one_key_in_one_batch_makes_one_job(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        first, again = await q.enqueue([job(key="k"), job(key="k")], now=0)
        assert (first.created, again.created, again.id, again.conflict) == (
            True,
            False,
            first.id,
            False,
        )

    run(backend, body)


# ---------------------------------------------------------------- dead letters
def test_dead_letters_replay_and_namespaces(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        [a, b, c] = await q.enqueue([job(), job(), job(ns="other")], now=0)
        claimed = {x.id: x for x in await q.claim("w", 3, now=0, lease_s=LEASE)}
        error = {"code": "boom", "message": "no"}
        await q.finish(
            "w",
            [
                Outcome(a.id, claimed[a.id].deliveries, DEAD, 500, None, error),
                Outcome(b.id, claimed[b.id].deliveries, FAILED, 400, None, error),
                Outcome(c.id, claimed[c.id].deliveries, DEAD, 500, None, error),
            ],
            now=1,
        )
        letters = await q.dead_letters("default", limit=10)
        assert [(v.id, v.status, v.error) for v in letters] == [
            (a.id, DEAD, error),
            (b.id, FAILED, error),
        ]
        assert [v.id for v in await q.dead_letters("default", limit=1, after=a.id)] == [b.id]
        assert [v.id for v in await q.dead_letters("default", limit=1)] == [a.id]
        assert await q.dead_letters("default", limit=10, function="g") == []
        assert [v.id for v in await q.dead_letters("other", limit=10, function="f")] == [c.id]
        assert await q.replay("default", c.id, now=2) is None  # another namespace's: unknown
        assert await q.replay("default", "nope", now=2) is None
        replayed = await q.replay("default", a.id, now=2)
        assert replayed is not None
        assert (replayed.status, replayed.attempts, replayed.replays, replayed.error) == (
            QUEUED,
            0,
            1,
            None,
        )
        assert (replayed.result_status, replayed.finished_at, replayed.next_attempt_at) == (
            None,
            None,
            2,
        )
        with pytest.raises(NotDeadLetter) as info:
            await q.replay("default", a.id, now=3)
        assert info.value.status == QUEUED
        assert [x.id for x in await q.claim("w", 5, now=2, lease_s=LEASE)] == [a.id]

    run(backend, body)


def test_prune_forgets_old_finished_jobs_but_keeps_dead_ones(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        [a, b, c] = await q.enqueue([job(key="k"), job(), job()], now=0)
        claimed = {x.id: x for x in await q.claim("w", 2, now=0, lease_s=LEASE)}
        await q.finish(
            "w",
            [ok(claimed[a.id]), Outcome(b.id, claimed[b.id].deliveries, DEAD, 500, None, None)],
            now=1,
        )
        assert await q.prune(before=1) == 0
        assert await q.prune(before=2) == 1
        assert await q.get(a.id) is None
        assert await q.get(b.id) is not None
        assert await q.get(c.id) is not None  # still queued
        [again] = await q.enqueue([job(key="k")], now=3)  # the key expired with its job
        assert again.created

    run(backend, body)


def test_prune_stops_at_its_limit(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        await q.enqueue([job() for _ in range(5)], now=0)
        claims = await q.claim("w", 5, now=0, lease_s=LEASE)
        await q.finish("w", [ok(c) for c in claims], now=1)
        assert await q.prune(before=2, limit=3) == 3
        assert await q.prune(before=2, limit=3) == 2
        assert (await q.counts())[SUCCEEDED] == 0

    run(backend, body)


# ---------------------------------------------------------------- schedules
def test_set_schedules_keeps_since_and_forgets_dropped_ones(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        await q.set_schedules("ns", "f", ["@hourly", "*/5 * * * *"], now=10)
        await q.set_schedules("a", "g", ["@daily"], now=11)
        assert await q.schedules() == [
            Schedule("a", "g", "@daily", 11),
            Schedule("ns", "f", "*/5 * * * *", 10),
            Schedule("ns", "f", "@hourly", 10),
        ]
        hourly = Schedule("ns", "f", "@hourly", 10)
        assert await q.fire(hourly, 3600, job(ns="ns"), now=3600)
        await q.set_schedules("ns", "f", ["@hourly", "@daily"], now=20)
        assert await q.schedules() == [
            Schedule("a", "g", "@daily", 11),
            Schedule("ns", "f", "@daily", 20),
            Schedule("ns", "f", "@hourly", 10),
        ]
        assert await q.last_fired("ns", "f", "@hourly") == 3600
        await q.set_schedules("ns", "f", [], now=30)
        assert await q.schedules() == [Schedule("a", "g", "@daily", 11)]
        assert await q.last_fired("ns", "f", "@hourly") is None  # forgotten with it
        await q.set_schedules("ns", "f", ["@hourly"], now=40)
        assert await q.schedules() == [
            Schedule("a", "g", "@daily", 11),
            Schedule("ns", "f", "@hourly", 40),
        ]

    run(backend, body)


def test_fire_is_once_per_slot_never_older_and_never_before_since(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        await q.set_schedules("ns", "f", ["@hourly"], now=100)
        [sched] = await q.schedules()
        assert await q.last_fired("ns", "f", "@hourly") is None
        assert not await q.fire(sched, 50, job(ns="ns"), now=200)  # before the schedule
        first = job(ns="ns")
        assert await q.fire(sched, 3600, first, now=3600)
        assert not await q.fire(sched, 3600, job(ns="ns"), now=3601)  # the same slot again
        assert not await q.fire(sched, 1800, job(ns="ns"), now=3602)  # an older one
        assert await q.last_fired("ns", "f", "@hourly") == 3600
        view = await q.get(first.id)
        assert view is not None
        assert (view.status, view.created_at) == (QUEUED, 3600)
        assert await q.fire(sched, 7200, job(ns="ns"), now=7200)
        assert await q.last_fired("ns", "f", "@hourly") == 7200
        assert (await q.counts())[QUEUED] == 2
        gone = Schedule("ns", "f", "@daily", 0)  # never stored
        assert not await q.fire(gone, 86400, job(ns="ns"), now=86400)
        assert (await q.counts())[QUEUED] == 2

    run(backend, body)


def test_a_second_opening_sees_fires_and_jobs(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as q:
            await q.set_schedules("ns", "f", ["@hourly"], now=0)
            [sched] = await q.schedules()
            assert await q.fire(sched, 3600, job(ns="ns"), now=3600)
        async with backend.open() as again:
            assert await again.schedules() == [sched]
            assert await again.last_fired("ns", "f", "@hourly") == 3600
            assert not await again.fire(sched, 3600, job(ns="ns"), now=3601)
            assert len(await again.claim("w", 5, now=3601, lease_s=LEASE)) == 1

    asyncio.run(main())


def test_fire_keeps_a_short_history(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        await q.set_schedules("ns", "f", ["* * * * *"], now=0)
        [sched] = await q.schedules()
        for i in range(1, 106):
            assert await q.fire(sched, 60.0 * i, job(ns="ns"), now=60.0 * i)
        assert await q.last_fired("ns", "f", "* * * * *") == 60.0 * 105
        assert not await q.fire(sched, 60.0, job(ns="ns"), now=7000)  # pruned, still older

    run(backend, body)


# ---------------------------------------------------------------- trace contexts
def test_trace_contexts_are_kept_until_their_job_goes(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        kept, orphan = job(), job()
        assert await q.get_trace(kept.id) is None
        await q.put_trace(kept.id, "00-aa-bb-01", None)
        await q.put_trace(kept.id, "00-cc-dd-01", "k=v")  # replaced
        await q.put_trace(orphan.id, "00-ee-ff-01", None)
        await q.enqueue([kept], now=0)
        assert await q.get_trace(kept.id) == ("00-cc-dd-01", "k=v")
        assert await q.prune_traces() == 1
        assert await q.get_trace(orphan.id) is None
        assert await q.get_trace(kept.id) == ("00-cc-dd-01", "k=v")

    run(backend, body)


# ---------------------------------------------------------------- topics
EVENT = {"specversion": "1.0", "id": "e1", "source": "/src", "type": "t", "topic": "orders"}


def test_subscriptions_are_set_listed_and_kept(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        topics = q.topics()
        await topics.set_subscriptions("shop", "b", ["orders", "audit"], now=1)
        await topics.set_subscriptions("shop", "a", ["orders"], now=1)
        await topics.set_subscriptions("other", "a", ["orders"], now=1)
        assert await topics.subscriptions("shop") == [
            Subscription("shop", "audit", "b"),
            Subscription("shop", "orders", "a"),
            Subscription("shop", "orders", "b"),
        ]
        assert len(await topics.subscriptions()) == 4
        assert await topics.subscribers("shop", "orders") == ["a", "b"]
        await topics.set_subscriptions("shop", "b", ["audit"], now=2)
        assert await topics.subscribers("shop", "orders") == ["a"]
        await topics.set_subscriptions("shop", "b", [], now=3)
        assert await topics.subscriptions("shop") == [Subscription("shop", "orders", "a")]
        assert await topics.subscribers("nowhere", "orders") == []

    run(backend, body)


def test_publish_fans_out_once_per_subscriber_and_dedupes(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        topics = q.topics()
        await topics.set_subscriptions("shop", "a", ["orders"], now=0)
        await topics.set_subscriptions("shop", "b", ["orders"], now=0)
        await topics.set_subscriptions("other", "c", ["orders"], now=0)
        second = {**EVENT, "id": "e2"}
        results = await topics.publish("shop", "orders", [EVENT, second, EVENT], {"a": 7}, now=5)
        assert results == [Published("e1", 2), Published("e2", 2), Published("e1", 0, True)]
        again = await topics.publish("shop", "orders", [EVENT], {}, now=6)
        assert again == [Published("e1", 0, duplicate=True)]
        assert await topics.publish("shop", "nobody", [{**EVENT, "id": "e3"}], {}, now=6) == [
            Published("e3", 0)
        ]
        claims = await q.claim("w", 10, now=6, lease_s=LEASE)
        got = sorted((c.namespace, c.function, c.max_attempts, c.body) for c in claims)
        bodies = sorted([orjson.dumps(EVENT), orjson.dumps(second)])
        assert got == sorted(
            [("shop", "a", 7, b) for b in bodies]
            + [("shop", "b", DEFAULT_MAX_ATTEMPTS, b) for b in bodies]
        )
        view = await q.get(claims[0].id)
        assert view is not None
        assert (view.source, view.created_at) == (SOURCE_TOPIC, 5)

    run(backend, body)


def test_published_ids_are_pruned_up_to_the_limit(backend: Backend) -> None:
    async def body(q: JobQueueRepository) -> None:
        topics = q.topics()
        await topics.set_subscriptions("shop", "a", ["orders"], now=0)
        events = [{**EVENT, "id": f"e{i}"} for i in range(3)]
        await topics.publish("shop", "orders", events, {}, now=1)
        await topics.publish("shop", "orders", [{**EVENT, "id": "late"}], {}, now=5)
        assert await topics.prune(before=1) == 0
        assert await topics.prune(before=2, limit=2) == 2
        assert await topics.prune(before=2) == 1
        [fresh, late] = await topics.publish(
            "shop", "orders", [events[0], {**EVENT, "id": "late"}], {}, now=6
        )
        assert (fresh.deliveries, late.duplicate) == (1, True)

    run(backend, body)


def test_a_second_opening_sees_subscriptions(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as q:
            await q.topics().set_subscriptions("shop", "a", ["orders"], now=0)
        async with backend.open() as again:
            assert await again.topics().subscribers("shop", "orders") == ["a"]
            [done] = await again.topics().publish("shop", "orders", [EVENT], {}, now=1)
            assert done.deliveries == 1

    asyncio.run(main())


# ---------------------------------------------------------------- PostgreSQL: two gateways
def _two_pools(dsn: str) -> tuple[PostgresStore, PostgresStore]:
    return PostgresStore(dsn, max_size=4), PostgresStore(dsn, max_size=4)


def test_postgres_two_pools_claiming_concurrently_never_share_a_job(pg_dsn: str) -> None:
    async def main() -> None:
        a_store, b_store = _two_pools(pg_dsn)
        async with a_store, b_store:
            a, b = a_store.jobs(None), b_store.jobs(None)
            ids = [e.id for e in await a.enqueue([job() for _ in range(200)], now=0)]

            async def drain(repo: JobQueueRepository, owner: str) -> list[str]:
                got: list[str] = []
                while True:
                    batch = await repo.claim(owner, 7, now=0, lease_s=60)
                    if not batch:
                        return got
                    got += [c.id for c in batch]
                    assert await repo.finish(owner, [ok(c) for c in batch], now=0) == [True] * len(
                        batch
                    )

            results = await asyncio.gather(
                *(
                    drain(repo, f"{name}{i}")
                    for i in range(4)
                    for name, repo in (("a", a), ("b", b))
                )
            )
            taken = [job_id for got in results for job_id in got]
            assert sorted(taken) == sorted(ids)  # every job once: none lost, none twice
            assert len(set(taken)) == len(taken)
            assert sum(1 for got in results if got) >= 2  # the pools really did share the work
            assert (await b.counts())[SUCCEEDED] == 200

    asyncio.run(main())


def test_postgres_a_claimer_that_stops_heartbeating_loses_the_job(pg_dsn: str) -> None:
    """On the database clock: gateway A claims with a short lease and goes silent; B cannot
    take the job while A's lease holds, then can; A's late finish is refused."""

    async def main() -> None:
        a_store, b_store = _two_pools(pg_dsn)
        async with a_store, b_store:
            a, b = a_store.jobs(None), b_store.jobs(None)
            assert a.database_clock
            [enq] = await a.enqueue([job()], now=0)  # `now` is ignored: the database's clock
            [mine] = await a.claim("a", 1, now=0, lease_s=0.6)
            assert await b.claim("b", 1, now=0, lease_s=30) == []
            assert await a.extend("a", now=0, lease_s=0.6) == 1  # one heartbeat, then silence
            await asyncio.sleep(0.3)
            assert await b.claim("b", 1, now=0, lease_s=30) == []
            await asyncio.sleep(0.6)
            [theirs] = await b.claim("b", 1, now=0, lease_s=30)
            assert (theirs.id, theirs.attempts, theirs.deliveries) == (enq.id, 1, 2)
            assert await a.finish("a", [ok(mine)], now=0) == [False]
            assert await b.finish("b", [ok(theirs, b"b")], now=0) == [True]
            view = await a.get(enq.id)
            assert view is not None
            assert (view.status, view.result) == (SUCCEEDED, b"b")

    asyncio.run(main())


def test_postgres_fire_from_two_pools_for_one_slot_makes_one_job(pg_dsn: str) -> None:
    async def main() -> None:
        a_store, b_store = _two_pools(pg_dsn)
        async with a_store, b_store:
            a = PostgresJobQueueRepository(a_store, database_clock=False)
            b = PostgresJobQueueRepository(b_store, database_clock=False)
            await a.set_schedules("ns", "f", ["@hourly"], now=0)
            [sched] = await b.schedules()
            for slot in (3600.0, 7200.0, 10800.0):
                fired = await asyncio.gather(
                    *(
                        repo.fire(sched, slot, job(ns="ns"), now=slot)
                        for _ in range(4)
                        for repo in (a, b)
                    )
                )
                assert fired.count(True) == 1
            assert (await a.counts())[QUEUED] == 3
            assert await b.last_fired("ns", "f", "@hourly") == 10800.0

    asyncio.run(main())


def test_postgres_one_idempotency_key_from_two_pools_makes_one_job(pg_dsn: str) -> None:
    async def main() -> None:
        a_store, b_store = _two_pools(pg_dsn)
        async with a_store, b_store:
            a, b = a_store.jobs(None), b_store.jobs(None)
            results = await asyncio.gather(
                *(repo.enqueue([job(key="order-7")], now=0) for _ in range(5) for repo in (a, b))
            )
            outcomes = [r for [r] in results]
            assert [o.created for o in outcomes].count(True) == 1
            assert len({o.id for o in outcomes}) == 1
            assert not any(o.conflict for o in outcomes)
            assert (await a.counts())[QUEUED] == 1

    asyncio.run(main())


def test_postgres_one_event_published_from_two_pools_is_delivered_once(pg_dsn: str) -> None:
    async def main() -> None:
        a_store, b_store = _two_pools(pg_dsn)
        async with a_store, b_store:
            a, b = a_store.jobs(None).topics(), b_store.jobs(None).topics()
            await a.set_subscriptions("shop", "f", ["orders"], now=0)
            await a.set_subscriptions("shop", "g", ["orders"], now=0)
            results = await asyncio.gather(
                *(t.publish("shop", "orders", [EVENT], {}, now=0) for _ in range(4) for t in (a, b))
            )
            firsts = [r for [r] in results]
            assert [p.duplicate for p in firsts].count(False) == 1
            assert sum(p.deliveries for p in firsts) == 2
            assert (await b_store.jobs(None).counts())[QUEUED] == 2

    asyncio.run(main())


def test_postgres_batches_racing_for_keys_in_opposite_orders_do_not_deadlock(
    pg_dsn: str,
) -> None:
    async def main() -> None:
        a_store, b_store = _two_pools(pg_dsn)
        async with a_store, b_store:
            a, b = a_store.jobs(None), b_store.jobs(None)
            for round_ in range(15):
                keys = [f"r{round_}-k{i}" for i in range(6)]
                forward, backward = await asyncio.gather(
                    a.enqueue([job(key=k) for k in keys], now=0),
                    b.enqueue([job(key=k) for k in reversed(keys)], now=0),
                )
                assert [e.id for e in forward] == [e.id for e in reversed(backward)]
                assert sum(e.created for e in forward + backward) == len(keys)
            ta, tb = a.topics(), b.topics()
            await ta.set_subscriptions("shop", "f", ["orders"], now=0)
            for round_ in range(15):
                events = [{**EVENT, "id": f"r{round_}-e{i}"} for i in range(6)]
                one, other = await asyncio.gather(
                    ta.publish("shop", "orders", events, {}, now=0),
                    tb.publish("shop", "orders", events[::-1], {}, now=0),
                )
                assert sum(p.deliveries for p in one + other) == len(events)
            assert (await a.counts())[QUEUED] == 15 * 6 * 2

    asyncio.run(main())


def test_postgres_database_clock_judges_leases_and_moves_retries(pg_dsn: str) -> None:
    """The caller's clock is an hour off: due times and leases still follow the database's,
    and a retry's backoff keeps its length."""

    async def main() -> None:
        async with PostgresStore(pg_dsn, max_size=2) as store:
            q = store.jobs(None)
            skewed = -3600.0  # whatever the gateway thinks the time is
            [enq] = await q.enqueue([job()], now=skewed)
            [c] = await q.claim("w", 1, now=skewed, lease_s=LEASE)
            view = await q.get(enq.id)
            assert view is not None
            assert view.created_at > 1_700_000_000  # the database's epoch seconds
            retry = Outcome(c.id, c.deliveries, QUEUED, 503, None, None, retry_at=skewed + 30)
            assert await q.finish("w", [retry], now=skewed) == [True]
            view = await q.get(enq.id)
            assert view is not None
            assert view.next_attempt_at is not None
            assert 29 < view.next_attempt_at - view.updated_at <= 30
            assert await q.claim("w", 1, now=skewed + 3600 * 24, lease_s=LEASE) == []

    asyncio.run(main())


# ---------------------------------------------------------------- PostgreSQL: sealed at rest
def _sealed(store: PostgresStore, master: MasterKey) -> PostgresJobQueueRepository:
    """The queue as the platform runs it: sealed by an Encryptor over `master`."""
    return PostgresJobQueueRepository(store, Encryptor(master), database_clock=False)


async def _raw(store: PostgresStore, job_id: str) -> tuple[bytes, bytes | None, str | None, str]:
    async with store.connection() as conn:
        cur = await conn.execute(
            "SELECT body, result, error, request_hash FROM event_jobs WHERE id = %s", (job_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return bytes(row[0]), None if row[1] is None else bytes(row[1]), row[2], str(row[3])


def test_postgres_rows_hold_no_plaintext_body_result_or_error(pg_dsn: str) -> None:
    async def main() -> None:
        master = MasterKey(os.urandom(32), "memory")
        async with PostgresStore(pg_dsn, max_size=4) as store:
            q = _sealed(store, master)
            body = b'{"card":"4111-secret-body"}'
            [good, bad] = await q.enqueue([job(body, key="k"), job(body)], now=0)
            claimed = {c.id: c for c in await q.claim("w", 2, now=0, lease_s=LEASE)}
            assert claimed[good.id].body == body  # opened for the worker
            error = {"message": "secret-error-text"}
            outs = [
                ok(claimed[good.id], b'{"secret":"result-text"}'),
                Outcome(bad.id, claimed[bad.id].deliveries, FAILED, 500, None, error),
            ]
            assert await q.finish("w", outs, now=1) == [True, True]
            for job_id in (good.id, bad.id):
                raw_body, raw_result, raw_error, digest = await _raw(store, job_id)
                assert raw_body.startswith(SEALED_MAGIC)
                assert b"secret" not in raw_body
                if raw_result is not None:
                    assert raw_result.startswith(SEALED_MAGIC)
                    assert b"secret" not in raw_result
                if raw_error is not None:  # the failed job's: sealed, in bytea hex form
                    assert raw_error.startswith("\\x")
                    sealed_error = bytes.fromhex(raw_error[2:])
                    assert sealed_error.startswith(SEALED_MAGIC)
                    assert b"secret" not in sealed_error
                assert digest != request_hash("f", body)  # keyed, not the plain hash
            view = await q.get(good.id)
            assert view is not None
            assert view.result == b'{"secret":"result-text"}'
            [dead] = await q.dead_letters("default", 10)
            assert (dead.id, dead.error) == (bad.id, error)
            # The keyed request hash still tells a replay from a conflict.
            [same, other] = await q.enqueue([job(body, key="k"), job(b"{}", key="k")], now=2)
            assert (same.id, same.created, same.conflict) == (good.id, False, False)
            assert (other.id, other.conflict) == (good.id, True)

    asyncio.run(main())


def test_postgres_a_body_moved_to_another_jobs_row_fails_to_open(pg_dsn: str) -> None:
    async def main() -> None:
        master = MasterKey(os.urandom(32), "memory")
        async with PostgresStore(pg_dsn, max_size=4) as store:
            q = _sealed(store, master)
            [a, b] = await q.enqueue([job(b'{"n":1}'), job(b'{"n":2}')], now=0)
            async with store.connection() as conn:
                await conn.execute(
                    "UPDATE event_jobs SET body = (SELECT body FROM event_jobs WHERE id = %s)"
                    " WHERE id = %s",
                    (a.id, b.id),
                )
            with pytest.raises(CryptoError):
                await q.claim("w", 2, now=0, lease_s=LEASE)

    asyncio.run(main())


def test_postgres_another_pool_with_the_same_master_opens_what_one_sealed(pg_dsn: str) -> None:
    async def main() -> None:
        master = MasterKey(os.urandom(32), "memory")
        a_store, b_store = _two_pools(pg_dsn)
        async with a_store, b_store:
            a, b = _sealed(a_store, master), _sealed(b_store, master)
            body = b'{"from":"gateway a"}'
            [enq] = await a.enqueue([job(body, ns="shop", key="k")], now=0)
            # B never prepared "shop": it loads the key A created when a blob names it.
            [c] = await b.claim("b", 1, now=0, lease_s=LEASE)
            assert (c.id, c.body) == (enq.id, body)
            assert await b.finish("b", [ok(c, b"done by b")], now=1) == [True]
            view = await a.get(enq.id)
            assert view is not None
            assert view.result == b"done by b"
            [again] = await b.enqueue([job(body, ns="shop", key="k")], now=2)
            assert (again.id, again.created, again.conflict) == (enq.id, False, False)
            # Topics' jobs are sealed the same way, whichever pool publishes.
            topics = b.topics()
            await topics.set_subscriptions("shop", "g", ["orders"], now=3)
            [pub] = await topics.publish("shop", "orders", [EVENT], {}, now=3)
            assert pub.deliveries == 1
            [t] = await a.claim("a", 1, now=4, lease_s=LEASE)
            assert orjson.loads(t.body) == EVENT
            assert (await _raw(a_store, t.id))[0].startswith(SEALED_MAGIC)
            # Under another master nothing opens.
            other = _sealed(a_store, MasterKey(os.urandom(32), "memory"))
            with pytest.raises(CryptoError):
                await other.get(enq.id)

    asyncio.run(main())


def test_postgres_a_subject_sealed_body_is_kept_as_is(pg_dsn: str) -> None:
    async def main() -> None:
        master = MasterKey(os.urandom(32), "memory")
        async with PostgresStore(pg_dsn, max_size=4) as store:
            q = _sealed(store, master)
            body = SUBJECT_MAGIC + os.urandom(40)  # a data subject's ciphertext (privacy)
            [enq] = await q.enqueue([job(body)], now=0)
            assert (await _raw(store, enq.id))[0] == body
            [c] = await q.claim("w", 1, now=0, lease_s=LEASE)
            assert c.body == body

    asyncio.run(main())


def test_postgres_opens_a_body_sealed_on_sqlite_with_the_same_key_rows(
    pg_dsn: str, tmp_path: Path
) -> None:
    """A sealed row's bytes mean the same on both backends: a body SQLite sealed, moved with
    its namespace's `data_keys` rows (what a migration copies), opens on PostgreSQL."""

    async def main() -> None:
        master = MasterKey(os.urandom(32), "memory")
        platform = SQLiteStore(tmp_path / "cumulo.db")  # the platform file, with `data_keys`
        platform.open()
        platform.close()
        lite = SQLiteJobQueueRepository(tmp_path / "cumulo.db", Encryptor(master))
        body = b'{"moved":"between backends"}'
        [enq] = await lite.enqueue([job(body, ns="shop", key="k")], now=0)
        await lite.aclose()
        db = sqlite3.connect(tmp_path / "cumulo.db")
        keys = db.execute("SELECT * FROM data_keys WHERE namespace = 'shop'").fetchall()
        row = db.execute(
            "SELECT id, namespace, function, source, body, idempotency_key, request_hash,"
            " status, visible_at, max_attempts, created_at, updated_at FROM event_jobs"
        ).fetchone()
        db.close()
        assert bytes(row[4]).startswith(SEALED_MAGIC)
        async with PostgresStore(pg_dsn, max_size=2) as store:
            async with store.connection() as conn:
                for key in keys:
                    await conn.execute("INSERT INTO data_keys VALUES (%s, %s, %s, %s, %s)", key)
                await conn.execute(
                    "INSERT INTO event_jobs (id, namespace, function, source, body,"
                    " idempotency_key, request_hash, status, visible_at, max_attempts,"
                    " created_at, updated_at) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    row,
                )
            q = _sealed(store, master)
            [c] = await q.claim("w", 1, now=0, lease_s=LEASE)
            assert (c.id, c.body) == (enq.id, body)
            # The keyed request hash matches too: the same request is a replay, not a conflict.
            [again] = await q.enqueue([job(body, ns="shop", key="k")], now=1)
            assert (again.id, again.created, again.conflict) == (enq.id, False, False)

    asyncio.run(main())
