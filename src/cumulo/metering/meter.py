"""The hot-path half of metering: each finished invocation is a few float adds in memory.

`observe` runs inside every invocation (an Outcome observer) and must stay O(1) with no
locks, I/O or logging; `take` hands the accumulated deltas to the flusher, which owns them
from then on (swapping the dict is atomic on the event loop: nothing is added twice or lost).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cumulo.metering.quota import Quota, exceeded, month_bounds
from cumulo.observability.outcomes import Outcome
from cumulo.store.metering import MonthUsage

Clock = Callable[[], float]
HOUR = 3600
MB_PER_GB = 1024


@dataclass(slots=True)
class Delta:
    """One (namespace, function, hour)'s usage since the last flush."""

    invocations: int = 0
    errors: int = 0
    gb_seconds: float = 0.0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    peak_rss_mb: float = 0.0

    def merge(self, other: Delta) -> None:
        self.invocations += other.invocations
        self.errors += other.errors
        self.gb_seconds += other.gb_seconds
        self.cpu_seconds += other.cpu_seconds
        self.wall_seconds += other.wall_seconds
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.peak_rss_mb = max(self.peak_rss_mb, other.peak_rss_mb)


@dataclass(slots=True)
class MonthToDate:
    invocations: int = 0
    gb_seconds: float = 0.0


DeltaKey = tuple[str, str, int]  # namespace, function, hour (epoch of its start)


def billed_seconds(wall_s: float) -> float:
    """Wall time rounded up to the next millisecond, as Lambda bills duration."""
    return math.ceil(wall_s * 1000) / 1000


class Meter:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._deltas: dict[DeltaKey, Delta] = {}
        self.hour = 0
        self._hour_end = 0.0
        self.month: dict[str, MonthToDate] = {}
        self.month_start = 0.0
        self.month_end = 0.0
        self.quotas: dict[str, Quota] = {}
        self._roll(clock())

    # ------------------------------------------------------------ the hot path
    def observe(self, outcome: Outcome) -> None:
        now = self.clock()
        if not self.hour <= now < self._hour_end:
            self._roll(now)
        key = (outcome.namespace, outcome.function, self.hour)
        delta = self._deltas.get(key)
        if delta is None:
            delta = self._deltas[key] = Delta()
        wall = -((-outcome.duration_s * 1000) // 1) / 1000  # billed_seconds, inlined
        gb_seconds = outcome.memory_mb * wall / MB_PER_GB
        delta.invocations += 1
        if outcome.code != "ok":
            delta.errors += 1
        delta.gb_seconds += gb_seconds
        delta.cpu_seconds += outcome.cpu_s
        delta.wall_seconds += wall
        delta.bytes_in += outcome.bytes_in
        delta.bytes_out += outcome.bytes_out
        if outcome.peak_rss_mb > delta.peak_rss_mb:
            delta.peak_rss_mb = outcome.peak_rss_mb
        month = self.month.get(outcome.namespace)
        if month is None:
            month = self.month[outcome.namespace] = MonthToDate()
        month.invocations += 1
        month.gb_seconds += gb_seconds

    def admit(self, namespace: str) -> None:
        """Raise the 429 once `namespace` used up a monthly quota (month-to-date counters)."""
        quota = self.quotas.get(namespace)
        if quota is None:
            return
        now = self.now()
        used = self.month.get(namespace)
        if used is None:
            used = MonthToDate()
        if quota.invocations is not None and used.invocations >= quota.invocations:
            raise exceeded(namespace, "invocations", quota.invocations, self.month_end, now)
        if quota.gb_seconds is not None and used.gb_seconds >= quota.gb_seconds:
            raise exceeded(namespace, "gb_seconds", quota.gb_seconds, self.month_end, now)

    def now(self) -> float:
        """The clock, with the hour and month rolled forward to it."""
        now = self.clock()
        if not self.hour <= now < self._hour_end:
            self._roll(now)
        return now

    def _roll(self, now: float) -> None:
        """A new hour bucket; at a month boundary (or a clock set back) new month counters."""
        self.hour = int(now // HOUR) * HOUR
        self._hour_end = self.hour + HOUR
        if not self.month_start <= now < self.month_end:
            self.month_start, self.month_end = month_bounds(now)
            self.month = {}

    # ------------------------------------------------------------ the flusher's side
    def take(self) -> dict[DeltaKey, Delta]:
        deltas, self._deltas = self._deltas, {}
        return deltas

    def give_back(self, deltas: dict[DeltaKey, Delta]) -> None:
        """A flush failed: its deltas go back in, to be written by the next one."""
        for key, delta in deltas.items():
            current = self._deltas.get(key)
            if current is None:
                self._deltas[key] = delta
            else:
                current.merge(delta)

    def load_month(self, month_start: float, used: Mapping[str, MonthUsage]) -> None:
        """Month-to-date counters read from the database at start."""
        if month_start == self.month_start:
            for namespace, counters in used.items():
                mine = self.month.setdefault(namespace, MonthToDate())
                mine.invocations += counters.invocations
                mine.gb_seconds += counters.gb_seconds
