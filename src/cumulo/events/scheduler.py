"""Cron schedules: each due slot of each schedule becomes one job in the durable queue.

- Cron expressions are parsed by `croniter`, five fields (minute hour day-of-month month
  day-of-week) or an alias such as `@hourly`, evaluated in UTC.
- A slot fires at most once: firing inserts a row keyed (namespace, function, cron, slot)
  and the job in the same transaction, so neither a restart nor a second gateway on the
  same database fires it again, and a crash cannot leave a fire without its job.
- The job goes through the queue like an async invocation, so the function runs even when
  it is scaled to zero (the executor cold-starts it) and failures are retried.
- Catch-up after downtime: only the most recent missed slot fires, once. A platform down
  from 10:02 to 10:23 with `*/5 * * * *` fires the 10:20 slot when it comes back, not 10:05,
  10:10 and 10:15 as well: a schedule says "keep this fresh", and a burst of stale runs
  would only repeat the same work.
- A new schedule starts with its first slot after it was set (`since`); a deploy that keeps
  the same cron keeps its history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

import orjson

from cumulo.errors import BadRequest
from cumulo.events.queue import SOURCE_SCHEDULE, JobQueueRepository, NewJob, Schedule, new_job_id
from cumulo.sdk.schedule import validate_cron
from cumulo.tasks import cancel_and_wait

log = logging.getLogger("cumulo.events")

MAX_SCHEDULES_PER_FUNCTION = 16
MAX_SLEEP_S = 5.0  # re-check at least this often (a clock step, another gateway's change)

Key = tuple[str, str, str]


def latest_slot(cron: str, now: float) -> float:
    """The newest slot at or before `now` (cron slots are whole seconds)."""
    from croniter import croniter  # here, not at the top: 60 ms of imports few need

    start = datetime.fromtimestamp(math.floor(now) + 1, UTC)
    return float(croniter(cron, start).get_prev(float))


def next_slot(cron: str, now: float) -> float:
    """The first slot after `now`."""
    from croniter import croniter  # (see above)

    return float(croniter(cron, datetime.fromtimestamp(now, UTC)).get_next(float))


def schedule_event(schedule: Schedule, slot: float, job_id: str) -> bytes:
    """What the function receives: a CloudEvents 1.0 event (structured JSON)."""
    when = datetime.fromtimestamp(slot, UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": job_id,
            "source": f"/cumulo/{schedule.namespace}/{schedule.function}",
            "type": "dev.cumulo.schedule",
            "time": when,
            "datacontenttype": "application/json",
            "data": {"cron": schedule.cron, "slot": when},
        }
    )


MaxAttempts = Callable[[str, str], Awaitable[int]]


class Scheduler:
    def __init__(
        self,
        queue: JobQueueRepository,
        max_attempts: MaxAttempts,
        *,
        clock: Callable[[], float] = time.time,
        on_fire: Callable[[], None] = lambda: None,
    ) -> None:
        self.queue = queue
        self.max_attempts = max_attempts
        self.clock = clock
        self.on_fire = on_fire
        self.schedules: dict[Key, Schedule] = {}
        self._last: dict[Key, float] = {}  # newest slot known fired (the database decides)
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def load(self) -> None:
        self.schedules = {
            (s.namespace, s.function, s.cron): s for s in await self.queue.schedules()
        }
        self._last = {}
        for key in self.schedules:
            last = await self.queue.last_fired(*key)
            if last is not None:
                self._last[key] = last
        self._changed.set()

    async def set(self, namespace: str, function: str, crons: Iterable[str]) -> None:
        normalised = sorted({validate_cron(c) for c in crons})
        if len(normalised) > MAX_SCHEDULES_PER_FUNCTION:
            raise BadRequest(
                f"at most {MAX_SCHEDULES_PER_FUNCTION} schedules per function", code="invalid_cron"
            )
        await self.queue.set_schedules(namespace, function, normalised, self.clock())
        await self.load()

    async def replace_all(self, entries: Iterable[tuple[str, str, list[str]]]) -> None:
        """Make the stored schedules exactly `entries` (start-up: the platform's view wins)."""
        wanted = {(ns, fn): crons for ns, fn, crons in entries}
        stored = {(s.namespace, s.function) for s in self.schedules.values()}
        for ns, fn in stored - wanted.keys():
            await self.queue.set_schedules(ns, fn, [], self.clock())
        for (ns, fn), crons in wanted.items():
            try:
                normalised = sorted({validate_cron(c) for c in crons})
            except BadRequest as exc:
                log.warning("events: schedule of %s/%s ignored: %s", ns, fn, exc.message)
                continue
            await self.queue.set_schedules(ns, fn, normalised, self.clock())
        await self.load()

    async def tick(self) -> list[str]:
        """Fire every schedule whose latest slot has not fired yet; the new jobs' ids."""
        now = self.clock()
        fired = []
        for key, schedule in list(self.schedules.items()):
            slot = latest_slot(schedule.cron, now)
            if slot < schedule.since or slot <= self._last.get(key, -math.inf):
                continue
            job_id = new_job_id(now)
            job = NewJob(
                id=job_id,
                namespace=schedule.namespace,
                function=schedule.function,
                body=schedule_event(schedule, slot, job_id),
                max_attempts=await self.max_attempts(schedule.namespace, schedule.function),
                source=SOURCE_SCHEDULE,
            )
            if await self.queue.fire(schedule, slot, job, now):
                fired.append(job_id)
            # Fired here or elsewhere (another gateway, before a restart): done either way.
            self._last[key] = slot
        if fired:
            self.on_fire()
        return fired

    def seconds_to_next(self) -> float:
        now = self.clock()
        nearest = min(
            (next_slot(s.cron, now) for s in self.schedules.values()), default=now + MAX_SLEEP_S
        )
        return max(0.0, min(MAX_SLEEP_S, nearest - now))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        while True:
            self._changed.clear()
            try:
                await self.tick()
            except Exception:
                # A busy database: the slot is still unfired, the next pass fires it.
                log.exception("events: schedule tick failed; retrying")
            with contextlib.suppress(TimeoutError):
                # A few ms past the slot, so the clock has certainly reached it.
                async with asyncio.timeout(self.seconds_to_next() + 0.01):
                    await self._changed.wait()
