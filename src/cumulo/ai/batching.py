"""Dynamic batching for `@cumulo.model` versions, in the gateway.

Per model version, requests wait in a queue until `batch_max_size` of them are there or
the oldest has waited `batch_wait_ms`; then up to `batch_max_size` go to a worker as ONE
invocation through `Platform.invoke` (quota, invocation record, metrics, tracing and the
outcome observers see the batch), and the per-instance results go back to their callers.

At most `max_instances × concurrency` batches are in flight per version, the most its
workers can run at once: while they are all busy, arrivals keep filling the next batch
instead of queueing as small batches in the pool, so batches grow with load and stay at
one instance when the model is idle (no added latency beyond `batch_wait_ms`).

A batch maps to invocation records like this: one invocation (one record, one quota slot,
one outcome) per batch, not per request; every caller gets the batch's invocation id in
`x-cumulo-invocation-id` (so `GET /v1/invocations/{id}` finds it) and the batch size in
`x-cumulo-batch-size`. The outcome carries the callers' key id when they all used one key,
else none. Per-request counts are in `cumulo_model_batch_size` (sum = requests).

Everything here runs on the gateway's event loop thread: no locks; no numpy.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from cumulo.errors import FunctionCrashed
from cumulo.runtime.pool import InvokeResult
from cumulo.runtime.spec import VersionSpec
from cumulo.sdk.model import split_batch
from cumulo.tasks import TaskSet

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Invoke(Protocol):
    def __call__(
        self, spec: VersionSpec, frame: dict[str, Any], *, key_id: str | None = None
    ) -> Awaitable[InvokeResult]: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """One instance's prediction and the batch it rode in."""

    body: bytes  # the JSON document predict() returned for this instance
    invocation_id: str  # the batch's invocation
    batch_size: int
    cold: bool


@dataclass(slots=True)
class _Pending:
    body: bytes
    key_id: str | None
    arrived: float  # loop.time()
    future: asyncio.Future[Answer]


def _batch_id() -> str:
    # The same shape as gateway.invoke.new_invocation_id (time-ordered, 24 hex digits).
    return f"{time.time_ns() // 1000:014x}{random.getrandbits(40):010x}"


class _Histogram:
    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class BatchStats(Collector):
    """`cumulo_model_batch_size` (per batch) and `cumulo_model_batch_wait_seconds` (per
    request: arrival to dispatch), as plain numbers turned into families on scrape."""

    def __init__(self) -> None:
        self.sizes: dict[tuple[str, str], _Histogram] = {}
        self.waits: dict[tuple[str, str], _Histogram] = {}

    def observe(self, namespace: str, function: str, waits: Iterable[float]) -> None:
        key = (namespace, function)
        sizes = self.sizes.get(key)
        if sizes is None:
            sizes = self.sizes[key] = _Histogram(SIZE_BUCKETS)
            self.waits[key] = _Histogram(WAIT_BUCKETS)
        wait_histogram = self.waits[key]
        size = 0
        for wait in waits:
            wait_histogram.observe(wait)
            size += 1
        sizes.observe(size)

    def collect(self) -> Iterable[Metric]:
        size = HistogramMetricFamily(
            "cumulo_model_batch_size",
            "Instances per model batch (one worker invocation)",
            labels=["namespace", "function"],
        )
        wait = HistogramMetricFamily(
            "cumulo_model_batch_wait_seconds",
            "Time a model request waited for its batch to be sent",
            labels=["namespace", "function"],
        )
        for (ns, fn), histogram in sorted(self.sizes.items()):
            size.add_metric([ns, fn], histogram.cumulative(), histogram.total)
        for (ns, fn), histogram in sorted(self.waits.items()):
            wait.add_metric([ns, fn], histogram.cumulative(), histogram.total)
        return [size, wait]


class VersionBatcher:
    """The queue of one model version."""

    def __init__(
        self,
        spec: VersionSpec,
        invoke: Invoke,
        stats: BatchStats,
        on_idle: Callable[[VersionBatcher], None] = lambda _: None,
    ) -> None:
        self.spec = spec
        self._invoke = invoke
        self._stats = stats
        self._on_idle = on_idle
        config = spec.config
        self.max_size = config.batch_max_size
        self.wait_s = config.batch_wait_ms / 1000
        self.capacity = config.max_instances * config.concurrency
        self.queue: list[_Pending] = []
        self.inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks = TaskSet()

    def submit(self, body: bytes, key_id: str | None) -> asyncio.Future[Answer]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self.queue.append(_Pending(body, key_id, loop.time(), future))
        self._pump()
        return future

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queue and self.inflight < self.capacity:
            due = self.queue[0].arrived + self.wait_s
            if len(self.queue) < self.max_size and loop.time() < due:
                if self._timer is None:
                    self._timer = loop.call_at(due, self._on_timer)
                return
            batch = self.queue[: self.max_size]
            del self.queue[: self.max_size]
            self.inflight += 1
            self._tasks.spawn(self._run(batch, loop.time()))

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    async def _run(self, batch: list[_Pending], dispatched: float) -> None:
        spec = self.spec
        self._stats.observe(spec.namespace, spec.function, (dispatched - p.arrived for p in batch))
        iid = _batch_id()
        frame = {"t": "inv", "id": iid, "batch": [p.body for p in batch]}
        first_key = batch[0].key_id
        key_id = first_key if all(p.key_id == first_key for p in batch) else None
        try:
            result = await self._invoke(spec, frame, key_id=key_id)
            items = split_batch(result.body or b"")
            if len(items) != len(batch):
                raise FunctionCrashed(
                    f"{spec.function} answered {len(items)} results for {len(batch)} instances",
                    code="bad_model_output",
                )
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        else:
            size = len(batch)
            for pending, item in zip(batch, items, strict=True):
                if not pending.future.done():
                    pending.future.set_result(Answer(item, iid, size, result.cold))
        finally:
            self.inflight -= 1
            self._pump()
            if not self.queue and not self.inflight:
                self._on_idle(self)


class ModelBatching:
    """Every model version's batcher, created on its first request."""

    def __init__(self, invoke: Invoke, register: Callable[[Collector], None]) -> None:
        self._invoke = invoke
        self.stats = BatchStats()
        register(self.stats)
        self._batchers: dict[tuple[str, str, int], VersionBatcher] = {}

    def batcher(self, spec: VersionSpec) -> VersionBatcher:
        batcher = self._batchers.get(spec.key)
        if batcher is None or (batcher.spec is not spec and batcher.spec != spec):
            # A reloaded route builds new specs; an old batcher just finishes what it holds.
            batcher = VersionBatcher(spec, self._invoke, self.stats, self._forget)
            self._batchers[spec.key] = batcher
        return batcher

    def _forget(self, batcher: VersionBatcher) -> None:
        """An idle batcher goes (the next request makes a new one): removed versions and
        functions leave nothing behind."""
        if self._batchers.get(batcher.spec.key) is batcher:
            del self._batchers[batcher.spec.key]

    async def predict(self, spec: VersionSpec, body: bytes, key_id: str | None) -> Answer:
        """One instance (a JSON document) through the version's batcher."""
        return await self.batcher(spec).submit(body, key_id)

    async def predict_many(
        self, spec: VersionSpec, bodies: list[bytes], key_id: str | None
    ) -> list[Answer]:
        """Several instances of one request, each batched like a request of its own."""
        batcher = self.batcher(spec)
        futures = [batcher.submit(body, key_id) for body in bodies]
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
