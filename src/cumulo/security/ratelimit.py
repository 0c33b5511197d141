"""Token buckets for rate limits, and counters for concurrency quotas.

Plain in-memory objects with an injectable clock, so tests drive time instead of sleeping.
With several gateways on one store, `cumulo.security.shared_limits` makes them hold
platform-wide: it reads what this gateway took (`RateLimiter.used`, `ConcurrencyQuota.
inflight`) and feeds back what the others took (`RateLimiter.charge`, `ConcurrencyQuota.
others`), in the background; a request never waits for it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_s` tokens a second, at most `burst` at once; per_s == 0 means unlimited."""

    per_s: float
    burst: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """`100/s`, `6000/m`, `100/s:200` (burst after the colon; default: one second's worth)."""
        spec, _, burst_text = text.partition(":")
        count_text, _, unit = spec.partition("/")
        seconds = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(unit or "s")
        try:
            count = float(count_text)
            burst = float(burst_text) if burst_text else None
        except ValueError:
            seconds = None
        if seconds is None or count < 0 or (burst is not None and burst < 1):
            raise ValueError(f"invalid rate {text!r}: use e.g. 100/s, 6000/m or 100/s:200")
        per_s = count / seconds
        return cls(per_s=per_s, burst=burst if burst is not None else max(1.0, per_s))

    @property
    def unlimited(self) -> bool:
        return self.per_s <= 0


class TokenBucket:
    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        rate = self.rate
        self.tokens = min(rate.burst, self.tokens + (now - self.stamp) * rate.per_s)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate.per_s

    def charge(self, tokens: float, now: float) -> None:
        """Take `tokens` other gateways took: the bucket may go below zero, and then
        refills from there (the others' share is paid back before this gateway's next)."""
        self.tokens = min(self.rate.burst, self.tokens + (now - self.stamp) * self.rate.per_s)
        self.stamp = now
        self.tokens -= tokens


class RateLimiter:
    """One bucket per key (an API key id, a function), the least recently used evicted."""

    def __init__(self, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[object, TokenBucket] = OrderedDict()
        # Tokens taken per key since the synchronizer last read them; None (a gateway that
        # shares its store with no other): not counted, the hot path pays nothing.
        self.used: dict[object, int] | None = None

    def take(self, key: object, rate: Rate) -> float:
        if rate.unlimited:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[key] = TokenBucket(rate, now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(now)
        if wait == 0.0 and self.used is not None:
            self.used[key] = self.used.get(key, 0) + 1
        return wait

    def __len__(self) -> int:
        """How many keys have a bucket."""
        return len(self._buckets)

    def charge(self, key: object, tokens: int) -> None:
        """Take `tokens` other gateways took from `key`'s bucket. A key this gateway has
        no bucket for is skipped: its first request starts from a full burst."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.charge(tokens, self._clock())


class ConcurrencyQuota:
    """In-flight invocations per namespace, capped (`others`: what other gateways on the
    same store have in flight, as last synchronized; empty for a gateway on its own)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight: dict[str, int] = {}
        self.others: dict[str, int] = {}

    def enter(self, namespace: str) -> bool:
        current = self.inflight.get(namespace, 0)
        if self.limit and current + self.others.get(namespace, 0) >= self.limit:
            return False
        self.inflight[namespace] = current + 1
        return True

    def leave(self, namespace: str) -> None:
        current = self.inflight.get(namespace, 0) - 1
        if current > 0:
            self.inflight[namespace] = current
        else:
            self.inflight.pop(namespace, None)
