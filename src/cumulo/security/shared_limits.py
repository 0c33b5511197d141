"""Rate limits and namespace concurrency held platform-wide by gateways sharing a store.

Each gateway still decides every request in memory (`cumulo.security.ratelimit`); this
synchronizer, one asyncio task per gateway and only when the store is shared, exchanges
with the others every `interval_s` through a `LimitRepository`:

- rates: it reports the tokens this gateway's buckets gave out since the last exchange
  and takes the tokens the other gateways gave out since then from this gateway's buckets
  of the same keys (`RateLimiter.charge`). Every gateway's bucket so refills at the rate
  less what the whole platform spent, and the platform as a whole admits about one bucket
  (rate x time + burst), not one per gateway.
- concurrency: it reports this gateway's in-flight invocations per namespace (a row that
  expires `ttl_s` later unless refreshed) and hands the others' sum to the quota
  (`ConcurrencyQuota.others`), which admits while its own plus the others' stay under the
  limit. A gateway that dies stops refreshing its rows; they count until they expire.

Accuracy (docs/auth.md, "Rate limits"): what the others admitted during the last interval
is not yet known, so the platform admits at most (gateways - 1) x rate x interval more
than one bucket would in steady state, and at most (gateways - 1) x burst more when a
burst reaches every gateway within one interval (or a gateway meets a key for the first
time: its bucket starts full). The overshoot does not accumulate: it is charged back at
the next exchange. When the store cannot be reached the gateway falls back to its local
limits (one log line, and one when it is back); requests never fail because of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping

import orjson

from cumulo.security.ratelimit import ConcurrencyQuota, RateLimiter
from cumulo.store.limits import MAX_NAME, LimitExchange, LimitRepository
from cumulo.tasks import cancel_and_wait

__all__ = ["SharedLimits", "limit_key", "new_gateway_id"]

log = logging.getLogger("cumulo")

INTERVAL_S = 0.1
TTL_S = 5.0  # a dead gateway's in-flight invocations stop counting this long after


def new_gateway_id() -> str:
    """This process's id among the gateways sharing a store: host, pid and a random part
    (a pid reused after a restart must not inherit the dead process's rows)."""
    return f"{socket.gethostname()[:200]}/{os.getpid()}/{secrets.token_hex(4)}"


def limit_key(prefix: str, key: object) -> str:
    """The name a limiter's key has in the store: `prefix:` and the key as JSON (API key
    ids are strings, functions (namespace, name) tuples, which come back as lists)."""
    return f"{prefix}:{orjson.dumps(key).decode()}"


def _local_key(text: str) -> object:
    value = orjson.loads(text)
    return tuple(value) if isinstance(value, list) else value


class SharedLimits:
    """The synchronizer of one gateway (`gateway`: its id, unique among those sharing the
    store). `limiters` by prefix ("key", "fn"): the same prefixes on every gateway.
    `sync_once` is one exchange (tests call it directly); `start` runs it every
    `interval_s` until `stop`."""

    def __init__(
        self,
        repo: LimitRepository,
        gateway: str,
        limiters: Mapping[str, RateLimiter],
        quota: ConcurrencyQuota,
        *,
        interval_s: float = INTERVAL_S,
        ttl_s: float = TTL_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if any(not p or ":" in p for p in limiters):
            raise ValueError("limiter prefixes must be non-empty and contain no ':'")
        self.repo = repo
        self.gateway = gateway
        self.limiters = dict(limiters)
        self.quota = quota
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self._sleep = sleep
        for limiter in self.limiters.values():
            limiter.used = {}  # from now on the buckets count what they give out
        # What the others had reported per (key, window) at the last exchange; None: the
        # next exchange only learns it (at start, and after an outage, nothing is charged
        # for what was spent before: those tokens were already paid for or forgotten).
        self._seen: dict[tuple[str, int], int] | None = {}
        self.healthy = True
        self._task: asyncio.Task[None] | None = None

    def _drain(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for prefix, limiter in self.limiters.items():
            taken, limiter.used = limiter.used or {}, {}
            for key, count in taken.items():
                name = limit_key(prefix, key)
                if len(name) <= MAX_NAME:  # longer ones stay local (none are, today)
                    used[name] = used.get(name, 0) + count
        return used

    async def sync_once(self) -> bool:
        """One exchange; False when the store could not be reached (then every limit is
        this gateway's alone until an exchange succeeds)."""
        used = self._drain()
        if not used and not self.quota.limit and not any(map(len, self.limiters.values())):
            return True  # no limit in use here: nothing to report, nothing to charge
        report = LimitExchange(self.gateway, used, dict(self.quota.inflight), self.ttl_s)
        try:
            totals = await self.repo.exchange(report)
        except Exception as exc:
            # What this gateway spent meanwhile is not reported later: once back, charging
            # the others for a whole outage at once would starve them.
            self.quota.others = {}
            self._seen = None
            if self.healthy:
                self.healthy = False
                log.warning(
                    "shared limits unavailable, enforcing this gateway's own limits: %s", exc
                )
            return False
        self.quota.others = totals.inflight
        if self._seen is not None:
            for (name, window), count in totals.used.items():
                spent = count - self._seen.get((name, window), 0)
                if spent > 0:
                    self._charge(name, spent)
        self._seen = totals.used
        if not self.healthy:
            self.healthy = True
            log.info("shared limits available again: limits hold across gateways")
        return True

    def _charge(self, name: str, tokens: int) -> None:
        prefix, _, text = name.partition(":")
        limiter = self.limiters.get(prefix)
        if limiter is None:
            return  # a limiter this version does not have
        try:
            key = _local_key(text)
        except orjson.JSONDecodeError:
            return
        with contextlib.suppress(TypeError):  # an unhashable key: not one of ours
            limiter.charge(key, tokens)

    async def _run(self) -> None:
        while True:
            await self._sleep(self.interval_s)
            await self.sync_once()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop exchanging and withdraw this gateway's in-flight rows (best effort: rows
        left behind expire after `ttl_s`)."""
        await cancel_and_wait(self._task)
        self._task = None
        with contextlib.suppress(Exception):
            await self.repo.leave(self.gateway)
        with contextlib.suppress(Exception):
            await self.repo.aclose()
