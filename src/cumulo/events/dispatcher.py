"""Runs due jobs: claims them in batches, calls the function with bounded concurrency,
records each outcome, retries with exponential backoff and full jitter, and moves jobs that
have used up their attempts to the dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from cumulo.errors import ApiError
from cumulo.events.db import Batcher
from cumulo.events.queue import (
    DEAD,
    FAILED,
    QUEUED,
    SUCCEEDED,
    Claimed,
    JobQueueRepository,
    Outcome,
)
from cumulo.observability.tracing import CURRENT_INVOCATION, NO_TRACING, Tracing

log = logging.getLogger("cumulo.events")

# (namespace, function, body, invocation id) → (HTTP status, response body)
InvokeFn = Callable[[str, str, bytes, str], Awaitable[tuple[int, bytes]]]
Clock = Callable[[], float]
Rng = Callable[[], float]

# A job is cut off after this long even if the invoke never returns (the executor enforces
# the function's own timeout, at most 15 minutes; this only guards against a stuck call).
MAX_JOB_S = 16 * 60.0
MAX_ERROR_BYTES = 16 * 1024
RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: the retry after the n-th failed attempt (n ≥ 1)
    waits `rng() * min(cap_s, base_s * 2 ** (n - 1))` seconds."""

    base_s: float = 1.0
    cap_s: float = 300.0

    def delay(self, attempt: int, rng: Rng) -> float:
        return rng() * min(self.cap_s, self.base_s * 2.0 ** min(attempt - 1, 62))


def new_owner() -> str:
    """This dispatcher's lease name: host and pid let a restarted gateway see that a lease's
    holder is dead; the random part tells incarnations in one process apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_is_dead(owner: str, me: str) -> bool:
    """True only when certain: a process on this host, not us, that no longer exists, or an
    earlier incarnation inside this very process."""
    host, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or owner == me:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def error_of(status: int, body: bytes) -> dict[str, Any]:
    """The platform's `{"error": {...}}` from a failed call's body, or a short stand-in."""
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            error: dict[str, Any] = data["error"]
            if len(body) <= MAX_ERROR_BYTES:
                return error
            return {"code": str(error.get("code", "error")), "message": "(error too long)"}
    text = body[:500].decode("utf-8", "replace")
    return {"code": f"http_{status}", "message": text or f"the function answered {status}"}


def outcome_of(
    job: Claimed, status: int, body: bytes, now: float, policy: RetryPolicy, rng: Rng
) -> Outcome:
    """Success below 400; a 4xx other than 408/429 fails for good (the same request would
    fail again); anything else is retried while attempts are left, then goes dead."""
    if status < 400:
        return Outcome(job.id, job.deliveries, SUCCEEDED, status, body, None)
    error = error_of(status, body)
    if status < 500 and status not in RETRYABLE_4XX:
        return Outcome(job.id, job.deliveries, FAILED, status, None, error)
    if job.attempts >= job.max_attempts:
        return Outcome(job.id, job.deliveries, DEAD, status, None, error)
    retry_at = now + policy.delay(job.attempts, rng)
    return Outcome(job.id, job.deliveries, QUEUED, status, None, error, retry_at=retry_at)


class Dispatcher:
    def __init__(
        self,
        queue: JobQueueRepository,
        invoke: InvokeFn,
        *,
        clock: Clock = time.time,
        rng: Rng,
        concurrency: int = 32,
        lease_s: float = 15.0,
        policy: RetryPolicy | None = None,
        poll_interval_s: float = 0.25,
        job_timeout_s: float = MAX_JOB_S,
        owner: str | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.queue = queue
        self.invoke = invoke
        self.clock = clock
        self.rng = rng
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.policy = policy or RetryPolicy()
        self.poll_interval_s = poll_interval_s
        self.job_timeout_s = job_timeout_s
        self.owner = owner or new_owner()
        self.tracing = tracing if tracing is not None else NO_TRACING
        self.inflight: dict[str, tuple[Claimed, asyncio.Task[None]]] = {}
        self._finisher: Batcher[Outcome, bool] = Batcher(self._finish)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def _finish(self, outcomes: list[Outcome]) -> list[bool]:
        return await self.queue.finish(self.owner, outcomes, self.clock())

    # ------------------------------------------------------------ driving
    def wake(self) -> None:
        """New work may be due (an enqueue, a replay, a finished job freeing a slot)."""
        self._wake.set()

    async def run_once(self) -> int:
        """Claim as many due jobs as there are free slots and start them; returns how many."""
        free = self.concurrency - len(self.inflight)
        if free <= 0 or self._stopping:
            return 0
        jobs = await self.queue.claim(self.owner, free, self.clock(), self.lease_s)
        loop = asyncio.get_running_loop()
        for job in jobs:
            self.inflight[job.id] = (job, loop.create_task(self._run(job)))
        return len(jobs)

    async def idle(self, limit_s: float = 30.0) -> None:
        """Wait for every started job to be recorded (tests; a bounded wait)."""
        async with asyncio.timeout(limit_s):
            while self.inflight:
                await asyncio.gather(*(task for _, task in self.inflight.values()))

    async def heartbeat(self) -> None:
        if self.inflight:
            await self.queue.extend(self.owner, self.clock(), self.lease_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        beat_every = self.lease_s / 3
        next_beat = time.monotonic() + beat_every
        while not self._stopping:
            self._wake.clear()
            try:
                claimed = await self.run_once()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + beat_every
                    await self.heartbeat()
            except Exception:
                # The database is busy or failing: nothing is lost (jobs stay queued, leases
                # run out), so log and try again at the next poll.
                log.exception("events: dispatch failed; retrying")
                claimed = 0
            if claimed and len(self.inflight) < self.concurrency:
                continue  # there may be more due right now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.poll_interval_s, beat_every)):
                    await self._wake.wait()

    async def stop(self, drain_s: float = 10.0) -> None:
        """Claim nothing more; give running jobs `drain_s` to finish; hand the rest back to
        the queue (due at once, attempt not counted) so the next start runs them."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        running = [task for _, task in self.inflight.values()]
        if running:
            await asyncio.wait(running, timeout=drain_s)
        leftover = [(job.id, job.deliveries) for job, task in self.inflight.values()]
        for _, task in self.inflight.values():
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await self._finisher.drain()
        if leftover:
            released = await self.queue.release(self.owner, leftover, self.clock())
            log.info("events: %d running job(s) handed back to the queue", released)

    # ------------------------------------------------------------ one job
    async def _run(self, job: Claimed) -> None:
        try:
            if self.tracing.enabled:
                status, body = await self._attempt_traced(job)
            else:
                status, body = await self._attempt(job)
            outcome = outcome_of(job, status, body, self.clock(), self.policy, self.rng)
            if outcome.status == DEAD:
                log.warning(
                    "events: job %s of %s/%s is dead after %d attempts",
                    job.id,
                    job.namespace,
                    job.function,
                    job.attempts,
                )
            await self._finisher.submit(outcome)
        except asyncio.CancelledError:
            raise  # stop() hands the job back
        except Exception:
            # Recording failed: the lease runs out and the job runs again (at least once).
            log.exception("events: could not record job %s; it will run again", job.id)
        finally:
            self.inflight.pop(job.id, None)
            self._wake.set()

    async def _attempt_traced(self, job: Claimed) -> tuple[int, bytes]:
        """`_attempt` inside the job's `async job` span, which continues the trace of the
        request that enqueued it; Platform.invoke finds the span through CURRENT_INVOCATION."""
        stored = None
        try:  # stored at enqueue (None for a job enqueued while tracing was off)
            stored = await self.queue.get_trace(job.id)
        except Exception:
            log.exception("events: could not read the trace context of job %s", job.id)
        span = self.tracing.start_job(job.id, job.attempts, stored, time.time_ns())
        token = CURRENT_INVOCATION.set(span)
        status = 500
        try:
            status, body = await self._attempt(job)
            return status, body
        finally:
            CURRENT_INVOCATION.reset(token)
            self.tracing.end_job(span, status)

    async def _attempt(self, job: Claimed) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(self.job_timeout_s):
                return await self.invoke(job.namespace, job.function, job.body, job.id)
        except ApiError as exc:
            return exc.status, orjson.dumps(exc.to_dict())
        except TimeoutError:
            error = {"code": "job_timeout", "message": f"no answer in {self.job_timeout_s:g} s"}
            return 504, orjson.dumps({"error": error})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("events: invoking %s/%s failed", job.namespace, job.function)
            error = {"code": "internal", "message": f"invoke failed: {type(exc).__name__}"}
            return 500, orjson.dumps({"error": error})
