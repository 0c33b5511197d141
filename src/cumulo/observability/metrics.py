"""Prometheus metrics. Counters are bumped on the invoke path; pool gauges are read only
when /metrics is scraped, so keeping them costs the hot path nothing.

`render` answers in the Prometheus text format, or in OpenMetrics when the scraper's
`Accept` asks for it (`prometheus_client.exposition.choose_encoder`). Besides the series
below: `process_*` (the gateway process), `cumulo_build_info`, and the families the caller
gathered at scrape time (the async queue, dead letters, quantum jobs: `scrape_families`)."""

from __future__ import annotations

import bisect
import platform as host_platform
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from cumulo.runtime.pool import VersionPool

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


class BuildInfo(Collector):
    def collect(self) -> Iterable[Metric]:
        from cumulo import __version__

        info = GaugeMetricFamily(
            "cumulo_build_info",
            "cumulo's version and the Python it runs on (always 1)",
            labels=["version", "python"],
        )
        info.add_metric([__version__, host_platform.python_version()], 1)
        return [info]


def scrape_families(
    job_counts: dict[str, int] | None, quantum_counts: dict[str, int] | None
) -> list[Metric]:
    """The families read at scrape time from the events queue and the quantum service
    (None: that room could not be asked, so its series are left out, not zeroed)."""
    families: list[Metric] = []
    if job_counts is not None:
        jobs = GaugeMetricFamily(
            "cumulo_async_jobs", "Async invocation jobs by status", labels=["status"]
        )
        for status, count in sorted(job_counts.items()):
            jobs.add_metric([status], count)
        dead = GaugeMetricFamily(
            "cumulo_dead_letters", "Async jobs that ended without success (failed or dead)"
        )
        dead.add_metric([], job_counts.get("failed", 0) + job_counts.get("dead", 0))
        families += [jobs, dead]
    if quantum_counts is not None:
        quantum = GaugeMetricFamily(
            "cumulo_quantum_jobs", "Quantum jobs not finished yet, by state", labels=["state"]
        )
        for state, count in sorted(quantum_counts.items()):
            quantum.add_metric([state], count)
        families.append(quantum)
    return families


class InvocationStats(Collector):
    """Invocation counters and the latency histogram, kept as plain numbers.

    Only the gateway's event loop thread writes them, so the hot path needs no locks (the
    prometheus_client metric classes take one per update); they become metric families
    when /metrics is scraped."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.cold: dict[tuple[str, str], int] = {}
        # per function: [bucket counts..., +Inf count], sum of seconds
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = {}

    def observe(
        self, namespace: str, function: str, status: int, seconds: float, cold: bool
    ) -> None:
        key = (namespace, function, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        fn = (namespace, function)
        counts = self.buckets.get(fn)
        if counts is None:
            counts = self.buckets[fn] = [0] * (len(BUCKETS) + 1)
            self.sums[fn] = 0.0
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[fn] += seconds
        if cold:
            self.cold[fn] = self.cold.get(fn, 0) + 1

    def collect(self) -> Iterable[Metric]:
        invocations = CounterMetricFamily(
            "cumulo_invocations",
            "Invocations by function and HTTP status code",
            labels=["namespace", "function", "code"],
        )
        for (ns, fn, status), count in sorted(self.counts.items()):
            invocations.add_metric([ns, fn, str(status)], count)
        cold = CounterMetricFamily(
            "cumulo_cold_starts",
            "Invocations that waited for a new worker",
            labels=["namespace", "function"],
        )
        for (ns, fn), count in sorted(self.cold.items()):
            cold.add_metric([ns, fn], count)
        duration = HistogramMetricFamily(
            "cumulo_invocation_duration_seconds",
            "Invocation latency seen by the gateway",
            labels=["namespace", "function"],
        )
        for (ns, fn), counts in sorted(self.buckets.items()):
            cumulative, running = [], 0
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts, strict=True):
                running += count
                cumulative.append((bound, running))
            duration.add_metric([ns, fn], cumulative, self.sums[(ns, fn)])
        return [invocations, cold, duration]


class Metrics:
    def __init__(self, pools: Callable[[], Iterable[VersionPool]]) -> None:
        self.registry = CollectorRegistry()
        self.stats = InvocationStats()
        self.registry.register(self.stats)
        self.registry.register(PoolCollector(pools))
        self.registry.register(BuildInfo())
        ProcessCollector(registry=self.registry)  # process_*: CPU, memory, fds of the gateway
        self.observe = self.stats.observe

    def render(
        self,
        namespace: str | None = None,
        *,
        accept: str = "",
        extra: Iterable[Metric] = (),
    ) -> tuple[bytes, str]:
        """The exposition (and its content type, from `accept`): every series (namespace
        None: the platform admin), or only the series labelled with `namespace`. Series
        without a namespace label describe the whole platform and are left out of a
        namespace's view. `extra`: families gathered for this scrape."""
        encode, content_type = choose_encoder(accept)
        everything = _WithExtra(self.registry, list(extra))
        source = everything if namespace is None else _Scoped(everything, namespace)
        return bytes(encode(source)), content_type


class _WithExtra:
    """The registry's families, then this scrape's own."""

    def __init__(self, registry: CollectorRegistry, extra: list[Metric]) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        yield from self._registry.collect()
        yield from self._extra


class _Scoped:
    """A registry view holding only one namespace's samples (what generate_latest reads)."""

    def __init__(self, registry: _WithExtra, namespace: str) -> None:
        self._registry = registry
        self._namespace = namespace

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            samples = [s for s in family.samples if s.labels.get("namespace") == self._namespace]
            if not samples:
                continue
            scoped = Metric(family.name, family.documentation, family.type, family.unit)
            scoped.samples = samples
            yield scoped
