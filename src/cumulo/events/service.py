"""The events service: durable async invocations, retries, dead letters, cron schedules and
topics.

The platform builds one, hands it how to invoke a function (`InvokeFn`) and how to read a
function's config, starts it after the executor and stops it before the executor. Its
jobs, schedules and topics live behind a `JobQueueRepository` (and its `topics()`): the
platform's SQLite file by default, PostgreSQL when it is given one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from cumulo.errors import BadRequest, Conflict, NotFound
from cumulo.events.db import Batcher
from cumulo.events.dispatcher import Dispatcher, InvokeFn, RetryPolicy, owner_is_dead
from cumulo.events.queue import (
    Enqueued,
    JobQueueRepository,
    JobView,
    NewJob,
    NotDeadLetter,
    Schedule,
    new_job_id,
)
from cumulo.events.scheduler import Scheduler
from cumulo.events.topics import DEFAULT_MAX_EVENT_BYTES, Published, Topics
from cumulo.observability.tracing import NO_TRACING, Tracing, traceparent_of
from cumulo.sdk.spec import FunctionConfig

log = logging.getLogger("cumulo.events")

ConfigOf = Callable[[str, str], Awaitable[FunctionConfig | None]]
ScheduleLoader = Callable[[], Awaitable[Iterable[tuple[str, str, list[str]]]]]
TopicLoader = ScheduleLoader  # () -> [(ns, name, [topic, ...]), ...]

DEFAULT_MAX_ATTEMPTS = FunctionConfig().max_attempts
RETENTION_S = 7 * 24 * 3600.0
PRUNE_EVERY_S = 60.0
MAX_IDEMPOTENCY_KEY = 255


async def _no_config(namespace: str, name: str) -> FunctionConfig | None:
    return None


class EventsService:
    def __init__(
        self,
        jobs: JobQueueRepository,
        invoke: InvokeFn,
        *,
        config_of: ConfigOf = _no_config,
        load_schedules: ScheduleLoader | None = None,
        load_topics: TopicLoader | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        concurrency: int = 32,
        lease_s: float = 15.0,
        retry_base_s: float = 1.0,
        retry_cap_s: float = 300.0,
        poll_interval_s: float = 0.25,
        retention_s: float = RETENTION_S,
        tracing: Tracing | None = None,
    ) -> None:
        self.jobs = jobs  # sealing at rest is the repository's (the platform's cipher)
        self.tracing = tracing if tracing is not None else NO_TRACING
        self.invoke = invoke
        self.config_of = config_of
        self.load_schedules = load_schedules
        self.load_topics = load_topics
        self.max_event_bytes = max_event_bytes
        self.clock = clock
        self.rng = rng
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.policy = RetryPolicy(retry_base_s, retry_cap_s)
        self.poll_interval_s = poll_interval_s
        self.retention_s = retention_s
        self._queue: JobQueueRepository | None = None
        self._dispatcher: Dispatcher | None = None
        self._scheduler: Scheduler | None = None
        self._topics: Topics | None = None
        self._enqueuer: Batcher[NewJob, Enqueued] | None = None
        self._next_prune = 0.0

    # ------------------------------------------------------------ lifecycle
    async def start(self, *, run: bool = True) -> None:
        """Open the queue, end the leases of our own dead predecessors, load schedules, and
        (with `run`) start dispatching and firing. `run=False` is for tests that drive
        `dispatcher.run_once()` and `scheduler.tick()` by hand."""
        await self.jobs.open()
        queue = self._queue = self.jobs
        self._enqueuer = Batcher(self._enqueue_batch)
        dispatcher = self._dispatcher = Dispatcher(
            queue,
            self.invoke,
            clock=self.clock,
            rng=self.rng,
            concurrency=self.concurrency,
            lease_s=self.lease_s,
            policy=self.policy,
            poll_interval_s=self.poll_interval_s,
            tracing=self.tracing,
        )
        dead = [o for o in await queue.running_owners() if owner_is_dead(o, dispatcher.owner)]
        if dead:
            n = await queue.expire_leases(dead, self.clock())
            log.info("events: %d job(s) of a stopped gateway run again now", n)
        scheduler = self._scheduler = Scheduler(
            queue, self._max_attempts, clock=self.clock, on_fire=dispatcher.wake
        )
        await scheduler.load()
        if self.load_schedules is not None:
            await scheduler.replace_all(await self.load_schedules())
        self._topics = Topics(
            queue.topics(),
            self._max_attempts,
            clock=self.clock,
            on_enqueue=dispatcher.wake,
            max_event_bytes=self.max_event_bytes,
        )
        if self.load_topics is not None:
            for warning in await self._topics.replace_all(await self.load_topics()):
                log.warning("events: %s", warning)
        if run:
            dispatcher.start()
            scheduler.start()

    async def stop(self, drain_s: float = 10.0) -> None:
        """Fire nothing more, let running jobs finish for up to `drain_s`, hand the others
        back to the queue, and close. (After SIGKILL the leases run out instead.)"""
        if self._scheduler is not None:
            await self._scheduler.stop()
        if self._dispatcher is not None:
            await self._dispatcher.stop(drain_s)
        if self._enqueuer is not None:
            await self._enqueuer.drain()
        if self._queue is not None:
            await self._queue.aclose()
        self._queue = self._dispatcher = self._scheduler = self._enqueuer = None
        self._topics = None

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise RuntimeError("the events service is not started")
        return self._dispatcher

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            raise RuntimeError("the events service is not started")
        return self._scheduler

    @property
    def topics(self) -> Topics:
        if self._topics is None:
            raise RuntimeError("the events service is not started")
        return self._topics

    def _parts(self) -> JobQueueRepository:
        if self._queue is None:
            raise RuntimeError("the events service is not started")
        return self._queue

    # ------------------------------------------------------------ async invocations
    async def enqueue(
        self,
        namespace: str,
        function: str,
        body: bytes,
        idempotency_key: str | None = None,
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> Enqueued:
        """Store a job durably (the returned id is committed) and wake the dispatcher.
        Conflict (409) when the Idempotency-Key was used for a different request. With
        tracing on, an `enqueue` span (under the request's `traceparent`) is stored with the
        job: its attempts continue that trace."""
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        if self._enqueuer is None:
            raise RuntimeError("the events service is not started")
        now = self.clock()
        job = NewJob(
            id=new_job_id(now),
            namespace=namespace,
            function=function,
            body=body,
            max_attempts=await self._max_attempts(namespace, function),
            idempotency_key=idempotency_key,
        )
        if not self.tracing.enabled:
            result = await self._enqueuer.submit(job)
        else:
            result = await self._enqueue_traced(job, self._enqueuer, traceparent, tracestate)
        if result.conflict:
            raise Conflict(
                "this Idempotency-Key was already used with a different request",
                code="idempotency_key_reused",
            )
        if result.created:
            self.dispatcher.wake()
        await self._maybe_prune()
        return result

    async def _enqueue_traced(
        self,
        job: NewJob,
        enqueuer: Batcher[NewJob, Enqueued],
        traceparent: str | None,
        tracestate: str | None,
    ) -> Enqueued:
        queue = self._parts()
        span = self.tracing.start_enqueue(
            job.namespace, job.function, job.id, traceparent, tracestate
        )
        try:
            # Before the job itself: the dispatcher may claim it the moment it is committed.
            await queue.put_trace(job.id, traceparent_of(span), tracestate)
            result = await enqueuer.submit(job)
            span.set_attribute("cumulo.created", result.created)
            return result
        finally:
            span.end()

    async def _enqueue_batch(self, jobs: list[NewJob]) -> list[Enqueued]:
        return await self._parts().enqueue(jobs, self.clock())

    async def _max_attempts(self, namespace: str, function: str) -> int:
        config = await self.config_of(namespace, function)
        return config.max_attempts if config is not None else DEFAULT_MAX_ATTEMPTS

    async def get(self, job_id: str) -> JobView | None:
        return await self._parts().get(job_id)

    async def dead_letters(
        self,
        namespace: str,
        limit: int = 100,
        after: str | None = None,
        function: str | None = None,
    ) -> list[JobView]:
        return await self._parts().dead_letters(namespace, limit, after, function)

    async def replay(self, namespace: str, job_id: str) -> JobView:
        """Queue a failed or dead job again (same id, fresh attempts)."""
        try:
            view = await self._parts().replay(namespace, job_id, self.clock())
        except NotDeadLetter as exc:
            raise Conflict(
                f"invocation {job_id} is {exc.status}; only failed or dead ones can be replayed",
                code="not_dead_letter",
            ) from None
        if view is None:
            raise NotFound(f"invocation {job_id!r} not found", code="invocation_not_found")
        self.dispatcher.wake()
        return view

    async def counts(self) -> dict[str, int]:
        return await self._parts().counts()

    async def _maybe_prune(self) -> None:
        # Piggybacks on enqueues: a platform with no traffic has nothing new to prune.
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S
        queue = self._parts()
        try:
            await queue.prune(self.clock() - self.retention_s)
            await self.topics.store.prune(self.clock() - self.retention_s)
            if self.tracing.enabled:
                await queue.prune_traces()
        except Exception:
            log.exception("events: pruning finished jobs failed")

    # ------------------------------------------------------------ schedules
    async def set_schedules(self, namespace: str, function: str, crons: list[str]) -> None:
        """Make `crons` the function's schedules (an empty list removes them). Call after
        every deploy, traffic change, rollback and removal. BadRequest for a bad cron."""
        await self.scheduler.set(namespace, function, crons)

    async def schedules(self) -> list[Schedule]:
        return list(self.scheduler.schedules.values())

    # ------------------------------------------------------------ topics
    async def set_topics(self, namespace: str, function: str, topics: list[str]) -> None:
        """Make `topics` the function's subscriptions (an empty list removes them). Call
        after every deploy, traffic change, rollback and removal. BadRequest for a bad name."""
        await self.topics.set(namespace, function, topics)

    async def publish(
        self, namespace: str, topic: str, events: Sequence[dict[str, Any]]
    ) -> list[Published]:
        """Fan validated CloudEvents out to the topic's subscribers in `namespace`."""
        published = await self.topics.publish(namespace, topic, events)
        await self._maybe_prune()
        return published

    async def publish_from_function(
        self, namespace: str, function: str, args: Mapping[str, Any]
    ) -> str:
        """The rpc `events.publish` (`ctx.publish`) of a worker of `namespace`/`function`."""
        event_id = await self.topics.publish_from_function(namespace, function, args)
        await self._maybe_prune()
        return event_id


def check_idempotency_key(key: str) -> None:
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            code="invalid_idempotency_key",
        )
