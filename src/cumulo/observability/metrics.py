"""Prometheus metrics. Counters are bumped on the invoke path; pool gauges are read only
when /metrics is scraped, so keeping them costs the hot path nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cumulo.runtime.pool import VersionPool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class PoolCollector(Collector):
    def __init__(self, pools: Callable[[], Iterable[VersionPool]]) -> None:
        self._pools = pools

    def collect(self) -> Iterable[Metric]:
        workers = GaugeMetricFamily(
            "cumulo_workers", "Worker processes by state", labels=["namespace", "function", "state"]
        )
        zygotes = GaugeMetricFamily(
            "cumulo_zygotes", "Running zygote processes", labels=["namespace", "function"]
        )
        queue = GaugeMetricFamily(
            "cumulo_queue_depth",
            "Requests waiting for a worker",
            labels=["namespace", "function"],
        )
        totals: dict[tuple[str, str], list[int]] = {}
        for pool in self._pools():
            key = (pool.spec.namespace, pool.spec.function)
            t = totals.setdefault(key, [0, 0, 0, 0, 0])
            busy = sum(1 for w in pool.workers if w.inflight)
            t[0] += busy
            t[1] += len(pool.workers) - busy
            t[2] += pool.starting
            t[3] += 1 if pool.zygote is not None else 0
            t[4] += len(pool.waiters)
        for (ns, fn), (busy, idle, starting, zyg, queued) in sorted(totals.items()):
            workers.add_metric([ns, fn, "busy"], busy)
            workers.add_metric([ns, fn, "idle"], idle)
            workers.add_metric([ns, fn, "starting"], starting)
            zygotes.add_metric([ns, fn], zyg)
            queue.add_metric([ns, fn], queued)
        return [workers, zygotes, queue]


class Metrics:
    def __init__(self, pools: Callable[[], Iterable[VersionPool]]) -> None:
        self.registry = CollectorRegistry()
        self.invocations = Counter(
            "cumulo_invocations",
            "Invocations by function and HTTP status",
            ["namespace", "function", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "cumulo_invocation_duration_seconds",
            "Invocation latency seen by the gateway",
            ["namespace", "function"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "cumulo_cold_starts",
            "Invocations that waited for a new worker",
            ["namespace", "function"],
            registry=self.registry,
        )
        self.registry.register(PoolCollector(pools))
        # labels() costs a lock and a dict lookup per call; the hot path reuses children.
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def observe(
        self, namespace: str, function: str, status: int, seconds: float, cold: bool
    ) -> None:
        key = (namespace, function, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.invocations.labels(namespace, function, str(status)),
                self.duration.labels(namespace, function),
                self.cold_starts.labels(namespace, function),
            )
        invocations, duration, cold_starts = children
        invocations.inc()
        duration.observe(seconds)
        if cold:
            cold_starts.inc()

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
