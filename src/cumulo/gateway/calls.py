"""Service calls: `ctx.call(name, event)` from one function to another, inside the gateway.

The caller's worker sends an rpc; the gateway resolves the target in the caller's own
namespace and runs it through `Platform.invoke` (quota, metrics, records, cold starts), with
no HTTP hop. Around that: a circuit breaker per target, retries with exponential backoff and
full jitter on retryable failures, and a deadline that only ever shrinks along a call chain.

Deadlines are wall-clock (`time.time`) because the worker compares them with its own clock.
The gateway also remembers, per invocation it started, that invocation's depth and deadline:
the worker cannot be trusted (it runs user code), so a callee cannot extend the deadline it
was given nor reset its depth by lying in its rpc arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from cumulo.control.routes import Route
from cumulo.errors import (
    ApiError,
    BadRequest,
    CircuitOpen,
    FunctionTimeout,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    api_error_for,
)
from cumulo.gateway.breaker import BreakerConfig, Breakers, BreakerState
from cumulo.observability.tracing import NO_TRACING, Tracing
from cumulo.runtime.frames import invocation_frame
from cumulo.runtime.pool import InvokeResult
from cumulo.runtime.spec import VersionSpec

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
RouteLookup = Callable[[str, str], Awaitable[Route | None]]
Invoker = Callable[[VersionSpec, dict[str, Any]], Coroutine[Any, Any, InvokeResult]]

MAX_CALL_DEPTH = 16  # a recursion this deep is a bug, not a design
MAX_RETRIES = 10
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# Failures that say nothing about the target's health: the caller's namespace is full, or
# the caller ran out of time before the target was invoked.
NOT_THE_TARGETS_FAULT = frozenset({"namespace_concurrency", "deadline_exceeded"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt k (from 0) waits a uniformly random
    time in [0, min(cap, base * 2**k)], so retrying callers spread out instead of arriving
    together; a 429's retry_after is a floor."""

    base_s: float = 0.05
    cap_s: float = 2.0

    def delay(self, attempt: int, error: ApiError, rng: Callable[[], float]) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0**attempt)
        delay = rng() * ceiling
        if isinstance(error, TooManyRequests):
            delay = max(delay, float(error.retry_after))
        return delay


def retryable(error: ApiError) -> bool:
    """Transient failures only: overload, crash, unavailable, timeout. Not a 4xx, not the
    callee's own exception (500, it would raise again) and never an open circuit."""
    return error.status in RETRYABLE_STATUS and not isinstance(error, CircuitOpen)


def counts_against_target(error: ApiError) -> bool:
    """Failures that say the target is unhealthy, which is what its breaker counts."""
    return retryable(error) and error.code not in NOT_THE_TARGETS_FAULT


@dataclass(frozen=True, slots=True)
class _Lineage:
    depth: int
    deadline: float


class ServiceCaller:
    """The gateway side of `ctx.call`.

    `routes` and `invoke` are the platform's (`control.routes.get` and `Platform.invoke`);
    clocks, sleep and randomness are injectable for tests.
    """

    def __init__(
        self,
        routes: RouteLookup,
        invoke: Invoker,
        *,
        breaker: BreakerConfig | None = None,
        retry: RetryPolicy | None = None,
        max_body: int = 6 * 1024 * 1024,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        tracing: Tracing | None = None,
    ) -> None:
        self._routes = routes
        self.tracing = tracing if tracing is not None else NO_TRACING
        self._invoke = invoke
        self.breakers = Breakers(breaker or BreakerConfig.from_env(), monotonic)
        self.retry = retry or RetryPolicy()
        self.max_body = max_body
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        # Invocations started here and still running: their depth and deadline.
        self._lineage: dict[str, _Lineage] = {}
        # Callees the caller stopped waiting for run on (and record themselves); kept
        # referenced so they are not collected mid-flight.
        self._abandoned: set[asyncio.Task[InvokeResult]] = set()

    def breaker_state(self, namespace: str, name: str) -> BreakerState:
        return self.breakers.state(namespace, name)

    # ------------------------------------------------------------ the rpc op
    async def handle(self, caller: VersionSpec, invocation_id: str, args: dict[str, Any]) -> Any:
        """Answer a worker's `call` rpc: `{"result": json_bytes}` or `{"error": {...}}`.

        Errors travel in the value because an rpc error reply carries only a message, and
        the caller must be able to catch `FunctionTimeout`, `CircuitOpen`, ... by type."""
        try:
            name, body, timeout, retries, claimed = _parse(args, self.max_body)
            ns = caller.namespace
            parent = self._lineage.get(invocation_id)
            # The caller's own limit bounds what it may claim; a callee, what it was given.
            limit = parent.deadline if parent else self._clock() + caller.config.timeout_s
            deadline = min(claimed, limit) if claimed is not None else limit
            depth = (parent.depth if parent else 0) + 1
            result = await self.call(
                ns, deadline, name, body, timeout, retries, depth, caller=invocation_id
            )
            return {"result": result}
        except ApiError as exc:
            error = {"status": exc.status, "code": exc.code, "message": exc.message}
            return {"error": {**error, "details": exc.details}}

    # ------------------------------------------------------------ the call
    async def call(
        self,
        namespace: str,
        caller_deadline: float,
        name: str,
        body: bytes,
        per_try_s: float | None = None,
        retries: int = 0,
        depth: int = 1,
        *,
        caller: str = "",
    ) -> bytes:
        """Invoke `name` in `namespace`; its JSON result, or the ApiError of the last try.
        `caller` (the calling invocation's id) parents each attempt's `ctx.call` span."""
        if depth > MAX_CALL_DEPTH:
            raise BadRequest(
                f"call depth {depth} exceeds the limit of {MAX_CALL_DEPTH} nested calls",
                code="call_depth_exceeded",
            )
        # Only the caller's namespace is looked in: another namespace's function is as
        # missing as one that does not exist.
        route = await self._routes(namespace, name)
        if route is None:
            raise NotFound(f"function {name!r} not found", code="function_not_found")
        breaker = self.breakers.get(namespace, name)
        attempt = 0
        while True:
            if not breaker.allow():
                wait = breaker.retry_after()
                raise CircuitOpen(
                    f"calls to {name} are failing; its circuit is open"
                    + (f" for {wait:.1f}s more" if wait else ", a probe is testing it"),
                    details={"retry_after": round(wait, 3)},
                )
            try:
                result = await self._attempt(
                    route.pick(), caller_deadline, per_try_s, body, depth, caller
                )
            except ApiError as exc:
                if exc.code in NOT_THE_TARGETS_FAULT:
                    breaker.abandon()  # no verdict: a half-open probe must not close on it
                elif counts_against_target(exc):
                    breaker.failure()
                else:
                    breaker.success()  # it answered (a 4xx, or its own exception)
                if attempt >= retries or not retryable(exc):
                    raise
                delay = self.retry.delay(attempt, exc, self._rng)
                if self._clock() + delay >= caller_deadline:
                    raise  # no time left for another try: the real error beats a timeout
                attempt += 1
                await self._sleep(delay)
            except BaseException:
                breaker.abandon()
                raise
            else:
                breaker.success()
                return result

    async def _attempt(
        self,
        spec: VersionSpec,
        caller_deadline: float,
        per_try_s: float | None,
        body: bytes,
        depth: int,
        caller: str = "",
    ) -> bytes:
        now = self._clock()
        deadline = min(caller_deadline, now + spec.config.timeout_s)
        if per_try_s is not None:
            deadline = min(deadline, now + per_try_s)
        remaining = deadline - now
        if remaining <= 0:
            raise FunctionTimeout(
                f"no time left to call {spec.function}: the caller's deadline has passed",
                code="deadline_exceeded",
            )
        invocation_id = new_call_id()
        frame = invocation_frame(
            invocation_id,
            spec.kind,
            headers={"content-type": "application/json"},
            body=body,
        )
        frame["deadline"] = deadline  # the callee's ctx.deadline: the chain's, not its own
        self._lineage[invocation_id] = _Lineage(depth, deadline)
        if not self.tracing.enabled:
            task = asyncio.get_running_loop().create_task(self._invoke(spec, frame))
            task.add_done_callback(lambda _: self._lineage.pop(invocation_id, None))
            return await self._await_callee(spec, task, remaining)
        span, context = self.tracing.start_call(caller, spec.function, invocation_id)
        task = asyncio.get_running_loop().create_task(self._invoke(spec, frame), context=context)
        task.add_done_callback(lambda _: self._lineage.pop(invocation_id, None))
        error: BaseException | None = None
        try:
            return await self._await_callee(spec, task, remaining)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.tracing.end_call(span, error)

    async def _await_callee(
        self, spec: VersionSpec, task: asyncio.Task[InvokeResult], remaining: float
    ) -> bytes:
        try:
            result = await asyncio.wait_for(asyncio.shield(task), remaining)
        except TimeoutError:
            # The worker keeps running until it returns or hits its own timeout_s; it is
            # not killed, so its record says what really happened. The caller moves on.
            self._abandon(task)
            raise FunctionTimeout(
                f"{spec.function} did not answer within {remaining:.3g}s", code="call_timeout"
            ) from None
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        return _decode(spec.function, result)

    def _abandon(self, task: asyncio.Task[InvokeResult]) -> None:
        self._abandoned.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[InvokeResult]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: nobody waits for it, and that is fine


def new_call_id() -> str:
    """The same shape as an HTTP invocation's id (time-ordered, then 40 random bits)."""
    return f"{time.time_ns() // 1000:014x}{os.urandom(5).hex()}"


def _parse(
    args: dict[str, Any], max_body: int
) -> tuple[str, bytes, float | None, int, float | None]:
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("call takes a function name")
    body = args.get("event") or b""
    if not isinstance(body, bytes):
        raise BadRequest("the call's event must be JSON-encoded bytes")
    if len(body) > max_body:
        raise PayloadTooLarge(f"the call's event is {len(body)} bytes; the limit is {max_body}")
    timeout = args.get("timeout")
    if timeout is not None and (not _is_number(timeout) or not timeout > 0):
        raise BadRequest("call timeout must be a number of seconds above 0")
    retries = args.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= MAX_RETRIES:
        raise BadRequest(f"call retries must be an integer from 0 to {MAX_RETRIES}")
    deadline = args.get("deadline")
    if deadline is not None and not _is_number(deadline):
        raise BadRequest("call deadline must be a number (seconds since the epoch)")
    return (
        name,
        body,
        None if timeout is None else float(timeout),
        retries,
        None if deadline is None else float(deadline),
    )


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _decode(name: str, result: InvokeResult) -> bytes:
    """The callee's answer as JSON bytes; an HTTP-style answer of 400 or more raises."""
    if result.http is None:
        return result.body or b"null"
    status, _, body = result.http
    if status < 400:
        with contextlib.suppress(orjson.JSONDecodeError):
            orjson.loads(body)
            return body
        return orjson.dumps(body.decode(errors="replace"))
    code, message = f"http_{status}", f"{name} answered HTTP {status}"
    with contextlib.suppress(orjson.JSONDecodeError, LookupError, TypeError):
        error = orjson.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    raise api_error_for(status, code, message)
