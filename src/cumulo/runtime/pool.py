"""One version's pool of workers: dispatch, the bounded wait queue, scaling and reaping."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from cumulo.errors import (
    ApiError,
    FunctionCrashed,
    FunctionError,
    FunctionTimeout,
    PayloadTooLarge,
    TooManyRequests,
)
from cumulo.runtime import cgroups
from cumulo.runtime.loader import KIND_ASGI
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.timings import Timings
from cumulo.runtime.wire import FrameProtocol, FrameTooLarge
from cumulo.runtime.ws_session import WsSession
from cumulo.runtime.zygote_handle import ExitInfo, ZygoteHandle
from cumulo.tasks import TaskSet

RpcHandler = Callable[[VersionSpec, str, str, dict[str, Any]], Awaitable[Any]]
LogSink = Callable[[VersionSpec, str, str, str, dict[str, Any], float], None]
Clock = Callable[[], float]
T = TypeVar("T")

# How long a crashed worker's in-flight calls wait for the zygote to report the exit status.
EXIT_REPORT_WAIT_S = 0.5
# Work left running after a response: a version whose whole tree (its control group; the
# worker processes without one) keeps using more than IDLE_CPU_SHARE of a core for
# IDLE_CPU_WINDOW_S while nothing is in flight, IDLE_CPU_GRACE_S after its last response,
# is stopped (its zygote and workers killed; the next call starts it again).
IDLE_CPU_GRACE_S = 1.0
IDLE_CPU_WINDOW_S = 2.0
IDLE_CPU_SHARE = 0.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class InvokeResult:
    body: bytes | None
    # (status, headers as a dict or as [name, value] pairs, body)
    http: tuple[int, Any, bytes] | None
    cold: bool
    worker_pid: int
    stream: ResponseStream | None = None  # a streamed body (SSE): chunks as they come


@dataclass(slots=True)
class StreamEnd:
    error: str | None = None


# A streamed response's chunks wait here for the client; past HIGH the worker's socket is
# paused (back-pressure instead of buffering without bound), below LOW it resumes.
STREAM_HIGH = 64
STREAM_LOW = 8


class ResponseStream:
    """The body of a streamed response, read until `end` or the function's deadline."""

    def __init__(self, worker: WorkerHandle, iid: str, deadline: float) -> None:
        self.worker = worker
        self.iid = iid
        self.deadline = deadline
        self.queue: asyncio.Queue[bytes | StreamEnd] = asyncio.Queue()

    def put(self, item: bytes | StreamEnd) -> None:
        self.queue.put_nowait(item)
        if self.queue.qsize() > STREAM_HIGH:
            self.worker.pause()

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        remaining = self.deadline - time.monotonic()
        try:
            item = await asyncio.wait_for(self.queue.get(), max(0.0, remaining))
        except TimeoutError:
            self.worker.pool.stream_timed_out(self.worker, self.iid)
            raise StopAsyncIteration from None
        if self.queue.qsize() < STREAM_LOW:
            self.worker.resume()
        if isinstance(item, StreamEnd):
            raise StopAsyncIteration
        return item


def scale_up_count(
    demand: int, workers: int, starting: int, concurrency: int, max_instances: int
) -> int:
    """How many workers to start now so capacity covers demand, within max_instances."""
    capacity = (workers + starting) * concurrency
    if demand <= capacity:
        return 0
    wanted = math.ceil((demand - capacity) / concurrency)
    return max(0, min(wanted, max_instances - workers - starting))


# Worker → gateway frames of an open WebSocket (runtime/asgi_ws.py).
WS_FROM_WORKER = frozenset({"ws_accept", "ws_msg", "ws_close", "ws_ack", "ws_end"})


class Redispatch(Exception):
    """The frame never started on its worker (the worker died first): send it elsewhere."""


class WorkerHandle:
    """The gateway's end of one worker.

    A worker with concurrency 1 runs frames one after another, in the order sent. The pool
    may send it the next frame while one runs (prefetch), so it never sleeps between calls;
    such a frame's timeout starts only when it becomes the head, and if the worker dies
    first the frame is sent to another worker instead of failing.
    """

    def __init__(self, pool: VersionPool, pid: int, zygote: ZygoteHandle, now: float) -> None:
        self.pool = pool
        self.pid = pid
        self.zygote = zygote
        self.sequential = pool.config.concurrency == 1
        # In send order: for a sequential worker the first one is the one running.
        self.inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Frames queued behind the running one, resolved when each becomes the head.
        self.pending_start: dict[str, asyncio.Future[None]] = {}
        # No frame will start on this worker any more (it timed out or announced its exit).
        self.exiting = False
        self.streams: dict[str, ResponseStream] = {}
        # Open WebSockets: each holds one concurrency slot until its app returns.
        self.sockets: dict[str, WsSession] = {}
        self._paused = False
        self.served = 0
        # Slots promised to waiters that have not sent their frame yet.
        self.reserved = 0
        self.started_at = now
        self.last_used = now
        self.alive = True
        # (start, ready, zygote started too) in epoch ns: the cold start, for tracing.
        self.spawned: tuple[int, int, bool] | None = None
        self.doomed_reason: ApiError | None = None
        self.exit_info: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()
        # The version group's OOM kills when this worker started: one more by the time it
        # dies of SIGKILL, and the kernel's OOM killer is what killed it.
        group = zygote.group
        self.oom_baseline = (group.oom_kills() or 0) if group is not None else 0
        self.protocol = FrameProtocol(
            self._on_frame,
            self._on_close,
            max_frame=pool.settings.max_response_bytes + 64 * 1024,
        )

    @property
    def load(self) -> int:
        return len(self.inflight) + len(self.sockets) + self.reserved

    def send_invoke(
        self, frame: dict[str, Any]
    ) -> tuple[asyncio.Future[dict[str, Any]], asyncio.Future[None] | None]:
        """Send a frame; returns its reply future and, when it queues behind a running
        frame, a future that resolves once it starts."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        started: asyncio.Future[None] | None = None
        if self.sequential and self.inflight:
            started = self.pending_start[frame["id"]] = loop.create_future()
        self.inflight[frame["id"]] = fut
        self.protocol.send(frame)
        return fut, started

    def _advance(self) -> None:
        """The head finished: the next frame in line is running now."""
        for iid in self.inflight:
            started = self.pending_start.pop(iid, None)
            if started is not None and not started.done():
                started.set_result(None)
            return

    def _on_frame(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind in ("res", "err"):
            if message.get("exit") and self.alive:
                self.alive = False
                self.exiting = True
                self.pool.worker_gone(self)
            fut = self.inflight.pop(message.get("id", ""), None)
            if self.sequential and not self.exiting:
                self._advance()
            if fut is not None and not fut.done():
                fut.set_result(message)
            elif fut is not None and self.alive:
                # Its caller went away; the slot is free again for whoever waits.
                self.pool.release(self)
        elif kind == "hdr":
            iid = message.get("id", "")
            fut = self.inflight.get(iid)
            if fut is not None and not fut.done():
                # Now, not when the caller wakes: chunks may follow in this same read.
                deadline = time.monotonic() + self.pool.config.timeout_s
                message["stream"] = self.streams[iid] = ResponseStream(self, iid, deadline)
                fut.set_result(message)
        elif kind == "chunk":
            stream = self.streams.get(message.get("id", ""))
            if stream is not None:
                stream.put(bytes(message.get("data", b"")))
        elif kind == "end":
            iid = message.get("id", "")
            stream = self.streams.pop(iid, None)
            self.inflight.pop(iid, None)
            if stream is not None:
                stream.put(StreamEnd(message.get("error")))
            if self.sequential and not self.exiting:
                self._advance()
            if self.alive:
                self.pool.release(self)
        elif kind in WS_FROM_WORKER:
            session = self.sockets.get(message.get("id", ""))
            if session is not None:
                session.from_worker(message)
        elif kind == "rpc":
            self.pool.background(self.pool.handle_rpc(self, message))
        elif kind == "log":
            self.pool.handle_log(message)

    def _on_close(self, exc: Exception | None) -> None:
        self.alive = False
        if isinstance(exc, FrameTooLarge):
            self.doomed_reason = PayloadTooLarge(
                f"the response exceeds the {self.pool.settings.max_response_bytes}-byte limit",
                code="response_too_large",
            )
            self.zygote.kill_worker(self.pid)
        self.pool.worker_gone(self)
        for session in list(self.sockets.values()):
            session.lost(f"the worker running {self.pool.spec.function} crashed")
        if self.inflight:
            self.pool.background(self._fail_inflight())

    async def _fail_inflight(self) -> None:
        error = self.doomed_reason
        if error is None:
            try:
                info = await asyncio.wait_for(asyncio.shield(self.exit_info), EXIT_REPORT_WAIT_S)
                detail = info.describe()
            except TimeoutError:
                info, detail = None, "closed its connection"
            if info is not None and info.signal == signal.SIGKILL and self._oom_killed():
                error = FunctionCrashed(
                    f"{self.pool.spec.function} ran out of memory: its version's limit of "
                    f"{self.pool.config.memory_mb} MB per worker was reached and the kernel "
                    "killed the worker",
                    code="out_of_memory",
                )
            else:
                error = FunctionCrashed(
                    f"the worker running {self.pool.spec.function} crashed: {detail}",
                    code="function_crashed",
                )
        for stream in self.streams.values():
            stream.put(StreamEnd(error.message))
        self.streams.clear()
        for index, (iid, fut) in enumerate(self.inflight.items()):
            started = self.pending_start.pop(iid, None)
            never_ran = self.sequential and (index > 0 or self.exiting)
            if never_ran and started is not None and not started.done():
                started.set_exception(Redispatch())
                fut.cancel()
            elif not fut.done():
                fut.set_exception(Redispatch() if never_ran else error)
        self.inflight.clear()

    def _oom_killed(self) -> bool:
        group = self.zygote.group
        return group is not None and (group.oom_kills() or 0) > self.oom_baseline

    def pause(self) -> None:
        if not self._paused and self.protocol.transport is not None:
            self._paused = True
            self.protocol.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.protocol.transport is not None:
            self._paused = False
            self.protocol.transport.resume_reading()

    def close(self) -> None:
        """Let the worker go: it exits when its socket closes."""
        self.alive = False
        if self.protocol.transport is not None:
            self.protocol.transport.close()

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "state": "busy" if self.inflight else "idle",
            "inflight": len(self.inflight),
            "served": self.served,
            "started_at": self.started_at,
            "last_used": self.last_used,
        }


class VersionPool:
    def __init__(
        self,
        spec: VersionSpec,
        settings: RuntimeSettings,
        rpc: RpcHandler,
        log_sink: LogSink,
        clock: Clock = time.monotonic,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.config = spec.config
        self._rpc = rpc
        self._log_sink = log_sink
        self._clock = clock
        self.zygote: ZygoteHandle | None = None
        self._zygote_starting: asyncio.Task[ZygoteHandle] | None = None
        self.workers: list[WorkerHandle] = []
        self.by_pid: dict[int, WorkerHandle] = {}
        self.starting = 0
        self.waiters: deque[asyncio.Future[tuple[WorkerHandle, bool]]] = deque()
        self.cold_starts = 0
        self._tasks = TaskSet()
        self.closed = False
        # A version that lost all traffic: serve what arrives, keep nothing warm.
        self.draining = False
        # Never for an app: its runner starts every frame it gets at once, so a prefetched
        # frame would run past the app's concurrency (and wait behind no one).
        sequential = spec.config.concurrency == 1 and spec.kind != KIND_ASGI
        self.prefetch = settings.prefetch if sequential else 0
        self._ids = itertools.count(1)
        # Predicted load (cumulo.ai.prewarm): keep `floor` workers until `floor_until`.
        self.floor = 0
        self.floor_until = 0.0
        # (CPU seconds, clock) of the version's tree when it was last seen idle.
        self._idle_cpu: tuple[float, float] | None = None
        self.idle_cpu_stops = 0

    # ----------------------------------------------------------------- dispatch
    async def invoke(self, frame: dict[str, Any], timings: Timings | None = None) -> InvokeResult:
        """Run `frame` on a worker; `timings` (tracing only) learns where the time went."""
        if timings is not None:
            timings.wait_start = time.time_ns()
        while True:
            worker, cold = await self._acquire(timings)
            try:
                reply = await self._run_on(worker, frame, timings)
            except Redispatch:
                continue
            if timings is not None:
                timings.replied = time.time_ns()
                timings.handler = _reported_times(reply.get("ts"))
            # Metering reads what the worker used from the frame (success or error alike).
            frame["usage"] = reply.get("u")
            if reply["t"] in ("res", "hdr"):
                http = reply.get("http")
                stream = reply.get("stream")
                return InvokeResult(
                    body=reply.get("body"),
                    http=(http[0], http[1], http[2]) if http else None,
                    cold=cold,
                    worker_pid=worker.pid,
                    stream=stream,
                )
            raise _error_from(reply)

    async def connect(self, frame: dict[str, Any]) -> WsSession:
        """Open a WebSocket (`frame` is its ws_open) on a worker slot it holds for its life;
        the wait for a slot is an invocation's (429 when the queue is full or too slow)."""
        while True:
            worker, cold = await self._acquire()
            if not worker.alive:
                continue
            session = worker.sockets[frame["id"]] = WsSession(worker, frame["id"], cold)
            worker.protocol.send(frame)
            return session

    def ws_ended(self, session: WsSession) -> None:
        worker = session.worker
        if worker.sockets.pop(session.iid, None) is None:
            return
        worker.served += 1
        worker.last_used = self._clock()
        if worker.alive:
            self.release(worker)

    def ws_stuck(self, session: WsSession) -> None:
        """An app that never returned from a finished connection (its loop is blocked):
        its worker goes, as a timed-out invocation's does."""
        worker = session.worker
        worker.exiting = True
        self._kill(worker)

    def stream_timed_out(self, worker: WorkerHandle, iid: str) -> None:
        """A streamed response ran past the function's timeout: the worker goes."""
        worker.streams.pop(iid, None)
        worker.inflight.pop(iid, None)
        worker.exiting = True
        self._kill(worker)

    async def _acquire(self, timings: Timings | None = None) -> tuple[WorkerHandle, bool]:
        while True:
            worker, cold = self._pick(), False
            if worker is None:
                worker, cold = await self._wait_for_worker()
                worker.reserved -= 1
                if timings is not None:
                    timings.waited = True
                    timings.wait_end = time.time_ns()
                    if cold:
                        timings.spawn = worker.spawned
            if worker.alive:
                return worker, cold

    async def _run_on(
        self, worker: WorkerHandle, frame: dict[str, Any], timings: Timings | None = None
    ) -> dict[str, Any]:
        timeout = self.config.timeout_s
        if timings is not None:
            timings.sent = time.time_ns()
        fut, started = worker.send_invoke(frame)
        try:
            if started is not None:
                await started
                if timings is not None:
                    # Queued inside a busy worker (prefetch): that was a wait for it too.
                    timings.waited = True
                    timings.wait_end = timings.sent = time.time_ns()
            try:
                return await _within(fut, timeout)
            except TimeoutError:
                worker.inflight.pop(frame["id"], None)
                worker.exiting = True
                worker.doomed_reason = FunctionTimeout(
                    f"{self.spec.function} timed out after {timeout:g}s", code="function_timeout"
                )
                self._kill(worker)
                raise worker.doomed_reason from None
        finally:
            worker.served += 1
            worker.last_used = self._clock()
            if worker.alive:
                self.release(worker)

    def _pick(self) -> WorkerHandle | None:
        limit = self.config.concurrency
        for worker in self.workers:
            if worker.alive and worker.load < limit:
                return worker
        if self._prefetching():
            deeper = limit + self.prefetch
            for worker in self.workers:
                if worker.alive and worker.load < deeper:
                    return worker
        return None

    def _prefetching(self) -> bool:
        """Queue frames inside busy workers only once no more workers may start."""
        return bool(self.prefetch) and (
            len(self.workers) + self.starting >= self.config.max_instances
        )

    def _has_room(self, worker: WorkerHandle) -> bool:
        limit = self.config.concurrency
        if self._prefetching():
            limit += self.prefetch
        return worker.alive and worker.load < limit

    async def _wait_for_worker(self) -> tuple[WorkerHandle, bool]:
        if len(self.waiters) >= self.settings.queue_size:
            raise TooManyRequests(
                f"{self.spec.function} has {len(self.waiters)} requests waiting for a worker; "
                "try again shortly",
                code="queue_full",
            )
        fut: asyncio.Future[tuple[WorkerHandle, bool]] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self._scale_up()
        try:
            return await _within(fut, self.config.timeout_s)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                worker, _ = fut.result()
                worker.reserved -= 1
                self.release(worker)
            self._discard_waiter(fut)
            raise
        except TimeoutError:
            self._discard_waiter(fut)
            raise TooManyRequests(
                f"no worker of {self.spec.function} became free within {self.config.timeout_s:g}s",
                code="queue_timeout",
            ) from None

    def _discard_waiter(self, fut: asyncio.Future[tuple[WorkerHandle, bool]]) -> None:
        # Only on the slow path: a served waiter was already popped by whoever served it.
        if fut in self.waiters:
            self.waiters.remove(fut)

    def release(self, worker: WorkerHandle) -> None:
        """A slot on `worker` came free: hand it to the longest waiter, if any."""
        while self.waiters and self._has_room(worker):
            fut = self.waiters.popleft()
            if not fut.done():
                worker.reserved += 1
                fut.set_result((worker, False))

    def _hand_new_worker(self, worker: WorkerHandle) -> None:
        handed = 0
        while self.waiters and worker.load < self.config.concurrency:
            fut = self.waiters.popleft()
            if not fut.done():
                worker.reserved += 1
                fut.set_result((worker, True))
                handed += 1
        if handed:
            self.cold_starts += 1

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task the pool holds on to until it finishes."""
        self._tasks.spawn(coro)

    # ----------------------------------------------------------------- scaling
    @property
    def inflight(self) -> int:
        return sum(len(w.inflight) + len(w.sockets) for w in self.workers)

    def _scale_up(self) -> None:
        count = scale_up_count(
            demand=self.inflight + len(self.waiters),
            workers=len(self.workers),
            starting=self.starting,
            concurrency=self.config.concurrency,
            max_instances=self.config.max_instances,
        )
        for _ in range(count):
            self._start_worker()

    def _start_worker(self) -> None:
        self.starting += 1
        self.background(self._spawn())

    async def _spawn(self) -> None:
        begun = time.time_ns()
        new_zygote = self.zygote is None or not self.zygote.alive
        try:
            zygote = await self._ensure_zygote()
            self._fit_memory(zygote)
            pid, sock = await zygote.fork()
            worker = WorkerHandle(self, pid, zygote, self._clock())
            await asyncio.get_running_loop().connect_accepted_socket(lambda: worker.protocol, sock)
        except ApiError as exc:
            self.starting -= 1
            self._fail_waiters(exc)
            return
        except Exception as exc:
            self.starting -= 1
            self._fail_waiters(FunctionCrashed(f"could not start a worker: {exc}"))
            return
        self.starting -= 1
        if self.closed or not zygote.alive:
            worker.close()
            return
        worker.spawned = (begun, time.time_ns(), new_zygote)
        self.workers.append(worker)
        self.by_pid[pid] = worker
        self._hand_new_worker(worker)

    def _fail_waiters(self, exc: ApiError) -> None:
        # Waiters are only failed when nothing else can serve them.
        if self.workers or self.starting:
            return
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    async def _ensure_zygote(self) -> ZygoteHandle:
        if self.zygote is not None and self.zygote.alive:
            return self.zygote
        if self._zygote_starting is None:
            self._zygote_starting = asyncio.get_running_loop().create_task(self._start_zygote())
        task = self._zygote_starting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._zygote_starting is task:
                self._zygote_starting = None

    async def _start_zygote(self) -> ZygoteHandle:
        zygote = ZygoteHandle(
            self.spec,
            self.settings,
            self._worker_exited,
            self._zygote_died,
            on_output=self.handle_output,
        )
        platform_groups = cgroups.current
        if platform_groups is not None:
            config, settings = self.config, self.settings
            # The whole tree of this zygote: memory, processes, CPU (cgroups.py).
            zygote.group = platform_groups.new_group(
                "z",
                cgroups.version_limits(
                    config.memory_mb,
                    config.max_instances,
                    config.concurrency,
                    settings.max_memory_mb,
                    settings.max_pids,
                ),
            )
        try:
            await zygote.start()
        except BaseException:
            zygote.kill()
            raise
        zygote.idle_since = self._clock()
        if zygote.group is not None:
            zygote.baseline = zygote.group.memory_usage() or 0
        self.zygote = zygote
        return zygote

    def _fit_memory(self, zygote: ZygoteHandle, starting: int = 0) -> None:
        """The version's memory: its zygote plus the function's memory per worker."""
        group = zygote.group
        if group is None or group.removed:
            return
        workers = len(self.workers) + self.starting + starting
        with contextlib.suppress(OSError):
            group.set_memory(cgroups.fitted_memory(zygote.baseline, self.config.memory_mb, workers))

    def _worker_exited(self, pid: int, info: ExitInfo) -> None:
        worker = self.by_pid.pop(pid, None)
        if worker is not None and not worker.exit_info.done():
            worker.exit_info.set_result(info)

    def _zygote_died(self, zygote: ZygoteHandle) -> None:
        if self.zygote is zygote:
            self.zygote = None

    def worker_gone(self, worker: WorkerHandle) -> None:
        with contextlib.suppress(ValueError):
            self.workers.remove(worker)
        if self.zygote is not None and self.zygote.alive:
            self._fit_memory(self.zygote)
        if self.waiters and not self.closed:
            self._scale_up()

    def _kill(self, worker: WorkerHandle) -> None:
        worker.alive = False
        worker.zygote.kill_worker(worker.pid)

    def tick(self) -> None:
        """Scale down idle workers and zygotes; keep min_instances warm."""
        if self.closed:
            return
        now = self._clock()
        keep = 0 if self.draining else self.config.min_instances
        if self.floor and not self.draining:
            keep = max(keep, self.floor if now < self.floor_until else 0)
        idle = [w for w in self.workers if not w.load and not self.waiters]
        removable = len(self.workers) - keep
        for worker in sorted(idle, key=lambda w: w.last_used):
            if removable <= 0:
                break
            if now - worker.last_used >= self.settings.idle_timeout_s:
                self.workers.remove(worker)
                worker.close()
                removable -= 1
        missing = keep - len(self.workers) - self.starting
        for _ in range(max(0, missing)):
            self._start_worker()
        self._police_idle_cpu(now)
        zygote = self.zygote
        if zygote is not None:
            if self.workers or self.starting or self.waiters:
                zygote.idle_since = now
            elif now - zygote.idle_since >= self.settings.zygote_idle_timeout_s:
                self.zygote = None
                zygote.kill()

    def _tree_cpu(self, zygote: ZygoteHandle) -> float | None:
        """CPU seconds of the version's tree: its control group (children included), else
        the zygote and its workers (all threads; a worker's children are not counted)."""
        if zygote.group is not None:
            used = zygote.group.cpu_seconds()
            if used is not None:
                return used
        pids = [w.pid for w in self.workers]
        if zygote.pid is not None:
            pids.append(zygote.pid)
        return sum(_process_cpu(pid) for pid in pids)

    def _police_idle_cpu(self, now: float) -> None:
        zygote = self.zygote
        busy = self.starting or self.waiters or any(w.load for w in self.workers)
        last = max((w.last_used for w in self.workers), default=0.0)
        if zygote is None or not zygote.alive or busy or now - last < IDLE_CPU_GRACE_S:
            self._idle_cpu = None
            return
        used = self._tree_cpu(zygote)
        if used is None:
            return
        if self._idle_cpu is None or used < self._idle_cpu[0]:
            self._idle_cpu = (used, now)
            return
        since_cpu, since = self._idle_cpu
        if now - since < IDLE_CPU_WINDOW_S:
            return
        share = (used - since_cpu) / (now - since)
        self._idle_cpu = (used, now)
        if share <= IDLE_CPU_SHARE:
            return
        self.idle_cpu_stops += 1
        self._log_sink(
            self.spec,
            "",
            "error",
            f"stopped: the function kept using {share:.0%} of a CPU with no invocation in "
            f"flight (work left running after a response); it starts again on the next call",
            {"cpu_share": round(share, 3)},
            time.time(),
        )
        for worker in list(self.workers):
            worker.close()
        self.workers.clear()
        self.zygote = None
        zygote.kill()

    def prewarm(self, workers: int, until: float) -> int:
        """Hold at least `workers` (within max_instances) until `until` on the pool's
        clock, starting the missing ones now; returns how many were started."""
        if self.closed or self.draining:
            return 0
        self.floor = min(workers, self.config.max_instances)
        self.floor_until = until
        missing = max(0, self.floor - len(self.workers) - self.starting)
        for _ in range(missing):
            self._start_worker()
        return missing

    @property
    def is_idle(self) -> bool:
        return not self.workers and not self.starting and not self.waiters and self.zygote is None

    async def close(self) -> None:
        self.closed = True
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(FunctionCrashed("the platform is shutting down", code="shutdown"))
        self.waiters.clear()
        for worker in self.workers:
            worker.close()
        self.workers.clear()
        if self._zygote_starting is not None:
            with contextlib.suppress(BaseException):
                await self._zygote_starting
        if self.zygote is not None:
            zygote, self.zygote = self.zygote, None
            zygote.kill()
            await zygote.wait()

    # ----------------------------------------------------------------- worker requests
    async def handle_rpc(self, worker: WorkerHandle, message: dict[str, Any]) -> None:
        rid = message.get("rid")
        try:
            value = await self._rpc(
                self.spec, str(message.get("id", "")), str(message.get("op")), message["args"]
            )
            reply: dict[str, Any] = {"t": "rpr", "rid": rid, "ok": True, "value": value}
        except ApiError as exc:
            reply = {"t": "rpr", "rid": rid, "ok": False, "error": exc.message}
        except Exception as exc:
            reply = {"t": "rpr", "rid": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        worker.protocol.send(reply)

    def handle_log(self, message: dict[str, Any]) -> None:
        self._log_sink(
            self.spec,
            str(message.get("id", "")),
            str(message.get("level", "info")),
            str(message.get("msg", "")),
            message.get("fields") or {},
            float(message.get("ts") or time.time()),
        )

    def handle_output(self, stream: str, line: str) -> None:
        """A line the zygote or a worker wrote to fd 1 or 2 itself (os.write, a C library,
        a crash report): tied to no one invocation, so logged against the version only."""
        fd = 1 if stream == "stdout" else 2
        self._log_sink(self.spec, "", stream, line, {"fd": fd}, time.time())

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.spec.version,
            "pid": self.zygote.pid if self.zygote else None,
            # Wall-clock start of the spare this zygote adopted (spares.py); None: new.
            "prestarted_at": self.zygote.prestarted_at if self.zygote else None,
            "starting": self.starting,
            "queued": len(self.waiters),
            "workers": [w.describe() for w in self.workers if w.alive],
        }


def _process_cpu(pid: int) -> float:
    """utime + stime of every thread of `pid`, in seconds (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _reported_times(value: Any) -> tuple[int, int] | None:
    """A worker's `ts` = [start_ns, end_ns] of its handler; anything else is ignored (the
    worker runs user code, so its frames are not trusted to be well-formed)."""
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and value[0] <= value[1]
    ):
        return int(value[0]), int(value[1])
    return None


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _within(fut: asyncio.Future[T], seconds: float) -> T:
    """`await fut`, failing with TimeoutError after `seconds`.

    Unlike asyncio.wait_for this creates no task: it runs twice per queued invocation."""
    handle = asyncio.get_running_loop().call_later(seconds, _expire, fut)
    try:
        return await fut
    finally:
        handle.cancel()


def _error_from(reply: dict[str, Any]) -> ApiError:
    code = str(reply.get("code", "function_error"))
    message = str(reply.get("message", ""))
    type_name = str(reply.get("type", "Exception"))
    if code == "out_of_memory":
        return FunctionCrashed(message, code=code)
    if code == "payload_too_large":
        return PayloadTooLarge(message, code="response_too_large")
    if code in ("function_crashed", "bad_model_output"):
        return FunctionCrashed(message, code=code)
    return FunctionError(
        f"{type_name}: {message}" if message else type_name,
        code=code,
        details={"type": type_name, "traceback": str(reply.get("tb", ""))},
    )
