"""QuantumService: admission, the job queue, dispatch to the warm pool, and job records.

Lifecycle of a job::

    queued → running → succeeded | failed | cancelled        (+ cancelling, while a kill lands)

`running` starts when the worker reports it has begun simulating. Terminal states never
change (guarded by the job repository and in memory).

Job records live in a `cumulo.store.quantum.QuantumJobRepository` given to the service
(`jobs=`; the platform gives it the SQLite one); given only a `data_dir`, the service uses
the embedded default, `<data_dir>/quantum.db`. The service owns the repository from then
on and closes it when it stops.

Restart rule: a job that was queued or running when the platform stopped comes back *queued*
and runs again, with the same seed, so it produces the result it would have produced. A job
that was already started three times is failed instead ("interrupted 3 times"), so a job that
takes the platform down cannot loop forever. A job caught mid-cancel comes back cancelled.

Several gateways on one store (`lease_s` given): each job is run by the one gateway that
holds its lease (the one that admitted it, at first), renewed every `lease_s / 3`. A gateway
that stops cleanly gives its leases up; one that dies leaves them to run out, and then
another gateway (or it, restarted) takes the job over by the restart rule above. A cancel
sent to a gateway that does not run the job is stored, and the gateway that does acts on
it at its next renewal. Waits on another gateway's job poll its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from cumulo.errors import (
    ApiError,
    BadRequest,
    ConfigError,
    Conflict,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from cumulo.quantum.admission import available_memory_bytes, max_qubits
from cumulo.quantum.pool import Worker, WorkerDied, WorkerPool
from cumulo.quantum.prepare import PreparedJob, basis_gates, prepare_job
from cumulo.quantum.results import SCHEMA
from cumulo.quantum.spec import (
    MAX_PUBS,
    MAX_SEED,
    MAX_WAIT_S,
    METHODS,
    Limits,
    parse_job_request,
)
from cumulo.store.quantum import (
    ACTIVE,
    CONFLICT_IDEMPOTENCY_KEY,
    TERMINAL,
    JobRow,
    QuantumJobRepository,
)

log = logging.getLogger("cumulo.quantum")

MAX_ATTEMPTS = 3
# How often a wait on another gateway's job reads its record.
REMOTE_POLL_S = 0.2
MAX_IDEMPOTENCY_KEY = 255
MEMORY_POLL_S = 0.05
_FINISHED_CACHE = 128
_CACHE_RESULT_BYTES = 1 << 20


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(eq=False)
class _Job:
    id: str
    namespace: str
    created_at: float
    prepared: PreparedJob
    seed: int
    timeout_s: float
    events: list[dict[str, Any]]
    state: str = "queued"
    started_at: float | None = None
    attempts: int = 0
    pubs_done: int = 0
    reserved: int = 0
    worker: Worker | None = None
    cancel_requested: bool = False
    lost: bool = False  # its lease was taken over by another gateway
    memory_exceeded: bool = False
    requeues: int = 0
    # Set with the terminal state, before the store is written: a GET in between must see
    # the result with the state (a `succeeded` job without its result broke clients).
    finished_at: float | None = None
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class QuantumService:
    """Quantum jobs for every namespace of one platform process."""

    def __init__(
        self,
        jobs: QuantumJobRepository,
        *,
        pool_size: int = 1,
        max_qubits_memory_bytes: int | None = None,
        job_timeout_s: float = 300,
        clock: Callable[[], float] = time.time,
        max_shots: int = 1_000_000,
        max_queued: int = 1000,
        lease_s: float | None = None,
    ) -> None:
        self._jobs = jobs
        # None: this gateway is the store's only one and runs every job (no leases).
        self._lease_s = lease_s
        self._owner = f"g_{secrets.token_hex(8)}"
        # Every write of a job carries the lease as a fence (None: no leases, no fence).
        self._fence = self._owner if lease_s is not None else None
        self._lease_task: asyncio.Task[None] | None = None
        self._adopting = asyncio.Lock()
        self._pool = WorkerPool(pool_size)
        self._memory_cap = max_qubits_memory_bytes
        self._job_timeout_s = float(job_timeout_s)
        self._clock = clock
        self._limits = Limits(max_shots=max_shots, max_timeout_s=self._job_timeout_s)
        self._max_queued = max_queued
        self._active: dict[str, _Job] = {}
        self._queue: deque[_Job] = deque()
        self._cond = asyncio.Condition()
        self._reserved = 0
        self._finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._dispatchers: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        # Import Qiskit here (off the loop) so the first submission does not pay for it.
        await asyncio.to_thread(_import_qiskit)
        await self._pool.start()
        self._started = True
        await self._recover()
        loop = asyncio.get_running_loop()
        self._dispatchers = [
            loop.create_task(self._dispatch_loop(), name=f"quantum-dispatch-{i}")
            for i in range(self._pool.size)
        ]
        if self._lease_s is not None:
            self._lease_task = loop.create_task(self._lease_loop(self._lease_s))

    async def stop(self) -> None:
        if not self._started or self._stopping:
            return
        self._stopping = True
        self._pool.closing()
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(BaseException):
                await self._lease_task
        for task in self._dispatchers:
            task.cancel()
        await asyncio.gather(*self._dispatchers, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for job in list(self._active.values()):
            if job.state == "cancelling":
                await self._finish(job, "cancelled", "cancelled while the platform stopped")
            else:
                job.state = "queued"
                job.events.append(
                    self._event("queued", "the platform stopped; the job runs again on restart")
                )
                await self._jobs.update(
                    job.id, state="queued", events=list(job.events), owner=self._fence
                )
        if self._lease_s is not None:
            with contextlib.suppress(ApiError):
                await self._jobs.disown(self._owner)  # the other gateways take over at once
        # Release long-polls now (they answer 503) rather than holding up the shutdown.
        for job in self._active.values():
            job.done.set()
        self._active.clear()
        await self._pool.stop()
        await self._jobs.aclose()
        self._started = False

    def worker_pids(self) -> list[int]:
        """PIDs of the live pool processes (for operators and tests)."""
        return self._pool.pids()

    def capabilities(self) -> dict[str, Any]:
        hello = self._pool.hello
        available = available_memory_bytes(self._memory_cap)
        return {
            "schema": SCHEMA,
            "methods": list(METHODS),
            "devices": list(hello.get("devices", ["CPU"])),
            "versions": dict(hello.get("versions", {})),
            "pool_size": self._pool.size,
            "available_memory_bytes": available,
            "max_shots": self._limits.max_shots,
            "max_pubs": MAX_PUBS,
            # Per method (and `auto`): what a Qiskit Target for it is built from.
            "basis_gates": {m: basis_gates(m) for m in METHODS},
            "max_qubits": {m: max_qubits(m, available) for m in METHODS},
            "job_timeout_s": self._job_timeout_s,
        }

    # ------------------------------------------------------------------ public API

    def state_counts(self) -> dict[str, int]:
        """Jobs this gateway runs or holds, by state (queued, running, cancelling: 0 when
        none), for /metrics."""
        counts = dict.fromkeys(ACTIVE, 0)
        for job in self._active.values():
            counts[job.state] = counts.get(job.state, 0) + 1
        return counts

    async def submit(
        self,
        namespace: str,
        body: Any,
        *,
        idempotency_key: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Admit and queue a job (or only admit it, for a dry run); 400/409/422/429 on refusal."""
        self._require_started()
        spec = parse_job_request(body, self._limits)
        request = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(request).hexdigest()
        if idempotency_key is not None and not dry_run:
            if not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
                raise BadRequest(
                    f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                    code="invalid_request",
                )
            existing = await self._jobs.by_idempotency_key(namespace, idempotency_key)
            if existing is not None:
                return await self._replay(existing, digest)
        prepared = await self._prepare(body)
        if dry_run:
            return {
                "dry_run": True,
                **prepared.admission.to_dict(),
                "pubs": [
                    {
                        "kind": pub.kind,
                        "num_qubits": pub.info.num_qubits,
                        "shape": list(pub.shape),
                        "parameters": list(pub.param_names),
                        "estimated_memory_bytes": estimated,
                    }
                    for pub, estimated in zip(
                        prepared.pubs, prepared.admission.per_pub_bytes, strict=True
                    )
                ],
            }
        if len(self._queue) >= self._max_queued:
            raise TooManyRequests(
                f"the quantum queue is full ({self._max_queued} jobs); retry later",
                retry_after=5.0,
            )
        seed = spec.seed if spec.seed is not None else secrets.randbelow(MAX_SEED - MAX_PUBS)
        timeout_s = min(spec.timeout_s or self._job_timeout_s, self._job_timeout_s)
        now = self._clock()
        job = _Job(
            id=f"qj_{secrets.token_hex(10)}",
            namespace=namespace,
            created_at=now,
            prepared=prepared,
            seed=seed,
            timeout_s=timeout_s,
            events=[self._event("queued", "admitted", now)],
        )
        row = JobRow(
            id=job.id,
            namespace=namespace,
            state="queued",
            created_at=now,
            started_at=None,
            finished_at=None,
            idempotency_key=idempotency_key,
            request_hash=digest,
            request=request,
            method=prepared.admission.method,
            device=prepared.admission.device,
            estimated_bytes=prepared.admission.estimated_bytes,
            num_pubs=len(prepared.pubs),
            seed=seed,
            timeout_s=timeout_s,
            attempts=0,
            events=list(job.events),
            error=None,
            result=None,
            owner=self._owner if self._lease_s is not None else None,
            lease_until=now + self._lease_s if self._lease_s is not None else None,
        )
        try:
            await self._jobs.insert(row)
        except Conflict as exc:
            if exc.code != CONFLICT_IDEMPOTENCY_KEY or idempotency_key is None:
                raise
            # A concurrent request with the same key won the insert.
            existing = await self._jobs.by_idempotency_key(namespace, idempotency_key)
            assert existing is not None
            return await self._replay(existing, digest)
        self._active[job.id] = job
        await self._enqueue(job)
        return self._view(job)

    async def get(self, namespace: str, job_id: str) -> dict[str, Any]:
        self._require_started()
        job = self._active.get(job_id)
        if job is not None:
            if job.namespace != namespace:
                raise _not_found(job_id)
            return self._view(job)
        cached = self._finished.get(job_id)
        if cached is not None:
            if cached["namespace"] != namespace:
                raise _not_found(job_id)
            return dict(cached)
        row = await self._jobs.get(job_id)
        if row is None or row.namespace != namespace:
            raise _not_found(job_id)
        return self._row_view(row, with_result=True)

    async def wait(self, namespace: str, job_id: str, timeout_s: float) -> dict[str, Any]:
        """The job once it is terminal, or as it stands after `timeout_s` (at most 60 s)."""
        if not 0 <= timeout_s <= MAX_WAIT_S:
            raise BadRequest(f"wait must be between 0 and {MAX_WAIT_S:g} seconds")
        self._require_started()
        job = self._active.get(job_id)
        if job is not None and job.namespace == namespace and timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await job.done.wait()
        elif job is None and timeout_s > 0 and self._lease_s is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    return await self._wait_remote(namespace, job_id)
        return await self.get(namespace, job_id)

    async def _wait_remote(self, namespace: str, job_id: str) -> dict[str, Any]:
        """Another gateway runs the job (or it is finished): its record, once terminal."""
        while True:
            view = await self.get(namespace, job_id)
            if view["state"] in TERMINAL:
                return view
            job = self._active.get(job_id)
            if job is not None:  # taken over by this gateway meanwhile
                await job.done.wait()
                return await self.get(namespace, job_id)
            await asyncio.sleep(REMOTE_POLL_S)

    async def wait_terminal(self, namespace: str, job_id: str) -> dict[str, Any]:
        """The job once it is terminal, however long that takes (the SDK bridge uses this)."""
        self._require_started()
        job = self._active.get(job_id)
        if job is not None and job.namespace == namespace:
            await job.done.wait()
        elif job is None and self._lease_s is not None:
            return await self._wait_remote(namespace, job_id)
        return await self.get(namespace, job_id)

    async def cancel(self, namespace: str, job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued one at once, a running one by killing its worker."""
        self._require_started()
        job = self._active.get(job_id)
        if (
            job is None
            and self._lease_s is not None
            and await self._cancel_elsewhere(namespace, job_id)
        ):
            job = self._active.get(job_id)
            if job is None:  # stored for its gateway, or carried out here already
                return await self.get(namespace, job_id)
        if job is None or job.namespace != namespace:
            view = await self.get(namespace, job_id)
            if view["state"] == "cancelled":
                return view
            raise Conflict(
                f"quantum job {job_id} already {view['state']}; only queued or running jobs "
                "can be cancelled",
                code="job_finished",
            )
        if job.state == "cancelling":
            return self._view(job)
        job.cancel_requested = True
        async with self._cond:
            queued = job in self._queue
            if queued:
                self._queue.remove(job)
        if queued:
            await self._finish(job, "cancelled", "cancelled while queued")
            return await self.get(namespace, job_id)
        worker = job.worker
        if job.state in TERMINAL or worker is None:
            return await self.get(namespace, job_id)
        # Killing the worker is the only way to stop Aer mid-run; the pool replaces it.
        await self._transition(job, "cancelling", "cancel requested; stopping the simulation")
        self._spawn_background(worker.kill())
        return self._view(job)

    async def _cancel_elsewhere(self, namespace: str, job_id: str) -> bool:
        """A cancel for an active job this gateway does not run: stored for the gateway
        that does (it acts at its next renewal), or, when nobody holds the job any more,
        carried out here. False when the job is not active (or not the namespace's)."""
        row = await self._jobs.get(job_id, with_result=False)
        if row is None or row.namespace != namespace or row.state not in ACTIVE:
            return False
        if not await self._jobs.request_cancel(job_id):
            return False  # it finished meanwhile
        await self._adopt()
        return True

    async def _lease_loop(self, lease_s: float) -> None:
        """Keep this gateway's leases, act on cancels sent to other gateways, and take
        over the jobs of gateways whose leases ran out."""
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                for job_id in await self._jobs.renew(self._owner, self._clock() + lease_s):
                    job = self._active.get(job_id)
                    if job is not None and not job.cancel_requested:
                        with contextlib.suppress(ApiError):
                            await self.cancel(job.namespace, job_id)
                await self._adopt()
            except ApiError as exc:  # the store is away: the next round tries again
                log.warning("quantum leases not renewed: %s", exc.message)

    async def list_jobs(
        self, namespace: str, *, state: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        self._require_started()
        if state is not None and state not in ACTIVE + TERMINAL:
            raise BadRequest(f"state must be one of {', '.join(ACTIVE + TERMINAL)}")
        if not 1 <= limit <= 500:
            raise BadRequest("limit must be between 1 and 500")
        rows = await self._jobs.list_jobs(namespace, state, limit)
        out = []
        for row in rows:
            job = self._active.get(row.id)
            view = self._view(job) if job is not None else self._row_view(row, with_result=False)
            view.pop("result", None)
            out.append(view)
        return out

    # ------------------------------------------------------------------ internals

    def _require_started(self) -> None:
        if not self._started or self._stopping:
            raise Unavailable("the quantum service is not running", code="quantum_unavailable")

    async def _prepare(self, body: Any) -> PreparedJob:
        spec = parse_job_request(body, self._limits)
        return await asyncio.to_thread(
            prepare_job,
            spec,
            limits=self._limits,
            available_bytes=available_memory_bytes(self._memory_cap),
            devices=list(self._pool.hello.get("devices", ["CPU"])),
        )

    async def _replay(self, existing: JobRow, digest: str) -> dict[str, Any]:
        if existing.request_hash != digest:
            raise Conflict(
                f"this Idempotency-Key was already used for a different request (job "
                f"{existing.id}); use a new key for a new job",
                code="idempotency_key_reused",
            )
        return await self.get(existing.namespace, existing.id)

    def _event(self, state: str, message: str, at: float | None = None) -> dict[str, Any]:
        return {"at": iso(self._clock() if at is None else at), "state": state, "message": message}

    async def _enqueue(self, job: _Job) -> None:
        async with self._cond:
            self._queue.append(job)
            self._cond.notify_all()

    def _budget(self) -> int:
        if self._memory_cap is not None:
            return self._memory_cap
        # MemAvailable already excludes what running jobs use; add their reservations back.
        return available_memory_bytes(None) + self._reserved

    async def _next_job(self) -> _Job:
        async with self._cond:
            while True:
                if self._queue:
                    head = self._queue[0]
                    need = head.prepared.admission.estimated_bytes
                    # Head of line only (no overtaking), so a big job is never starved.
                    if self._reserved == 0 or self._reserved + need <= self._budget():
                        self._queue.popleft()
                        head.reserved = need
                        self._reserved += need
                        return head
                await self._cond.wait()

    async def _release(self, job: _Job) -> None:
        async with self._cond:
            self._reserved -= job.reserved
            job.reserved = 0
            self._cond.notify_all()

    async def _dispatch_loop(self) -> None:
        while True:
            worker = await self._pool.acquire()
            try:
                job = await self._next_job()
            except BaseException:
                self._pool.release(worker)
                raise
            try:
                await self._run(job, worker)
            except Exception as exc:
                # A bug here must not take a pool slot down with it; the job says what happened.
                log.exception("quantum job %s: internal error", job.id)
                text = f"internal error while running the job: {type(exc).__name__}"
                with contextlib.suppress(Exception):
                    await self._finish(
                        job, "failed", text, error={"code": "internal", "message": text}
                    )

    async def _run(self, job: _Job, worker: Worker) -> None:
        job.worker = worker
        admission = job.prepared.admission
        cap = admission.available_bytes
        spec = job.prepared.spec
        message = {
            "op": "run",
            "job": job.id,
            "pubs": job.prepared.wire,
            "method": admission.method,
            "device": admission.device,
            "seed": job.seed,
            "bitstrings": spec.bitstrings,
            "bit_order": spec.bit_order,
            "max_memory_mb": max(1, cap // 2**20),
        }
        loop = asyncio.get_running_loop()
        watch = loop.create_task(self._watch_memory(job, worker, cap))
        healthy = False
        requeue = False
        outcome: tuple[str, str, dict[str, str] | None, dict[str, Any] | None] | None = None
        try:
            await worker.send(message)
            deadline = loop.time() + job.timeout_s
            while outcome is None:
                async with asyncio.timeout_at(deadline):
                    reply = await worker.recv()
                op = reply.get("op")
                if op == "started":
                    job.attempts += 1
                    await self._transition(
                        job,
                        "running",
                        f"simulating with {admission.method} on {admission.device} "
                        f"(worker pid {worker.pid})",
                        started_at=self._clock(),
                        attempts=job.attempts,
                    )
                elif op == "progress":
                    job.pubs_done = int(reply["done"])
                elif op == "result":
                    healthy = True
                    outcome = ("succeeded", "finished", None, reply["result"])
                elif op == "error":
                    healthy = True
                    text = str(reply.get("message", "simulation failed"))
                    outcome = ("failed", text, {"code": "simulation_failed", "message": text}, None)
        except TimeoutError:
            text = f"the job ran longer than its time cap of {job.timeout_s:g} s and was stopped"
            outcome = ("failed", text, {"code": "time_limit", "message": text}, None)
        except WorkerDied as exc:
            if self._stopping:
                return
            if job.memory_exceeded:
                text = (
                    f"the simulation used more than its memory cap of {cap} bytes and was stopped"
                )
                outcome = ("failed", text, {"code": "memory_limit", "message": text}, None)
            elif not job.cancel_requested and job.state == "queued" and job.requeues < MAX_ATTEMPTS:
                # The worker died before it began (it broke while idle): not the job's fault,
                # so the job goes back to the head of the queue (a few times at most).
                job.requeues += 1
                requeue = True
            elif not job.cancel_requested:
                text = f"{exc} while running the job"
                outcome = ("failed", text, {"code": "worker_crashed", "message": text}, None)
        finally:
            watch.cancel()
            job.worker = None
            if healthy and not job.cancel_requested:
                self._pool.release(worker)
            else:
                await self._pool.discard(worker)
            await self._release(job)
        if job.cancel_requested:
            await self._finish(job, "cancelled", "cancelled while running")
        elif requeue:
            async with self._cond:
                self._queue.appendleft(job)
                self._cond.notify_all()
        elif outcome is not None:
            state, text, error, result = outcome
            if result is not None:
                result["metadata"]["estimated_memory_bytes"] = admission.estimated_bytes
            await self._finish(job, state, text, error=error, result=result)

    async def _watch_memory(self, job: _Job, worker: Worker, cap: int) -> None:
        # Admission bounds what a method should need; this enforces it on what it does use.
        while worker.alive:
            await asyncio.sleep(MEMORY_POLL_S)
            rss = worker.rss_bytes()
            if rss is not None and rss - worker.baseline_rss > cap:
                job.memory_exceeded = True
                await worker.kill()
                return

    async def _transition(self, job: _Job, state: str, message: str, **fields: Any) -> None:
        job.state = state
        if "started_at" in fields:
            job.started_at = fields["started_at"]
        job.events.append(self._event(state, message))
        stored = await self._jobs.update(
            job.id, state=state, events=list(job.events), owner=self._fence, **fields
        )
        if not stored and self._fence is not None:
            await self._lost(job)

    async def _lost(self, job: _Job) -> None:
        """Another gateway took the job over (this one's lease ran out, e.g. while the
        store was away): it stops here and writes nothing more; its record is theirs."""
        log.warning("quantum job %s: its lease was taken over; stopped here", job.id)
        job.lost = job.cancel_requested = True
        async with self._cond:
            if job in self._queue:
                self._queue.remove(job)
        if job.worker is not None:
            self._spawn_background(job.worker.kill())
        self._active.pop(job.id, None)
        job.done.set()

    async def _finish(
        self,
        job: _Job,
        state: str,
        message: str,
        *,
        error: dict[str, str] | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        if job.state in TERMINAL:
            return
        now = self._clock()
        job.state = state
        job.finished_at, job.error, job.result = now, error, result
        job.events.append(self._event(state, message, now))
        # A result can be megabytes of JSON: encoded off the event loop.
        encoded = await asyncio.to_thread(orjson.dumps, result) if result is not None else None
        stored = await self._jobs.update(
            job.id,
            state=state,
            events=list(job.events),
            finished_at=now,
            error=error,
            result=encoded,
            owner=self._fence,
        )
        size = len(encoded) if encoded is not None else 0
        if stored and not job.lost and size <= _CACHE_RESULT_BYTES:
            # Recent small results answer GETs from memory; big ones are read back from disk.
            self._finished[job.id] = self._view(job)
            while len(self._finished) > _FINISHED_CACHE:
                self._finished.popitem(last=False)
        self._active.pop(job.id, None)
        job.done.set()

    def _spawn_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _queue_position(self, job: _Job) -> int | None:
        if job.state != "queued" or job.worker is not None:
            return None
        for i, queued in enumerate(self._queue):
            if queued is job:
                return i + 1
        return None

    def _view(self, job: _Job) -> dict[str, Any]:
        admission = job.prepared.admission
        return {
            "id": job.id,
            "object": "quantum.job",
            "namespace": job.namespace,
            "state": job.state,
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "queue_position": self._queue_position(job),
            "method": admission.method,
            "device": admission.device,
            "seed": job.seed,
            "timeout_s": job.timeout_s,
            "estimated_memory_bytes": admission.estimated_bytes,
            "num_pubs": len(job.prepared.pubs),
            "progress": {"pubs_done": job.pubs_done, "pubs_total": len(job.prepared.pubs)},
            "events": list(job.events),
            "error": job.error,
            "result": job.result,
        }

    def _row_view(self, row: JobRow, *, with_result: bool) -> dict[str, Any]:
        done = row.num_pubs if row.state == "succeeded" else 0
        # Another gateway runs it and has yet to act on a cancel sent here.
        pending = row.cancel_requested and row.state in ACTIVE
        return {
            "id": row.id,
            "object": "quantum.job",
            "namespace": row.namespace,
            "state": "cancelling" if pending else row.state,
            "created_at": iso(row.created_at),
            "started_at": iso(row.started_at),
            "finished_at": iso(row.finished_at),
            "queue_position": None,
            "method": row.method,
            "device": row.device,
            "seed": row.seed,
            "timeout_s": row.timeout_s,
            "estimated_memory_bytes": row.estimated_bytes,
            "num_pubs": row.num_pubs,
            "progress": {"pubs_done": done, "pubs_total": row.num_pubs},
            "events": row.events,
            "error": row.error,
            "result": orjson.loads(row.result) if with_result and row.result else None,
        }

    async def _recover(self) -> None:
        """Bring back jobs the last run of the platform left unfinished (see module doc)."""
        await self._adopt("re-queued after a platform restart")

    async def _adopt(self, reason: str = "re-queued: the gateway that ran it stopped") -> None:
        """Take over the active jobs nobody runs: all of them on a store of one gateway
        (at start), those whose lease ran out on a shared one."""
        async with self._adopting:  # one at a time: a job is never taken over twice
            await self._adopt_unrun(reason)

    async def _adopt_unrun(self, reason: str) -> None:
        rows = await self._jobs.active()
        now = self._clock()
        for row in rows:
            # This gateway's own row not yet in memory is a submission in flight.
            if row.id in self._active or (row.owner is not None and row.owner == self._owner):
                continue
            if self._lease_s is not None and not await self._jobs.claim(
                row.id, self._owner, now + self._lease_s, now
            ):
                continue
            prepared: PreparedJob | None = None
            failure: str | None = None
            if row.cancel_requested:
                row = dataclasses.replace(row, state="cancelling")
            if row.state != "cancelling" and row.attempts < MAX_ATTEMPTS:
                try:
                    prepared = await self._prepare(orjson.loads(row.request))
                except ApiError as exc:
                    failure = f"could not be re-admitted after a restart: {exc.message}"
            if prepared is None:
                if row.cancel_requested:
                    state, text = "cancelled", "cancelled while its gateway was away"
                elif row.state == "cancelling":
                    state, text = "cancelled", "cancelled while the platform stopped"
                else:
                    state = "failed"
                    text = failure or (
                        f"interrupted {row.attempts} times by platform restarts; not retried"
                    )
                events = [*row.events, self._event(state, text)]
                error = None if state == "cancelled" else {"code": "interrupted", "message": text}
                await self._jobs.update(
                    row.id,
                    state=state,
                    events=events,
                    finished_at=self._clock(),
                    error=error,
                    owner=self._fence,
                )
                continue
            job = _Job(
                id=row.id,
                namespace=row.namespace,
                created_at=row.created_at,
                prepared=prepared,
                seed=row.seed,
                timeout_s=row.timeout_s,
                events=row.events,
                attempts=row.attempts,
            )
            job.events.append(self._event("queued", reason))
            await self._jobs.update(
                job.id, state="queued", events=list(job.events), owner=self._fence
            )
            self._active[job.id] = job
            await self._enqueue(job)


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"no quantum job {job_id}", code="job_not_found")


def _import_qiskit() -> None:
    try:
        import qiskit  # noqa: F401
        import qiskit_aer  # noqa: F401
        import qiskit_qasm3_import  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"quantum jobs need Qiskit ({exc.name} is missing): "
            "pip install qiskit qiskit-aer qiskit-qasm3-import"
        ) from exc
