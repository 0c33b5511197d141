"""Predictive pre-warming: start workers shortly before predicted load, let them go after.

Every bucket the `Prewarmer` closes the arrival buckets (windows.ArrivalWindows), asks the
sidecar for each active function's forecast of the next buckets, and the `PrewarmPlanner`
turns each predicted bucket into a floor: `workers` from `start_at` until `until`, where

    workers  = ceil(predicted arrivals / bucket_s * mean duration / concurrency * headroom)
    start_at = bucket start - (the function's measured cold start + lead_s)
    until    = bucket end

(Little's law: the rate times the time each call holds a worker is the concurrency the
bucket needs). Between ticks (a few per bucket) the floor in force is applied to the live
version's pool (`VersionPool.prewarm`), which starts missing workers at once and keeps the
idle reaper from taking workers below the floor until `until`; after that the ordinary idle
timeout lets them go. Only seasonal forecasts are acted on: without a season the forecast
is flat, which reactive scaling already follows, and holding workers for it would only
keep them past their idle timeout. Reactive scaling is untouched: whatever the forecast
misses, the pool scales up for as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from cumulo.ai.insight_settings import TICKS_PER_BUCKET, InsightSettings
from cumulo.ai.sidecar_client import SidecarClient, SidecarError
from cumulo.ai.windows import ArrivalWindows
from cumulo.tasks import cancel_and_wait

log = logging.getLogger("cumulo.insights")

MIN_PREDICTED = 0.5  # predicted arrivals in a bucket below this are no load
MAX_SERIES = 200  # functions forecast per bucket (the most active)
SEASONAL = ("holt-winters", "seasonal-naive")  # forecasts worth acting on


class Clock(Protocol):
    """Wall-clock seconds and a way to wait: a fake one makes the loop deterministic."""

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class Floor:
    start_at: float
    until: float
    workers: int


@dataclass(frozen=True, slots=True)
class FunctionOutlook:
    """What the planner knows of one function at a bucket boundary."""

    first_bucket: int  # index of predicted[0] (the open bucket)
    predicted: list[float]  # arrivals per bucket
    mean_duration_s: float
    cold_start_s: float
    concurrency: int = 1


class PrewarmPlanner:
    def __init__(self, bucket_s: float, lead_s: float, headroom: float = 1.0) -> None:
        self.bucket_s = bucket_s
        self.lead_s = lead_s
        self.headroom = headroom

    def workers_for(self, arrivals: float, mean_duration_s: float, concurrency: int) -> int:
        if arrivals < MIN_PREDICTED:
            return 0
        busy = arrivals / self.bucket_s * max(mean_duration_s, 1e-3) / max(1, concurrency)
        return max(1, math.ceil(busy * self.headroom - 1e-9))

    def plan(self, outlook: FunctionOutlook) -> list[Floor]:
        floors = []
        lead = self.lead_s + max(0.0, outlook.cold_start_s)
        for offset, arrivals in enumerate(outlook.predicted):
            workers = self.workers_for(arrivals, outlook.mean_duration_s, outlook.concurrency)
            if workers:
                start = (outlook.first_bucket + offset) * self.bucket_s
                floors.append(Floor(start - lead, start + self.bucket_s, workers))
        return floors

    @staticmethod
    def in_force(floors: list[Floor], now: float) -> Floor | None:
        """The floor to hold at `now`: the most workers any covering floor asks for, until
        the last of those ends."""
        active = [f for f in floors if f.start_at <= now < f.until]
        if not active:
            return None
        return Floor(now, max(f.until for f in active), max(f.workers for f in active))


# (namespace, function, workers, hold seconds) -> the workers started now
ApplyFloor = Callable[[str, str, int, float], Awaitable[int]]
ConcurrencyOf = Callable[[str, str], Awaitable[int | None]]


class Prewarmer:
    def __init__(
        self,
        settings: InsightSettings,
        arrivals: ArrivalWindows,
        sidecar: SidecarClient,
        apply_floor: ApplyFloor,
        concurrency_of: ConcurrencyOf,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.arrivals = arrivals
        self.sidecar = sidecar
        self.apply_floor = apply_floor
        self.concurrency_of = concurrency_of
        self.clock: Clock = clock or WallClock()
        self.planner = PrewarmPlanner(settings.bucket_s, settings.lead, settings.headroom)
        self.floors: dict[tuple[str, str], list[Floor]] = {}
        self.methods: dict[tuple[str, str], str] = {}  # the forecasting method, per function
        self._applied: dict[tuple[str, str], Floor] = {}
        self._forecast_bucket: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.started_workers = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        tick = self.settings.bucket_s / TICKS_PER_BUCKET
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("pre-warming step failed")
            now = self.clock.time()
            # Wake on tick boundaries so a floor's start is missed by at most one tick.
            await self.clock.sleep(tick - (now % tick) + 1e-3)

    async def step(self) -> None:
        now = self.clock.time()
        bucket = self.arrivals.close_until(now)
        if bucket != self._forecast_bucket:
            self._forecast_bucket = bucket
            await self.refresh(bucket)
        await self.apply(now)

    async def refresh(self, bucket: int) -> None:
        """New forecasts for every function with enough history (the sidecar starts on the
        first such function)."""
        ready = [
            (key, series)
            for key, series in self.arrivals.series.items()
            if len(series.history) >= self.settings.min_buckets
        ]
        if not ready:
            self.floors = {}
            return
        ready.sort(key=lambda item: -sum(item[1].history))
        ready = ready[:MAX_SERIES]
        horizon = 2 + math.ceil((self.settings.lead + 1.0) / self.settings.bucket_s)
        try:
            answers = await self.sidecar.call(
                "forecast",
                {
                    "series": [
                        {"id": i, "counts": list(series.history)}
                        for i, (_, series) in enumerate(ready)
                    ],
                    "horizon": horizon,
                },
            )
        except SidecarError as exc:
            log.warning("no forecast this bucket: %s", exc)
            return
        floors: dict[tuple[str, str], list[Floor]] = {}
        for answer in answers:
            key, series = ready[int(answer["id"])]
            self.methods[key] = method = str(answer.get("method"))
            if method not in SEASONAL:
                continue  # no season seen: reactive scaling already follows a flat rate
            concurrency = await self.concurrency_of(*key)
            if concurrency is None:
                continue  # removed since
            plan = self.planner.plan(
                FunctionOutlook(
                    first_bucket=bucket,
                    predicted=[float(v) for v in answer["values"]],
                    mean_duration_s=series.mean_duration_s,
                    cold_start_s=series.cold_s,
                    concurrency=concurrency,
                )
            )
            if plan:
                floors[key] = plan
        self.floors = floors

    async def apply(self, now: float) -> None:
        for key, floors in self.floors.items():
            floor = self.planner.in_force(floors, now)
            if floor is None:
                self._applied.pop(key, None)
                continue
            last = self._applied.get(key)
            if last is not None and last.workers == floor.workers and last.until == floor.until:
                continue
            self._applied[key] = floor
            self.started_workers += await self.apply_floor(
                key[0], key[1], floor.workers, floor.until - now
            )
