"""`LimitRepository` in memory: a fake for tests (no database, no thread), held to the same
conformance suite as the real backends; `clock` drives its windows and expiries."""

from __future__ import annotations

import time

from cumulo.store.limits import (
    KEEP_WINDOWS,
    Clock,
    LimitExchange,
    LimitRepository,
    LimitTotals,
    check_exchange,
    window_of,
)


class MemoryLimitRepository(LimitRepository):
    """Rows in dicts. `exchange` runs without awaiting, so it is atomic on its event loop."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._used: dict[tuple[str, int, str], int] = {}  # (key, window, gateway) -> tokens
        self._inflight: dict[tuple[str, str], tuple[int, float]] = {}  # -> (count, expires)

    async def exchange(self, report: LimitExchange) -> LimitTotals:
        check_exchange(report)
        now = self._clock()
        window = window_of(now)
        oldest = window - KEEP_WINDOWS + 1
        gateway = report.gateway
        for old in [row for row in self._used if row[1] < oldest]:
            del self._used[old]
        for expired in [row for row, (_, exp) in self._inflight.items() if exp <= now]:
            del self._inflight[expired]
        for key, count in report.used.items():
            if count:
                row = (key, window, gateway)
                self._used[row] = self._used.get(row, 0) + count
        for mine in [row for row in self._inflight if row[0] == gateway]:
            del self._inflight[mine]
        for namespace, count in report.inflight.items():
            if count:
                self._inflight[(gateway, namespace)] = (count, now + report.ttl_s)
        used: dict[tuple[str, int], int] = {}
        for (key, win, owner), count in self._used.items():
            if owner != gateway:
                used[(key, win)] = used.get((key, win), 0) + count
        inflight: dict[str, int] = {}
        for (owner, namespace), (count, _) in self._inflight.items():
            if owner != gateway:
                inflight[namespace] = inflight.get(namespace, 0) + count
        return LimitTotals(used, inflight)

    async def leave(self, gateway: str) -> None:
        for row in [row for row in self._inflight if row[0] == gateway]:
            del self._inflight[row]
