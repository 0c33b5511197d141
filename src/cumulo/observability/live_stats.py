"""Live per-second invocation statistics for the dashboard, kept in bounded memory.

An Outcome observer: each function gets a ring of `window` one-second buckets. A bucket
holds the invocation, error and cold-start counts of its second and a latency histogram
(log-spaced bins), so recording an invocation is O(1): find the bucket by the second it
finished in, reset it if it still holds an older second, bump four numbers. Percentiles
are computed only when the dashboard reads (from the histograms, to within a bin: about
±9% of the value), never on the invocation path.

Memory per function: window × (4 + BINS) 32-bit counters (300 × 103 × 4 B ≈ 124 KB), taken
on the function's first invocation; at most MAX_FUNCTIONS functions are tracked (≈ 8 MB at
worst, a tenth of the gateway's 80 MB budget), the least recently active dropped first.
"""

from __future__ import annotations

import bisect
import math
import time
from array import array
from collections.abc import Callable
from typing import Any

from cumulo.observability.outcomes import Outcome

WINDOW_S = 300
MAX_FUNCTIONS = 64
# Latency bin upper edges in milliseconds: 4 per doubling from 0.05 ms to ~ 14 min. A
# duration above the last edge lands in a final overflow bin reported as the last edge.
_EDGES: tuple[float, ...] = tuple(0.05 * 2 ** (i / 4) for i in range(98))
BINS = len(_EDGES) + 1
# Per bucket, in one flat array: [second, count, errors, cold, bin 0 .. bin BINS-1].
_HEAD = 4
_STRIDE = _HEAD + BINS
PERCENTILES = (50, 95, 99)


class _Ring:
    __slots__ = ("cells", "last")

    def __init__(self, window: int) -> None:
        # Second 0 marks a bucket never used (no invocation finishes in 1970).
        self.cells = array("I", bytes(4 * window * _STRIDE))
        self.last = 0


class LiveStats:
    def __init__(
        self,
        window: int = WINDOW_S,
        max_functions: int = MAX_FUNCTIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.max_functions = max_functions
        self.clock = clock
        self._rings: dict[tuple[str, str], _Ring] = {}

    # ------------------------------------------------------------ invocation path
    def observe(self, outcome: Outcome) -> None:
        """Record one finished invocation (an OutcomeObserver: cheap, never raises)."""
        key = (outcome.namespace, outcome.function)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._new_ring(key)
        second = int(outcome.started_at + outcome.duration_s)
        ring.last = second
        cells = ring.cells
        base = (second % self.window) * _STRIDE
        if cells[base] != second:
            if cells[base] > second:
                return  # older than the window this bucket now holds: dropped
            cells[base : base + _STRIDE] = _EMPTY
            cells[base] = second
        cells[base + 1] += 1
        if outcome.status >= 400:
            cells[base + 2] += 1
        if outcome.cold:
            cells[base + 3] += 1
        cells[base + _HEAD + bisect.bisect_left(_EDGES, outcome.duration_s * 1000.0)] += 1

    def _new_ring(self, key: tuple[str, str]) -> _Ring:
        if len(self._rings) >= self.max_functions:
            idle = min(self._rings, key=lambda k: self._rings[k].last)
            del self._rings[idle]
        ring = self._rings[key] = _Ring(self.window)
        return ring

    # ------------------------------------------------------------ dashboard reads
    def series(self, namespace: str, function: str, window: int | None = None) -> dict[str, Any]:
        """The last `window` seconds (oldest first, ending with the current second), one
        bucket per second, plus totals over the whole window."""
        window = min(self.window, max(1, window or self.window))
        now = int(self.clock())
        ring = self._rings.get((namespace, function))
        buckets: list[dict[str, Any]] = []
        total_bins = [0] * BINS
        count = errors = cold = 0
        for second in range(now - window + 1, now + 1):
            row: dict[str, Any] = {"t": second, "count": 0, "errors": 0, "cold": 0}
            row.update(dict.fromkeys(_PNAMES))
            if ring is not None:
                base = (second % self.window) * _STRIDE
                cells = ring.cells
                if cells[base] == second and cells[base + 1]:
                    bins = cells[base + _HEAD : base + _STRIDE]
                    row["count"] = cells[base + 1]
                    row["errors"] = cells[base + 2]
                    row["cold"] = cells[base + 3]
                    row.update(_percentiles(bins, cells[base + 1]))
                    count += row["count"]
                    errors += row["errors"]
                    cold += row["cold"]
                    for i, n in enumerate(bins):
                        if n:
                            total_bins[i] += n
            buckets.append(row)
        total: dict[str, Any] = {"count": count, "errors": errors, "cold": cold}
        total.update(_percentiles(total_bins, count) if count else dict.fromkeys(_PNAMES))
        return {"window": window, "now": now, "buckets": buckets, "total": total}


_EMPTY = array("I", bytes(4 * _STRIDE))
_PNAMES = tuple(f"p{p}_ms" for p in PERCENTILES)


def _percentiles(bins: Any, count: int) -> dict[str, float]:
    """Nearest-rank percentiles from a histogram: each reported as its bin's geometric
    middle (the first bin: its upper edge; the overflow bin: the last edge)."""
    out: dict[str, float] = {}
    targets = [
        (name, max(1, -(-p * count // 100))) for name, p in zip(_PNAMES, PERCENTILES, strict=True)
    ]
    seen = 0
    t = 0
    for i, n in enumerate(bins):
        if not n:
            continue
        seen += n
        while t < len(targets) and seen >= targets[t][1]:
            out[targets[t][0]] = round(_middle(i), 3)
            t += 1
        if t == len(targets):
            break
    return out


def _middle(i: int) -> float:
    if i == 0:
        return _EDGES[0]
    if i >= len(_EDGES):
        return _EDGES[-1]
    return math.sqrt(_EDGES[i - 1] * _EDGES[i])
