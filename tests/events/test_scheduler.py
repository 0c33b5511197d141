"""Cron schedules with a fake clock: one job per slot, never twice (restarts, two gateways),
and the catch-up policy after downtime (only the most recent missed slot fires)."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

import cumulo
from cumulo.errors import BadRequest
from cumulo.events.queue import QUEUED, SOURCE_SCHEDULE, SUCCEEDED
from cumulo.events.scheduler import latest_slot
from cumulo.events.service import EventsService, ScheduleLoader
from cumulo.runtime.loader import found
from cumulo.sdk.schedule import SCHEDULE_ATTR, schedule, schedules_of, validate_cron
from cumulo.sdk.spec import FunctionConfig
from cumulo.store.sqlite_jobs import SQLiteJobQueueRepository
from tests.events.test_queue import FakeClock, FakeFunction, pump

EVERY_5 = "*/5 * * * *"


def at(hour: int, minute: int, second: float = 0) -> float:
    whole = int(second)
    base = datetime(2026, 3, 1, hour, minute, whole, tzinfo=UTC).timestamp()
    return base + (second - whole)


def with_services(
    tmp_path: Path,
    clock: FakeClock,
    scenario: Callable[..., Awaitable[Any]],
    *,
    count: int = 1,
    fake: FakeFunction | None = None,
    load: ScheduleLoader | None = None,
) -> Any:
    """Start `count` services on one database file (gateways sharing it), run the scenario."""

    async def config_of(ns: str, fn: str) -> FunctionConfig:
        return FunctionConfig(max_attempts=7)

    async def main() -> Any:
        services = [
            EventsService(
                SQLiteJobQueueRepository(tmp_path / "cumulo.db"),
                fake or FakeFunction(),
                config_of=config_of,
                load_schedules=load,
                clock=clock,
            )
            for _ in range(count)
        ]
        for service in services:
            await service.start(run=False)
        try:
            return await scenario(*services)
        finally:
            for service in services:
                await service.stop(drain_s=0)

    return asyncio.run(main())


async def slots_of(service: EventsService, ids: list[str]) -> list[str]:
    out = []
    for job_id in ids:
        view = await service.get(job_id)
        assert view is not None
        assert view.source == SOURCE_SCHEDULE
        out.append(view.id)
    return out


def test_fires_once_per_slot(tmp_path: Path) -> None:
    clock = FakeClock(at(10, 3))

    async def scenario(service: EventsService) -> None:
        await service.set_schedules("default", "tick", [EVERY_5])
        assert await service.scheduler.tick() == []  # 10:00 predates the schedule
        clock.now = at(10, 4, 59.999)
        assert await service.scheduler.tick() == []
        clock.now = at(10, 5)
        first = await service.scheduler.tick()
        assert len(first) == 1
        clock.now = at(10, 9, 59)
        assert await service.scheduler.tick() == []
        clock.now = at(10, 10, 0.5)
        assert len(await service.scheduler.tick()) == 1
        view = await service.get(first[0])
        assert view is not None
        assert (view.status, view.max_attempts, view.function) == (QUEUED, 7, "tick")

    with_services(tmp_path, clock, scenario)


def test_a_restart_does_not_fire_the_same_slot_again(tmp_path: Path) -> None:
    clock = FakeClock(at(10, 3))

    async def before(service: EventsService) -> None:
        await service.set_schedules("default", "tick", [EVERY_5])
        clock.now = at(10, 5, 1)
        assert len(await service.scheduler.tick()) == 1

    async def after(service: EventsService) -> None:
        clock.now = at(10, 5, 30)
        assert await service.scheduler.tick() == []
        assert (await service.counts())[QUEUED] == 1
        clock.now = at(10, 10)
        assert len(await service.scheduler.tick()) == 1

    with_services(tmp_path, clock, before)
    with_services(tmp_path, clock, after)


def test_after_downtime_only_the_most_recent_missed_slot_fires(tmp_path: Path) -> None:
    clock = FakeClock(at(10, 3))
    fake = FakeFunction()

    async def before(service: EventsService) -> None:
        await service.set_schedules("default", "tick", [EVERY_5])
        clock.now = at(10, 5)
        assert len(await service.scheduler.tick()) == 1
        await pump(service)

    async def after(service: EventsService) -> None:
        clock.now = at(10, 23, 17)  # down since 10:05: 10:10, 10:15 and 10:20 were missed
        [job_id] = await service.scheduler.tick()
        assert await service.scheduler.tick() == []
        await pump(service)
        view = await service.get(job_id)
        assert view is not None
        assert view.status == SUCCEEDED

    with_services(tmp_path, clock, before, fake=fake)
    with_services(tmp_path, clock, after, fake=fake)
    events = [orjson.loads(body) for _, _, body, _ in fake.calls]
    assert [e["data"]["slot"] for e in events] == ["2026-03-01T10:05:00Z", "2026-03-01T10:20:00Z"]
    assert {e["type"] for e in events} == {"dev.cumulo.schedule"}
    assert events[0]["specversion"] == "1.0"
    assert events[0]["data"]["cron"] == EVERY_5
    assert [e["id"] for e in events] == [inv for _, _, _, inv in fake.calls]


def test_two_gateways_on_one_database_fire_a_slot_once(tmp_path: Path) -> None:
    clock = FakeClock(at(10, 3))

    async def scenario(a: EventsService, b: EventsService) -> None:
        await a.set_schedules("default", "tick", [EVERY_5])
        await b.scheduler.load()  # b learns of it the way it would at its own start
        clock.now = at(10, 5)
        fired = await asyncio.gather(a.scheduler.tick(), b.scheduler.tick())
        assert sorted(len(f) for f in fired) == [0, 1]
        assert (await a.counts())[QUEUED] == 1

    with_services(tmp_path, clock, scenario, count=2)


def test_changing_schedules_keeps_history_and_removal_stops_firing(tmp_path: Path) -> None:
    clock = FakeClock(at(10, 3))

    async def scenario(service: EventsService) -> None:
        await service.set_schedules("default", "tick", [EVERY_5])
        clock.now = at(10, 5)
        assert len(await service.scheduler.tick()) == 1
        # A redeploy with the same cron (spelled with other spacing) and a new hourly one.
        await service.set_schedules("default", "tick", ["*/5  *  * * *", "@hourly"])
        assert [s.cron for s in await service.schedules()] == [EVERY_5, "@hourly"]
        assert await service.scheduler.tick() == []  # 10:05 is not refired
        await service.set_schedules("default", "tick", [])
        clock.now = at(11, 0)
        assert await service.scheduler.tick() == []
        assert await service.schedules() == []

    with_services(tmp_path, clock, scenario)


def test_startup_load_makes_the_platforms_view_win(tmp_path: Path) -> None:
    clock = FakeClock(at(10, 3))

    async def before(service: EventsService) -> None:
        await service.set_schedules("default", "gone", [EVERY_5])
        await service.set_schedules("default", "kept", [EVERY_5])

    async def load() -> list[tuple[str, str, list[str]]]:
        return [("default", "kept", [EVERY_5]), ("team", "new", ["0 * * * *"])]

    async def after(service: EventsService) -> None:
        schedules = {(s.namespace, s.function, s.cron) for s in await service.schedules()}
        assert schedules == {("default", "kept", EVERY_5), ("team", "new", "0 * * * *")}
        clock.now = at(10, 5)
        [job_id] = await service.scheduler.tick()
        view = await service.get(job_id)
        assert view is not None
        assert view.function == "kept"

    with_services(tmp_path, clock, before)
    with_services(tmp_path, clock, after, load=load)


def test_seconds_to_next_slot() -> None:
    assert latest_slot(EVERY_5, at(10, 7, 12.5)) == at(10, 5)
    assert latest_slot(EVERY_5, at(10, 5)) == at(10, 5)


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("", "needs a cron expression"),
        ("61 * * * *", "out of range"),
        ("* * * *", "use five fields"),
        ("* * * * * *", "use five fields"),
        ("*/5 * * * mon-xyz", "invalid cron expression"),
        ("@sometimes", "invalid cron expression"),
    ],
)
def test_bad_cron_expressions_are_one_line_400s(cron: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as caught:
        validate_cron(cron)
    assert caught.value.status == 400
    assert "\n" not in caught.value.message


def test_set_schedules_refuses_a_bad_cron(tmp_path: Path) -> None:
    async def scenario(service: EventsService) -> None:
        with pytest.raises(BadRequest):
            await service.set_schedules("default", "tick", ["nope"])
        assert await service.schedules() == []

    with_services(tmp_path, FakeClock(), scenario)


def test_the_decorator_records_validated_crons_and_the_loader_reports_them() -> None:
    @schedule("0  3 * * *")
    @schedule(EVERY_5)
    def nightly(event: dict[str, Any], ctx: cumulo.Context) -> None:
        return None

    @schedule("@daily")
    @cumulo.function(name="custom", max_instances=2)
    def named(event: dict[str, Any], ctx: cumulo.Context) -> None:
        return None

    assert schedules_of(nightly) == (EVERY_5, "0 3 * * *")
    assert getattr(nightly, SCHEDULE_ATTR) == (EVERY_5, "0 3 * * *")
    module = types.ModuleType("user_mod")
    module.nightly = nightly  # type: ignore[attr-defined]
    module.named = named  # type: ignore[attr-defined]
    described = found(module, "nightly").describe()
    assert described["schedules"] == [EVERY_5, "0 3 * * *"]
    assert described["name"] == "nightly"
    assert described["config"] == FunctionConfig().to_dict()  # scheduled alone: the defaults
    custom = found(module, "named").describe()
    assert (custom["name"], custom["schedules"]) == ("custom", ["@daily"])
    assert custom["config"]["max_instances"] == 2
    assert found(module, "named").func({}, None) is None  # still a plain function
    with pytest.raises(BadRequest, match="invalid cron"):
        schedule("99 * * * *")
