"""`metering.service.Metering` over its repository, in process, on the in-memory backend
(the SQLite and PostgreSQL backends pass the same conformance suite: tests/store)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cumulo.errors import StoreUnavailable, TooManyRequests
from cumulo.metering.pricing import Prices
from cumulo.metering.quota import Quota, month_bounds
from cumulo.metering.service import Metering
from cumulo.observability.outcomes import Outcome
from cumulo.store.memory_metering import MemoryMeteringRepository
from cumulo.store.metering import UsageDelta

NOW = 1_700_000_123.0  # mid-November 2023, UTC
HOUR = int(NOW // 3600) * 3600


def outcome(function: str = "f", code: str = "ok", namespace: str = "default") -> Outcome:
    return Outcome(
        "id",
        namespace,
        function,
        1,
        200,
        code,
        False,
        NOW,
        0.5,
        cpu_s=0.25,
        peak_rss_mb=30.0,
        memory_mb=1024,
        bytes_in=3,
        bytes_out=4,
    )


class FlakyRepository(MemoryMeteringRepository):
    """Fails the next `failures` writes, as a database that is down would."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the database is unavailable: down")
        await super().add_usage(deltas)


def test_flushes_land_in_the_repository_once_and_a_failed_one_is_retried() -> None:
    async def main() -> None:
        repo = FlakyRepository()
        metering = Metering(repo, Prices(), lambda: NOW, flush_interval_s=3600)
        await metering.start()
        try:
            metering.observe(outcome())
            metering.observe(outcome(code="handler_error"))
            repo.failures = 1
            with pytest.raises(StoreUnavailable):
                await metering.flush()
            assert await repo.usage_by_hour(0, 2**62) == []
            metering.observe(outcome("g"))
        finally:
            await metering.stop()  # the deltas of the failed flush, and g's
        rows = await repo.usage_by_hour(0, 2**62)
        assert [(r.function, r.hour, r.invocations, r.errors) for r in rows] == [
            ("f", HOUR, 2, 1),
            ("g", HOUR, 1, 0),
        ]
        assert (rows[0].gb_seconds, rows[0].cpu_seconds, rows[0].wall_seconds) == (1.0, 0.5, 1.0)
        assert (rows[0].bytes_in, rows[0].bytes_out, rows[0].peak_rss_mb) == (6, 8, 30.0)

    asyncio.run(main())


def test_start_loads_quotas_and_the_months_usage_from_the_repository() -> None:
    async def main() -> None:
        repo = MemoryMeteringRepository()
        start, _ = month_bounds(NOW)
        await repo.add_usage(
            [
                UsageDelta("default", "f", int(start), 2, 0, 0.5, 0.0, 0.5, 0, 0, 0.0),
                UsageDelta("default", "f", int(start) - 3600, 50, 0, 9.0, 0.0, 9.0, 0, 0, 0.0),
            ]
        )
        await repo.set_quota("default", Quota(invocations=3), now=1.0)
        metering = Metering(repo, Prices(), lambda: NOW, flush_interval_s=3600)
        await metering.start()
        try:
            metering.admit("default")  # 2 of 3 used (last month's 50 do not count)
            metering.observe(outcome())
            with pytest.raises(TooManyRequests):
                metering.admit("default")
            assert metering.quota_view("default")["used"]["invocations"] == 3
            await metering.set_quota("default", Quota())
            metering.admit("default")
            assert await repo.all_quotas() == {}
        finally:
            await metering.stop()

    asyncio.run(main())
