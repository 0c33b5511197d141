"""Service calls (`ctx.call`): the breaker and retry policy with fake clocks, then the real
platform: results, errors, timeouts, deadline propagation, depth, namespaces, the breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import cumulo
from cumulo.client import Client
from cumulo.control.routes import Route
from cumulo.errors import (
    ApiError,
    BadRequest,
    CircuitOpen,
    FunctionCrashed,
    FunctionError,
    FunctionTimeout,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from cumulo.gateway.breaker import BreakerConfig, BreakerState, CircuitBreaker
from cumulo.gateway.calls import MAX_CALL_DEPTH, RetryPolicy, ServiceCaller
from cumulo.runtime.pool import InvokeResult
from cumulo.runtime.spec import VersionSpec
from cumulo.sdk.context import Context
from tests.conftest import FUNCTIONS, RunningPlatform, wait_until

KIT = FUNCTIONS / "kit.py"
CALLS = FUNCTIONS / "service_calls.py"


# ---------------------------------------------------------------- fakes
class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def _spec(name: str = "target", timeout_s: float = 30.0) -> VersionSpec:
    config = cumulo.FunctionConfig(timeout_s=timeout_s)
    return VersionSpec("default", name, 1, Path("."), "m", "a", "event", config)


Outcome = ApiError | bytes | Callable[[dict[str, Any]], Any]


class FakePlatform:
    """Routes to one target whose invocations play back `outcomes` (the last repeats)."""

    def __init__(self, outcomes: list[Outcome], timeout_s: float = 30.0) -> None:
        self.spec = _spec(timeout_s=timeout_s)
        self.outcomes = outcomes
        self.frames: list[dict[str, Any]] = []

    async def routes(self, namespace: str, name: str) -> Route | None:
        if (namespace, name) != ("default", "target"):
            return None
        return Route.build([(self.spec, 100)])

    async def invoke(self, spec: VersionSpec, frame: dict[str, Any]) -> InvokeResult:
        self.frames.append(frame)
        outcome = self.outcomes[min(len(self.frames), len(self.outcomes)) - 1]
        if isinstance(outcome, ApiError):
            raise outcome
        if callable(outcome):
            outcome = await outcome(frame)
        assert isinstance(outcome, bytes)
        return InvokeResult(body=outcome, http=None, cold=False, worker_pid=1)


def _caller(
    fake: FakePlatform, clock: FakeClock, *, failures: int = 5, cool_down_s: float = 10.0
) -> ServiceCaller:
    return ServiceCaller(
        fake.routes,
        fake.invoke,
        breaker=BreakerConfig(failures=failures, cool_down_s=cool_down_s),
        retry=RetryPolicy(base_s=0.05, cap_s=2.0),
        clock=clock,
        monotonic=clock,
        sleep=clock.sleep,
        rng=lambda: 1.0,  # the top of the jitter range: delays are the exponential ceilings
    )


def crashed() -> FunctionCrashed:
    return FunctionCrashed("the worker died", code="function_crashed")


# ---------------------------------------------------------------- breaker
def test_breaker_opens_after_n_consecutive_failures_and_rejects_while_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failures=3, cool_down_s=10), clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    breaker.success()  # a success in between resets the count: failures must be consecutive
    for _ in range(3):
        assert breaker.state is BreakerState.CLOSED
        assert breaker.allow()
        breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.t += 9.9
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(0.1)


def test_breaker_half_open_lets_one_probe_through_and_recovers() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failures=1, cool_down_s=5), clock)
    breaker.allow()
    breaker.failure()
    clock.t += 5
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for its outcome
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    assert breaker.allow()


def test_breaker_reopens_on_a_failed_probe_for_a_full_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failures=2, cool_down_s=5), clock)
    for _ in range(2):
        breaker.allow()
        breaker.failure()
    clock.t += 6
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == pytest.approx(5)
    clock.t += 4.9
    assert not breaker.allow()
    clock.t += 0.1
    assert breaker.allow()


def test_breaker_abandoned_probe_frees_the_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failures=1, cool_down_s=0), clock)
    breaker.allow()
    breaker.failure()
    assert breaker.allow()
    breaker.abandon()
    assert breaker.allow()


def test_breaker_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUMULO_BREAKER_FAILURES", "2")
    monkeypatch.setenv("CUMULO_BREAKER_COOLDOWN_S", "0.5")
    assert BreakerConfig.from_env() == BreakerConfig(failures=2, cool_down_s=0.5)
    monkeypatch.setenv("CUMULO_BREAKER_FAILURES", "0")
    with pytest.raises(cumulo.ConfigError):
        BreakerConfig.from_env()


# ---------------------------------------------------------------- retry policy
def test_retries_transient_failures_with_exponential_backoff() -> None:
    clock = FakeClock()
    fake = FakePlatform([crashed(), TooManyRequests("busy", retry_after=0.3), b'{"ok":1}'])
    caller = _caller(fake, clock)
    result = asyncio.run(caller.call("default", clock() + 10, "target", b"{}", retries=3))
    assert orjson.loads(result) == {"ok": 1}
    assert len(fake.frames) == 3
    # 0.05 after the crash, then max(0.1, the 429's retry_after of 0.3).
    assert clock.t == pytest.approx(1000 + 0.05 + 0.3)


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryPolicy(base_s=0.1, cap_s=1.0)
    error = crashed()
    assert policy.delay(0, error, lambda: 0.5) == pytest.approx(0.05)
    assert policy.delay(3, error, lambda: 1.0) == pytest.approx(0.8)
    assert policy.delay(10, error, lambda: 1.0) == pytest.approx(1.0)
    assert policy.delay(10, error, lambda: 0.0) == 0.0


@pytest.mark.parametrize(
    "error",
    [
        FunctionError("ValueError: no", code="function_error"),
        BadRequest("bad"),
        NotFound("gone"),
    ],
    ids=["function_error", "bad_request", "not_found"],
)
def test_no_retry_on_errors_that_would_repeat(error: ApiError) -> None:
    clock = FakeClock()
    fake = FakePlatform([error, b"1"])
    with pytest.raises(type(error)):
        asyncio.run(_caller(fake, clock).call("default", clock() + 10, "target", b"", retries=5))
    assert len(fake.frames) == 1


def test_retries_never_sleep_past_the_callers_deadline() -> None:
    clock = FakeClock()
    fake = FakePlatform([crashed()])
    caller = _caller(fake, clock)
    # 0.05 fits before the deadline, then 0.1 would not: the crash is raised, not a timeout.
    with pytest.raises(FunctionCrashed):
        asyncio.run(caller.call("default", clock() + 0.12, "target", b"", retries=5))
    assert len(fake.frames) == 2
    assert clock.t < 1000 + 0.12


def test_frame_deadline_is_the_soonest_of_caller_timeout_and_callee_limit() -> None:
    clock = FakeClock()
    fake = FakePlatform([b"null"], timeout_s=3)
    caller = _caller(fake, clock)
    asyncio.run(caller.call("default", clock() + 10, "target", b""))
    asyncio.run(caller.call("default", clock() + 10, "target", b"", per_try_s=1))
    asyncio.run(caller.call("default", clock() + 0.5, "target", b"", per_try_s=1))
    assert [f["deadline"] - 1000 for f in fake.frames] == pytest.approx([3, 1, 0.5])


def test_a_passed_deadline_fails_without_invoking() -> None:
    clock = FakeClock()
    fake = FakePlatform([b"null"])
    with pytest.raises(FunctionTimeout, match="deadline has passed"):
        asyncio.run(_caller(fake, clock).call("default", clock() - 1, "target", b""))
    assert fake.frames == []


def test_neutral_failures_neither_close_nor_open_the_circuit() -> None:
    clock = FakeClock()
    full = TooManyRequests("namespace full", code="namespace_concurrency")
    fake = FakePlatform([crashed(), full, full, full, b"1"])
    caller = _caller(fake, clock, failures=1, cool_down_s=5)
    for _ in range(4):
        with pytest.raises(ApiError):
            asyncio.run(caller.call("default", clock() + 30, "target", b""))
        clock.t += 5  # past each cool-down: every call is a probe
        assert caller.breaker_state("default", "target") is BreakerState.HALF_OPEN
    assert len(fake.frames) == 4
    assert orjson.loads(asyncio.run(caller.call("default", clock() + 30, "target", b""))) == 1
    assert caller.breaker_state("default", "target") is BreakerState.CLOSED


def test_a_slow_callee_times_out_on_the_gateway_side() -> None:
    async def never(frame: dict[str, Any]) -> bytes:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def run() -> None:
        fake = FakePlatform([never])
        caller = ServiceCaller(fake.routes, fake.invoke, breaker=BreakerConfig())
        started = time.monotonic()
        with pytest.raises(FunctionTimeout, match="did not answer within"):
            await caller.call("default", time.time() + 10, "target", b"", per_try_s=0.05)
        assert time.monotonic() - started < 2

    asyncio.run(run())


def test_other_namespaces_and_missing_functions_are_the_same_404() -> None:
    clock = FakeClock()
    caller = _caller(FakePlatform([b"1"]), clock)
    with pytest.raises(NotFound) as other:
        asyncio.run(caller.call("tenant-b", clock() + 10, "target", b""))
    with pytest.raises(NotFound) as missing:
        asyncio.run(caller.call("tenant-b", clock() + 10, "nothing", b""))
    assert other.value.code == missing.value.code == "function_not_found"


def test_open_breaker_fails_fast_without_invoking_then_recovers() -> None:
    clock = FakeClock()
    fake = FakePlatform([crashed(), crashed(), crashed(), b'"ok"'])
    caller = _caller(fake, clock, failures=3, cool_down_s=10)

    def call() -> Any:
        return asyncio.run(caller.call("default", clock() + 30, "target", b""))

    for _ in range(3):
        with pytest.raises(FunctionCrashed):
            call()
    with pytest.raises(CircuitOpen) as info:
        call()
    assert info.value.status == 503
    assert info.value.retry_after == pytest.approx(10)
    assert len(fake.frames) == 3
    assert caller.breaker_state("default", "target") is BreakerState.OPEN
    clock.t += 10
    assert orjson.loads(call()) == "ok"
    assert caller.breaker_state("default", "target") is BreakerState.CLOSED


def test_the_callees_own_exception_does_not_open_the_breaker() -> None:
    clock = FakeClock()
    fake = FakePlatform([FunctionError("ValueError: bad input")])
    caller = _caller(fake, clock, failures=2)
    for _ in range(4):
        with pytest.raises(FunctionError):
            asyncio.run(caller.call("default", clock() + 30, "target", b""))
    assert caller.breaker_state("default", "target") is BreakerState.CLOSED


def test_depth_is_tracked_by_the_gateway_and_bounded() -> None:
    """Each callee calls again from inside its invocation, as a recursive function would."""
    clock = FakeClock()
    depths: list[int] = []

    async def recurse(frame: dict[str, Any]) -> bytes:
        depths.append(len(depths) + 1)
        reply = await caller.handle(fake.spec, frame["id"], {"name": "target", "event": b""})
        # The deepest level reports the refusal; every level above passes it up.
        return bytes(reply["result"]) if "result" in reply else orjson.dumps(reply["error"]["code"])

    fake = FakePlatform([recurse])
    caller = _caller(fake, clock)
    reply = asyncio.run(caller.handle(_spec("top"), "top-invocation", {"name": "target"}))
    assert len(depths) == MAX_CALL_DEPTH
    assert orjson.loads(reply["result"]) == "call_depth_exceeded"


def test_a_callee_cannot_extend_the_deadline_it_was_given() -> None:
    clock = FakeClock()
    seen: list[float] = []

    async def call_again(frame: dict[str, Any]) -> bytes:
        if len(fake.frames) == 1:
            args = {"name": "target", "deadline": clock() + 999}
            await caller.handle(fake.spec, frame["id"], args)
        seen.append(frame["deadline"])
        return b"null"

    fake = FakePlatform([call_again])
    caller = _caller(fake, clock)
    asyncio.run(caller.handle(_spec("top"), "top", {"name": "target", "deadline": clock() + 2}))
    assert [d - 1000 for d in seen] == pytest.approx([2, 2])


def test_handle_answers_errors_as_data_and_bad_arguments_as_bad_request() -> None:
    clock = FakeClock()
    caller = _caller(FakePlatform([b"1"]), clock)
    reply = asyncio.run(caller.handle(_spec("top"), "i", {"name": "target", "retries": -1}))
    assert reply["error"]["status"] == 400
    assert "retries" in reply["error"]["message"]
    reply = asyncio.run(caller.handle(_spec("top"), "i", {"name": "target", "event": "{}"}))
    assert reply["error"]["code"] == "bad_request"


# ---------------------------------------------------------------- ctx.call
class ScriptedTransport:
    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def call(self, op: str, args: dict[str, Any]) -> Any:
        self.sent.append((op, args))
        return self.reply

    def log(self, level: str, message: str, fields: dict[str, Any]) -> None:
        pass


def _ctx(transport: ScriptedTransport) -> Context:
    return Context(
        transport=transport,
        invocation_id="i",
        deadline=1234.5,
        namespace="default",
        function_name="me",
        version=1,
        memory_mb=128,
        env={},
    )


def test_ctx_call_sends_the_event_and_deadline_and_decodes_the_result() -> None:
    transport = ScriptedTransport({"result": b'{"a":[1,2]}'})
    assert _ctx(transport).call("other", {"x": 1}, timeout=2, retries=1) == {"a": [1, 2]}
    op, args = transport.sent[0]
    assert op == "call"
    assert args == {
        "name": "other",
        "event": b'{"x":1}',
        "timeout": 2,
        "retries": 1,
        "deadline": 1234.5,
    }


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "circuit_open", CircuitOpen),
        (503, "unavailable", Unavailable),
        (504, "call_timeout", FunctionTimeout),
        (500, "function_error", FunctionError),
        (404, "function_not_found", NotFound),
    ],
)
def test_ctx_call_raises_the_matching_error_type(
    status: int, code: str, expected: type[ApiError]
) -> None:
    error = {"status": status, "code": code, "message": "m", "details": {"retry_after": 2}}
    with pytest.raises(expected) as info:
        _ctx(ScriptedTransport({"error": error})).call("other")
    assert type(info.value) is expected
    assert info.value.code == code


def test_ctx_call_refuses_an_event_that_is_not_json() -> None:
    with pytest.raises(TypeError, match="not JSON-serializable"):
        _ctx(ScriptedTransport(None)).call("other", {"x": object()})


# ---------------------------------------------------------------- the real platform
def _deploy_pair(client: Client, name: str, target_handler: str, **config: Any) -> str:
    target = f"{name}-target"
    path = CALLS if target_handler.startswith("service_calls.") else KIT
    client.deploy(path, name=target, handler=target_handler, **config)
    client.deploy(CALLS, name=name, handler="service_calls.caller", timeout_s=5)
    return target


def test_a_call_returns_the_callees_result(platform: RunningPlatform, unique_name: str) -> None:
    client = platform.client()
    target = _deploy_pair(client, unique_name, "kit.echo")
    reply = client.invoke(unique_name, {"target": target, "event": {"hello": [1, 2]}})
    assert reply["ok"] == {"hello": [1, 2]}
    statuses = lambda: [r["status"] for r in client.invocations(target)]  # noqa: E731
    wait_until(lambda: statuses() == [200], what="the callee's invocation record")


def test_the_callees_exception_surfaces_as_function_error(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    target = _deploy_pair(client, unique_name, "kit.boom")
    reply = client.invoke(unique_name, {"target": target, "event": {"why": "bad"}, "retries": 3})
    assert reply["error"] == "FunctionError"
    assert reply["code"] == "function_error"
    assert reply["message"] == "ValueError: boom: bad"
    assert reply["details"]["type"] == "ValueError"
    # Not retried: a direct call after it is the second record, and the last one.
    with pytest.raises(FunctionError):
        client.invoke(target, {})
    wait_until(lambda: len(client.invocations(target)) >= 2, what="both records")
    assert len(client.invocations(target)) == 2


def test_a_short_timeout_gives_function_timeout_quickly(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    target = _deploy_pair(client, unique_name, "kit.sleepy")
    reply = client.invoke(unique_name, {"target": target, "event": {"s": 4}, "timeout": 0.3})
    assert reply["error"] == "FunctionTimeout"
    assert reply["code"] == "call_timeout"
    assert 0.25 < reply["elapsed"] < 2


def test_the_callers_deadline_is_propagated(platform: RunningPlatform, unique_name: str) -> None:
    client = platform.client()
    target = _deploy_pair(client, unique_name, "service_calls.remaining")  # timeout_s 30
    reply = client.invoke(unique_name, {"target": target, "event": {"x": 1}})
    assert reply["ok"]["got"] == {"x": 1}
    assert reply["ok"]["remaining"] <= reply["remaining_before"] <= 5
    reply = client.invoke(unique_name, {"target": target, "timeout": 1})
    assert 0 < reply["ok"]["remaining"] <= 1


def test_another_namespaces_function_is_not_found(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    platform.client("calls-other").deploy(KIT, name=f"{unique_name}-theirs", handler="kit.echo")
    client.deploy(CALLS, name=unique_name, handler="service_calls.caller")
    theirs = client.invoke(unique_name, {"target": f"{unique_name}-theirs"})
    missing = client.invoke(unique_name, {"target": f"{unique_name}-nobody"})
    assert theirs["error"] == missing["error"] == "NotFound"
    assert theirs["code"] == missing["code"] == "function_not_found"


def test_recursion_is_bounded_by_the_call_depth(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    # Every level holds its worker thread while it waits: room for all of them at once.
    client.deploy(
        CALLS, name=unique_name, handler="service_calls.recurse", concurrency=4, timeout_s=20
    )
    assert client.invoke(unique_name, {}) == {"deepest": 16, "code": "call_depth_exceeded"}


def test_circuit_breaker_opens_and_recovers(
    fresh_platform: Callable[..., RunningPlatform],
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUMULO_BREAKER_FAILURES", "3")
    monkeypatch.setenv("CUMULO_BREAKER_COOLDOWN_S", "2")
    client = fresh_platform().client()
    target = _deploy_pair(client, unique_name, "service_calls.flaky")

    def call(crash: bool, retries: int = 0) -> dict[str, Any]:
        args = {"target": target, "event": {"crash": crash}, "retries": retries}
        return dict(client.invoke(unique_name, args))

    def records() -> list[tuple[int, str]]:
        return sorted((r["status"], r["code"]) for r in client.invocations(target))

    # One call, two retries: three crashes in a row open the circuit.
    assert call(crash=True, retries=2)["error"] == "FunctionCrashed"
    refused = call(crash=False)
    assert refused["circuit_open"] is True
    assert refused["status"] == 503
    assert refused["code"] == "circuit_open"
    assert 0 < refused["details"]["retry_after"] <= 2
    # After the cool-down one probe reaches the healthy target and closes the circuit.
    healed: dict[str, Any] = {}

    def probe_succeeds() -> bool:
        healed.update(call(crash=False))
        return "ok" in healed

    wait_until(probe_succeeds, timeout=10, what="the circuit to let a probe through")
    assert healed["ok"] == {"fine": True, "n": 1}  # the first call ever to reach it
    wait_until(lambda: len(records()) == 4, what="the probe's record")
    crash = (502, "function_crashed")
    assert records() == [(200, "ok"), crash, crash, crash]  # refusals never invoked it
    # Closed again: a failure is the target's own error, not a refusal.
    assert call(crash=True)["error"] == "FunctionCrashed"
