"""The shared-limits seam: what several gateways on one store tell each other so that rate
limits and namespace concurrency hold platform-wide, not once per gateway.

Nothing here is on a request's path: each gateway keeps its token buckets and in-flight
counters in memory (`cumulo.security.ratelimit`) and a background synchronizer
(`cumulo.security.shared_limits`) calls `exchange` every ~100 ms. One small async
interface, `LimitRepository`, whose contract is written here, and several implementations
held to one conformance suite (tests/store/test_limits_conformance.py):

- `cumulo.store.sqlite_limits.SQLiteLimitRepository`: its own small WAL database
  (`limits.db` in the data dir), shared by the gateways of one machine;
- `cumulo.store.postgres_limits.PostgresLimitRepository`: PostgreSQL (migration 12),
  shared by gateways on many machines, on the database clock (`PostgresStore.limits`);
- `cumulo.store.memory_limits.MemoryLimitRepository`: an in-memory fake for tests.

What is stored, and why it stays bounded:

- usage: tokens taken per (limit key, window, gateway), a window being WINDOW_S seconds of
  the repository's clock. Only the current and the previous window are kept (older rows
  are deleted by any exchange), so the rows are at most keys x gateways x 2 whatever a
  tenant does; limit keys are only those of admitted requests (authenticated API keys,
  deployed functions), each at most MAX_NAME characters.
- in flight: one row per (gateway, namespace) with a count above zero and an expiry
  `ttl_s` after the exchange that wrote it; each exchange replaces the gateway's rows, so
  a live gateway keeps them fresh and a dead one's disappear once they expire.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`
(503 `store_unavailable`); bad input raises `ValueError` and writes nothing.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

__all__ = [
    "KEEP_WINDOWS",
    "MAX_NAME",
    "WINDOW_S",
    "LimitExchange",
    "LimitRepository",
    "LimitTotals",
    "check_exchange",
    "window_of",
]

Clock = Callable[[], float]

WINDOW_S = 5.0  # seconds per usage window
KEEP_WINDOWS = 2  # the current window and the one before it: 5 to 10 s of history
MAX_NAME = 1000  # characters in a gateway id, a limit key or a namespace
INT64_MAX = 2**63 - 1


def window_of(now: float) -> int:
    """The usage window `now` (epoch seconds) falls in."""
    return math.floor(now / WINDOW_S)


@dataclass(frozen=True, slots=True)
class LimitExchange:
    """What one gateway reports: `used`, tokens taken per limit key since its previous
    exchange (added to the current window); `inflight`, its in-flight invocations per
    namespace now (complete: a namespace absent or at 0 has none); `ttl_s`, how long its
    in-flight rows count if it never reports again."""

    gateway: str
    used: Mapping[str, int] = field(default_factory=dict)
    inflight: Mapping[str, int] = field(default_factory=dict)
    ttl_s: float = 5.0


@dataclass(frozen=True, slots=True)
class LimitTotals:
    """What the *other* gateways report: `used`, their tokens per (limit key, window) for
    the windows kept; `inflight`, their unexpired in-flight invocations per namespace.
    Keys with nothing are absent."""

    used: dict[tuple[str, int], int]
    inflight: dict[str, int]


def check_exchange(report: LimitExchange) -> None:
    """The contract's ValueError for bad input, the same on every backend."""
    if not report.gateway or len(report.gateway) > MAX_NAME:
        raise ValueError(f"a gateway id must be 1 to {MAX_NAME} characters")
    if not (math.isfinite(report.ttl_s) and 0 <= report.ttl_s <= 3600):
        raise ValueError("ttl_s must be between 0 and 3600 seconds")
    for what, counts in (("limit key", report.used), ("namespace", report.inflight)):
        for name, count in counts.items():
            if not name or len(name) > MAX_NAME:
                raise ValueError(f"a {what} must be 1 to {MAX_NAME} characters")
            if not isinstance(count, int) or not 0 <= count <= INT64_MAX:
                raise ValueError(f"the count of {what} {name!r} must be an integer >= 0")


class LimitRepository(abc.ABC):
    """Where gateways sharing a store exchange their limit usage.

    `exchange` is one atomic step per call; gateways write only their own rows, so
    concurrent exchanges from several gateways never wait for each other's rows."""

    @abc.abstractmethod
    async def exchange(self, report: LimitExchange) -> LimitTotals:
        """Add `report.used` to this gateway's rows of the current window, replace its
        in-flight rows by `report.inflight` (counts above zero, expiring `ttl_s` from now;
        `ttl_s` 0: already expired for every later reader), delete rows older than the
        windows kept and expired in-flight rows (of any gateway), and return what the other
        gateways reported (`LimitTotals`), this gateway's own rows excluded. The same
        report sent twice counts its `used` twice (the caller sends each delta once)."""

    @abc.abstractmethod
    async def leave(self, gateway: str) -> None:
        """Delete the gateway's in-flight rows (a clean shutdown: its invocations are
        over). Its usage stays until its windows age out: those tokens were spent."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds (a connection); a no-op when it owns nothing."""
        return None

    async def __aenter__(self) -> LimitRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
