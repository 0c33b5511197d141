"""The events service on PostgreSQL: the same dispatcher, scheduler and topics over
`PostgresJobQueueRepository`, two services (two gateways, two pools) on one database.
A real cluster (tests/pg.py), a fake clock (`database_clock=False`), no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from cumulo.events.queue import QUEUED, SOURCE_SCHEDULE, SUCCEEDED
from cumulo.events.service import EventsService
from cumulo.sdk.spec import FunctionConfig
from cumulo.store.postgres import PostgresStore
from cumulo.store.postgres_jobs import PostgresJobQueueRepository
from tests.events.test_queue import FakeClock, FakeFunction, pump
from tests.store.conftest import pg_cluster, pg_dsn  # noqa: F401 - the fixtures

LEASE = 10.0


def two_gateways(
    dsn: str,
    fake: FakeFunction,
    scenario: Callable[[EventsService, EventsService, FakeClock], Awaitable[Any]],
    *,
    crons: list[str] | None = None,
) -> Any:
    clock = FakeClock()

    async def config_of(ns: str, fn: str) -> FunctionConfig:
        return FunctionConfig(max_attempts=2)

    async def load_schedules() -> list[tuple[str, str, list[str]]]:
        return [("default", "tick", crons)] if crons else []

    async def main() -> Any:
        stores = [PostgresStore(dsn, max_size=4), PostgresStore(dsn, max_size=4)]
        services = []
        for store in stores:
            await store.open()
            services.append(
                EventsService(
                    PostgresJobQueueRepository(store, database_clock=False),
                    fake,
                    config_of=config_of,
                    load_schedules=load_schedules,
                    clock=clock,
                    rng=lambda: 1.0,
                    concurrency=4,
                    lease_s=LEASE,
                    retry_base_s=2.0,
                )
            )
        try:
            for service in services:
                await service.start(run=False)
            return await scenario(services[0], services[1], clock)
        finally:
            for service in services:
                await service.stop(drain_s=0)
            for store in stores:
                await store.close()

    return asyncio.run(main())


def test_jobs_enqueued_on_one_gateway_run_once_on_either(pg_dsn: str) -> None:  # noqa: F811
    fake = FakeFunction([500])

    async def scenario(a: EventsService, b: EventsService, clock: FakeClock) -> None:
        first = await a.enqueue("default", "f", b'{"n":1}', "key-1")
        again = await b.enqueue("default", "f", b'{"n":1}', "key-1")
        assert (again.id, again.created) == (first.id, False)
        assert await pump(b) == 1
        assert await pump(a) == 0  # b holds it
        view = await a.get(first.id)
        assert view is not None
        assert (view.status, view.attempts, view.next_attempt_at) == (QUEUED, 1, clock.now + 2)
        clock.now += 2.0  # the retry's backoff
        assert await pump(a) == 1
        view = await b.get(first.id)
        assert view is not None
        assert (view.status, view.attempts, view.deliveries) == (SUCCEEDED, 2, 2)
        assert orjson.loads(view.result or b"") == {"echo": {"n": 1}}
        assert len(fake.calls) == 2
        assert (await a.counts())[SUCCEEDED] == 1

    two_gateways(pg_dsn, fake, scenario)


def test_a_schedule_slot_fires_once_across_gateways(pg_dsn: str) -> None:  # noqa: F811
    fake = FakeFunction()

    async def scenario(a: EventsService, b: EventsService, clock: FakeClock) -> None:
        clock.now += 3600
        fired = await asyncio.gather(a.scheduler.tick(), b.scheduler.tick())
        assert sum(len(ids) for ids in fired) == 1
        assert await pump(a) + await pump(b) == 1
        [(ns, fn, body, _)] = fake.calls
        assert (ns, fn, orjson.loads(body)["type"]) == ("default", "tick", "dev.cumulo.schedule")
        [job_id] = [i for ids in fired for i in ids]
        view = await b.get(job_id)
        assert view is not None
        assert (view.source, view.status) == (SOURCE_SCHEDULE, SUCCEEDED)

    two_gateways(pg_dsn, fake, scenario, crons=["@hourly"])


def test_a_topic_publish_through_both_gateways_delivers_once(pg_dsn: str) -> None:  # noqa: F811
    fake = FakeFunction()
    event = {"specversion": "1.0", "id": "e1", "source": "/s", "type": "t"}

    async def scenario(a: EventsService, b: EventsService, clock: FakeClock) -> None:
        await a.set_topics("shop", "x", ["orders"])
        await b.set_topics("shop", "y", ["orders"])
        first, second = await asyncio.gather(
            a.publish("shop", "orders", [event]), b.publish("shop", "orders", [event])
        )
        assert sorted([first[0].deliveries, second[0].deliveries]) == [0, 2]
        assert await pump(a) + await pump(b) == 2
        assert sorted(fn for _, fn, _, _ in fake.calls) == ["x", "y"]

    two_gateways(pg_dsn, fake, scenario)
