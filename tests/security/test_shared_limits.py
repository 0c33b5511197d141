"""Rate limits and namespace concurrency across gateways (security/shared_limits.py).

Two or three "gateways" here are limiters and quotas of their own, each with its own
synchronizer, sharing one `MemoryLimitRepository`; one fake clock drives the buckets, the
repository's windows and expiries. No sleeps: each test calls `sync_once` where the
background task would.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cumulo.security.ratelimit import ConcurrencyQuota, Rate, RateLimiter
from cumulo.security.shared_limits import INTERVAL_S, TTL_S, SharedLimits, limit_key
from cumulo.store.limits import LimitRepository
from cumulo.store.memory_limits import MemoryLimitRepository
from cumulo.store.sqlite_limits import SQLiteLimitRepository


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Gateway:
    def __init__(self, name: str, repo: LimitRepository, clock: Clock, concurrency: int = 0):
        self.keys = RateLimiter(clock)
        self.functions = RateLimiter(clock)
        self.quota = ConcurrencyQuota(concurrency)
        self.sync = SharedLimits(repo, name, {"key": self.keys, "fn": self.functions}, self.quota)


def simulate(gateways: list[Gateway], clock: Clock, rate: Rate, seconds: float) -> list[int]:
    """Every gateway offers a request every 10 ms (far over the rate) for `seconds`, and
    synchronizes every INTERVAL_S; the 200s each one gave."""
    admitted = [0] * len(gateways)
    step = 0.01
    per_sync = round(INTERVAL_S / step)

    async def main() -> None:
        for tick in range(round(seconds / step)):
            for i, gateway in enumerate(gateways):
                if gateway.functions.take(("ns", "f"), rate) == 0.0:
                    admitted[i] += 1
            if tick % per_sync == per_sync - 1:
                for gateway in gateways:
                    await gateway.sync.sync_once()
            clock.now += step

    asyncio.run(main())
    return admitted


@pytest.mark.parametrize("count", [2, 3])
def test_gateways_sharing_a_store_admit_about_one_limit_not_n(count: int) -> None:
    clock = Clock()
    repo = MemoryLimitRepository(clock)
    gateways = [Gateway(f"g{i}", repo, clock) for i in range(count)]
    rate = Rate(per_s=10, burst=10)
    seconds = 10.0
    admitted = simulate(gateways, clock, rate, seconds)
    alone = rate.burst + rate.per_s * seconds  # what one bucket admits: 110
    # The documented bound: (gateways - 1) x (burst + rate x interval) over one bucket.
    bound = alone + (count - 1) * (rate.burst + rate.per_s * INTERVAL_S)
    assert alone - 2 <= sum(admitted) <= bound, admitted
    assert all(a > 0 for a in admitted)  # every gateway gets its share


def test_without_a_shared_store_each_gateway_admits_its_own_limit() -> None:
    """The baseline the synchronizer removes: two unsynchronized gateways admit 2x."""
    clock = Clock()
    one, two = RateLimiter(clock), RateLimiter(clock)
    rate = Rate(per_s=10, burst=10)
    admitted = 0
    for _ in range(1000):
        admitted += (one.take("k", rate) == 0.0) + (two.take("k", rate) == 0.0)
        clock.now += 0.01
    assert 2 * (10 + 100) - 4 <= admitted <= 2 * (10 + 100)  # float steps of the clock
    assert one.used is None  # counting is off: the hot path pays nothing


def test_what_others_spent_is_charged_to_this_gateways_bucket() -> None:
    clock = Clock()
    repo = MemoryLimitRepository(clock)
    one, two = Gateway("one", repo, clock), Gateway("two", repo, clock)
    rate = Rate(per_s=1, burst=5)

    async def main() -> None:
        assert two.keys.take("key-1", rate) == 0.0  # two has a bucket for the key
        for _ in range(5):
            assert one.keys.take("key-1", rate) == 0.0
        assert await one.sync.sync_once()
        assert await two.sync.sync_once()
        # Five tokens gone on one: two's bucket (4 left) is now at -1, two seconds from one.
        assert two.keys.take("key-1", rate) == pytest.approx(2.0)
        clock.now += 2.0
        assert two.keys.take("key-1", rate) == 0.0
        # Nothing new on one: a later exchange charges nothing more.
        assert await two.sync.sync_once()
        clock.now += 1.0
        assert two.keys.take("key-1", rate) == 0.0

    asyncio.run(main())


def test_namespace_concurrency_holds_across_gateways() -> None:
    clock = Clock()
    repo = MemoryLimitRepository(clock)
    one, two = Gateway("one", repo, clock, 4), Gateway("two", repo, clock, 4)

    async def main() -> None:
        for _ in range(3):
            assert one.quota.enter("team")
        assert await one.sync.sync_once()
        assert await two.sync.sync_once()
        assert two.quota.others == {"team": 3}
        assert two.quota.enter("team")
        assert not two.quota.enter("team")  # 3 on one + 1 here: the limit of 4
        assert two.quota.enter("other")  # another namespace is not affected
        one.quota.leave("team")
        assert await one.sync.sync_once()
        assert await two.sync.sync_once()
        assert two.quota.enter("team")

    asyncio.run(main())


def test_a_dead_gateways_inflight_invocations_expire() -> None:
    clock = Clock()
    repo = MemoryLimitRepository(clock)
    dead, alive = Gateway("dead", repo, clock, 2), Gateway("alive", repo, clock, 2)

    async def main() -> None:
        assert dead.quota.enter("team")
        assert dead.quota.enter("team")
        assert await dead.sync.sync_once()  # its last exchange: then it is killed
        assert await alive.sync.sync_once()
        assert not alive.quota.enter("team")
        clock.now += TTL_S - 0.5
        assert await alive.sync.sync_once()
        assert not alive.quota.enter("team")  # still within its rows' expiry
        clock.now += 1.0
        assert await alive.sync.sync_once()
        assert alive.quota.others == {}
        assert alive.quota.enter("team")
        assert alive.quota.enter("team")

    asyncio.run(main())


def test_a_gateway_that_stops_withdraws_its_inflight_rows() -> None:
    clock = Clock()
    repo = MemoryLimitRepository(clock)
    one, two = Gateway("one", repo, clock, 1), Gateway("two", repo, clock, 1)

    async def main() -> None:
        assert one.quota.enter("team")
        assert await one.sync.sync_once()
        await one.sync.stop()
        assert await two.sync.sync_once()
        assert two.quota.enter("team")

    asyncio.run(main())


def test_an_unreachable_store_falls_back_to_local_limits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real SQLite backend whose directory is missing, then created: requests keep their
    local limits throughout, with one log line each way."""
    caplog.set_level(logging.INFO, logger="cumulo")
    clock = Clock()
    memory = MemoryLimitRepository(clock)
    other = Gateway("other", memory, clock, 2)
    here = tmp_path / "shared"
    gateway = Gateway("here", SQLiteLimitRepository(here / "limits.db"), clock, 2)
    gateway.quota.others = {"team": 2}  # as a last good exchange left it
    rate = Rate(per_s=1, burst=2)

    async def main() -> None:
        assert gateway.keys.take("k", rate) == 0.0
        assert not await gateway.sync.sync_once()
        assert not await gateway.sync.sync_once()
        assert gateway.quota.others == {}  # local only: nothing counts the others
        assert gateway.quota.enter("team")
        assert gateway.keys.take("k", rate) == 0.0  # the local bucket still decides
        assert gateway.keys.take("k", rate) > 0
        here.mkdir()
        assert await gateway.sync.sync_once()
        await gateway.sync.stop()
        await other.sync.stop()

    asyncio.run(main())
    warnings = [r for r in caplog.records if "shared limits unavailable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not once per exchange
    assert any("shared limits available again" in r.getMessage() for r in caplog.records)


def test_after_an_outage_the_others_past_spending_is_not_charged() -> None:
    clock = Clock()
    repo = MemoryLimitRepository(clock)
    one, two = Gateway("one", repo, clock), Gateway("two", repo, clock)
    rate = Rate(per_s=1, burst=3)

    async def main() -> None:
        assert two.keys.take("k", rate) == 0.0
        assert await two.sync.sync_once()
        two.sync._seen = None  # as a failed exchange leaves it
        for _ in range(3):
            assert one.keys.take("k", rate) == 0.0
        assert await one.sync.sync_once()
        assert await two.sync.sync_once()  # learns the others' rows, charges nothing
        assert two.keys.take("k", rate) == 0.0

    asyncio.run(main())


def test_limit_keys_name_the_limiter_and_round_trip() -> None:
    assert limit_key("key", "abc123") == 'key:"abc123"'
    assert limit_key("fn", ("team", "hello")) == 'fn:["team","hello"]'
    with pytest.raises(ValueError, match="prefixes"):
        SharedLimits(MemoryLimitRepository(), "g", {"a:b": RateLimiter()}, ConcurrencyQuota(0))


def test_a_key_without_a_local_bucket_is_not_charged() -> None:
    clock = Clock()
    repo = MemoryLimitRepository(clock)
    one, two = Gateway("one", repo, clock), Gateway("two", repo, clock)
    rate = Rate(per_s=1, burst=2)

    async def main() -> None:
        assert one.functions.take(("ns", "f"), rate) == 0.0
        assert await one.sync.sync_once()
        assert await two.sync.sync_once()
        # two never served it: its first request starts from a full burst (documented).
        assert two.functions.take(("ns", "f"), rate) == 0.0
        assert two.functions.take(("ns", "f"), rate) == 0.0

    asyncio.run(main())


def test_a_gateway_with_no_limit_in_use_skips_the_exchange(tmp_path: Path) -> None:
    """No bucket, no quota: nothing is written (a store that cannot be reached is not even
    tried), so gateways without limits cost the store nothing."""
    clock = Clock()
    idle = Gateway("idle", SQLiteLimitRepository(tmp_path / "missing" / "limits.db"), clock)

    async def main() -> None:
        assert await idle.sync.sync_once()
        assert idle.sync.healthy
        idle.keys.take("k", Rate(per_s=1, burst=1))
        assert not await idle.sync.sync_once()  # a bucket now: it exchanges

    asyncio.run(main())
    assert not (tmp_path / "missing").exists()
