"""Metering as one object the platform starts and stops: the meter, its flusher, quotas."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from cumulo.metering.meter import Clock, Delta, DeltaKey, Meter
from cumulo.metering.pricing import Prices, load_prices
from cumulo.metering.quota import Quota
from cumulo.store.changes import Change, ChangeFeed
from cumulo.store.metering import MeteringRepository, UsageDelta
from cumulo.tasks import cancel_and_wait

log = logging.getLogger("cumulo.metering")

FLUSH_INTERVAL_S = 1.0
KB_PER_MB = 1024


class Metering:
    def __init__(
        self,
        repository: MeteringRepository,
        prices: Prices,
        clock: Clock,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self.repository = repository  # where usage and quotas are kept (cumulo.store)
        self.changes: ChangeFeed | None = None  # told of quota changes, for other gateways
        self.prices = prices
        self.meter = Meter(clock)
        self.observe = self.meter.observe  # the Outcome observer (a bound method, no wrapper)
        # Outcomes reach `observe` in batches (Platform.drain_outcomes); whoever must see
        # every finished invocation (a quota check, a usage read, shutdown) catches up first.
        self.catch_up: Callable[[], None] = lambda: None
        self._interval = flush_interval_s
        self._task: asyncio.Task[None] | None = None

    @property
    def clock(self) -> Clock:
        return self.meter.clock

    async def start(self) -> None:
        self.meter.quotas = await self.repository.all_quotas()
        start = self.meter.month_start
        used = await self.repository.month_to_date(int(start))
        self.meter.load_month(start, used)
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        """After the executor stopped: every finished invocation is in the meter; write it."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self.flush()

    def admit(self, namespace: str) -> None:
        """The quota check before each invocation (429 `quota_exceeded` once used up)."""
        if namespace in self.meter.quotas:
            self.catch_up()
            self.meter.admit(namespace)

    async def flush(self) -> None:
        self.catch_up()
        deltas = self.meter.take()
        if not deltas:
            return
        try:
            # One transaction: on failure nothing was written, so the deltas go back whole.
            await self.repository.add_usage(usage_deltas(deltas))
        except Exception:
            self.meter.give_back(deltas)
            raise

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:  # kept in memory; the next flush tries again
                log.warning("usage flush failed, retrying: %s", exc)

    # ------------------------------------------------------------ quotas
    async def set_quota(self, namespace: str, quota: Quota) -> None:
        await self.repository.set_quota(namespace, quota, self.clock())
        if quota.empty:
            self.meter.quotas.pop(namespace, None)
        else:
            self.meter.quotas[namespace] = quota
        if self.changes is not None:
            await self.changes.publish(Change("quota", namespace))

    async def reload_quotas(self) -> None:
        """Another gateway changed a quota (store/changes.py)."""
        self.meter.quotas = await self.repository.all_quotas()

    def quota_view(self, namespace: str) -> dict[str, Any]:
        self.catch_up()
        meter = self.meter
        meter.now()  # a new month starts the counters afresh
        quota = meter.quotas.get(namespace, Quota())
        used = meter.month.get(namespace)
        return {
            "namespace": namespace,
            **quota.public(),
            "used": {
                "gb_seconds": used.gb_seconds if used else 0.0,
                "invocations": used.invocations if used else 0,
            },
            "period": {"start": meter.month_start, "resets_at": meter.month_end},
        }


def usage_deltas(deltas: dict[DeltaKey, Delta]) -> list[UsageDelta]:
    """The meter's deltas as the repository's records (the meter keeps its own mutable
    ones: the hot path adds into them in place)."""
    return [
        UsageDelta(
            ns,
            fn,
            hour,
            d.invocations,
            d.errors,
            d.gb_seconds,
            d.cpu_seconds,
            d.wall_seconds,
            d.bytes_in,
            d.bytes_out,
            d.peak_rss_mb,
        )
        for (ns, fn, hour), d in deltas.items()
    ]


def invocation_usage(
    frame: dict[str, Any], body_out: bytes | None
) -> tuple[float, float, int, int]:
    """(CPU seconds, peak RSS in MB, bytes in, bytes out) of one finished invocation.

    CPU and RSS come from the worker's `u` = [cpu_s, maxrss_kb] (the pool puts it in the
    frame as `usage`); the worker runs user code, so anything malformed counts as nothing.
    Bytes in: the request body the function got; bytes out: the body it returned."""
    cpu_s = rss_mb = 0.0
    usage = frame.get("usage")
    if type(usage) is list and len(usage) == 2:
        cpu, rss = usage
        if type(cpu) is float and type(rss) is int and 0.0 <= cpu < math.inf and rss >= 0:
            cpu_s, rss_mb = cpu, rss / KB_PER_MB
    http = frame.get("http")
    body_in = http[4] if http else frame.get("ev")
    return cpu_s, rss_mb, len(body_in) if body_in else 0, len(body_out) if body_out else 0


def make_metering(repository: MeteringRepository, options: Any) -> Metering:
    """From PlatformOptions (`pricing`, `clock`); a bad pricing file is a ConfigError here,
    before anything starts."""
    return Metering(repository, load_prices(options.pricing), options.clock)
