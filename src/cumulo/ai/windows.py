"""Counting what the gateway sees, cheaply, for the forecaster and the anomaly detector.

Both are fed by observers (observability.outcomes) that run inside each request: they do a
dict lookup and a few increments, never I/O, never a lock. The heavy work (fitting, scoring)
happens on closed buckets and windows, in the sidecar process (cumulo.ai.sidecar).

- `ArrivalWindows`: per function, invocations per fixed bucket (epoch-aligned, so every
  gateway cuts buckets at the same instants), plus the recent mean duration and cold-start
  time the pre-warmer needs to turn a rate into workers.
- `UsageWindows`: per caller (API key, or the source address of an anonymous denial) and
  per function, what happened in the current window: requests, server errors, auth
  failures, distinct functions touched (callers) or distinct callers (functions), latency.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass

from cumulo.observability.outcomes import Denial, Outcome

EWMA = 0.1  # weight of a new duration sample in the running means


class ArrivalSeries:
    """One function's arrival counts: `history` holds closed buckets, oldest first."""

    __slots__ = ("bucket", "cold_s", "count", "history", "mean_duration_s")

    def __init__(self, bucket: int, max_buckets: int) -> None:
        self.bucket = bucket  # the open bucket's index
        self.count = 0
        self.history: deque[int] = deque(maxlen=max_buckets)
        self.mean_duration_s = 0.0
        self.cold_s = 0.0  # running mean wall time of cold invocations (a cold start, bounded)

    def roll_to(self, bucket: int) -> None:
        """Close every bucket before `bucket` (empty ones included)."""
        if bucket <= self.bucket:
            return
        self.history.append(self.count)
        gap = min(bucket - self.bucket - 1, self.history.maxlen or 0)
        if gap:
            self.history.extend(itertools.repeat(0, gap))
        self.bucket, self.count = bucket, 0

    @property
    def active(self) -> bool:
        return bool(self.count) or any(self.history)


class ArrivalWindows:
    def __init__(self, bucket_s: float, max_buckets: int) -> None:
        self.bucket_s = bucket_s
        self.max_buckets = max_buckets
        self.series: dict[tuple[str, str], ArrivalSeries] = {}

    def bucket_of(self, t: float) -> int:
        return math.floor(t / self.bucket_s)

    def observe(self, outcome: Outcome) -> None:
        """The outcome observer: O(1), allocation-light."""
        key = (outcome.namespace, outcome.function)
        bucket = math.floor(outcome.started_at / self.bucket_s)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = ArrivalSeries(bucket, self.max_buckets)
        elif bucket > series.bucket:
            series.roll_to(bucket)
        if bucket >= series.bucket or not series.history:
            series.count += 1
        elif bucket == series.bucket - 1:
            series.history[-1] += 1  # started in the bucket just closed, finished after it
        else:
            series.count += 1  # a long invocation: counted where it ended
        if outcome.cold:
            series.cold_s += (outcome.duration_s - series.cold_s) * (EWMA if series.cold_s else 1.0)
        else:
            series.mean_duration_s += (outcome.duration_s - series.mean_duration_s) * (
                EWMA if series.mean_duration_s else 1.0
            )

    def close_until(self, now: float) -> int:
        """Close every bucket before the one `now` falls in; forget series idle for a whole
        history. Returns the open bucket's index."""
        bucket = self.bucket_of(now)
        for key, series in list(self.series.items()):
            series.roll_to(bucket)
            if not series.active:
                del self.series[key]
        return bucket


class Usage:
    """One entity's counters in the open window."""

    __slots__ = ("denials", "errors", "latency_s", "namespace", "others", "requests")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.requests = 0
        self.errors = 0  # 5xx: the function failed, timed out or crashed
        self.denials = 0  # 401/403
        self.latency_s = 0.0
        # Functions (namespace, name) a caller touched; key ids that called a function.
        self.others: set[str | tuple[str, str]] = set()


@dataclass(frozen=True, slots=True)
class UsageRow:
    """A closed window of one entity, as the detector sees it."""

    kind: str  # "caller" (API key or anonymous source) or "function"
    entity: str  # key id, "source:ADDR" or "namespace/function"
    namespace: str  # who may see an alert about it ("*": the platform admin only)
    requests: int
    errors: int
    denials: int
    distinct: int
    latency_ms: float

    def to_wire(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "entity": self.entity,
            "namespace": self.namespace,
            "requests": self.requests,
            "errors": self.errors,
            "denials": self.denials,
            "distinct": self.distinct,
            "latency_ms": self.latency_ms,
        }


class UsageWindows:
    def __init__(self) -> None:
        self.callers: dict[str, Usage] = {}
        self.functions: dict[tuple[str, str], Usage] = {}

    def observe(self, outcome: Outcome) -> None:
        """The outcome observer."""
        key = (outcome.namespace, outcome.function)
        fn = self.functions.get(key)
        if fn is None:
            fn = self.functions[key] = Usage(outcome.namespace)
        fn.requests += 1
        fn.latency_s += outcome.duration_s
        failed = outcome.status >= 500
        fn.errors += failed
        if outcome.key_id is None:
            return
        fn.others.add(outcome.key_id)
        caller = self.callers.get(outcome.key_id)
        if caller is None:
            # The key's own namespace is filled in when the window closes (keys are few).
            caller = self.callers[outcome.key_id] = Usage("")
        caller.requests += 1
        caller.latency_s += outcome.duration_s
        caller.errors += failed
        caller.others.add(key)

    def deny(self, denial: Denial) -> None:
        """The denial observer: a known key's failures count against the key, anonymous
        ones against their source address."""
        entity = denial.key_id or f"source:{denial.source or 'unknown'}"
        caller = self.callers.get(entity)
        if caller is None:
            caller = self.callers[entity] = Usage("" if denial.key_id else "*")
        caller.denials += 1

    def close(self, key_namespace: dict[str, str]) -> list[UsageRow]:
        """Hand over the open window's rows and start a new window."""
        callers, self.callers = self.callers, {}
        functions, self.functions = self.functions, {}
        rows = [
            _row("caller", entity, u.namespace or key_namespace.get(entity, "*"), u)
            for entity, u in callers.items()
        ]
        rows += [_row("function", f"{ns}/{fn}", ns, u) for (ns, fn), u in functions.items()]
        return rows


def _row(kind: str, entity: str, namespace: str, usage: Usage) -> UsageRow:
    served = usage.requests
    return UsageRow(
        kind=kind,
        entity=entity,
        namespace=namespace,
        requests=served,
        errors=usage.errors,
        denials=usage.denials,
        distinct=len(usage.others),
        latency_ms=round(usage.latency_s / served * 1000, 3) if served else 0.0,
    )
