"""What goes wrong stays inside the function: timeouts, memory, crashes, oversized bodies."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest

from cumulo.client import Client
from cumulo.errors import FunctionCrashed, FunctionError, FunctionTimeout, PayloadTooLarge
from cumulo.runtime import sandbox
from cumulo.runtime.settings import RuntimeSettings
from tests.conftest import FUNCTIONS, RunningPlatform, wait_until

KIT = FUNCTIONS / "kit.py"


def test_function_raising_gives_500_with_type_message_and_only_user_frames(
    platform: RunningPlatform, unique_name: str
) -> None:
    platform.client().deploy(KIT, name=unique_name, handler="kit.boom")
    with platform.http() as http:
        response = http.post(f"/fn/default/{unique_name}", json={"why": "bad input"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "function_error"
    assert error["message"] == "ValueError: boom: bad input"
    assert error["type"] == "ValueError"
    assert "kit.py" in error["traceback"]
    assert 'raise ValueError(f"boom:' in error["traceback"]
    assert "cumulo" not in error["traceback"].replace("kit.py", "")


def test_timeout_kills_the_worker_and_gives_504(client: Client, unique_name: str) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.spin", timeout_s=0.5)
    with pytest.raises(FunctionTimeout, match=r"timed out after 0\.5s"):
        client.invoke(unique_name, {})
    client.deploy(KIT, name=unique_name, handler="kit.whoami", timeout_s=0.5)
    assert client.invoke(unique_name, {})["version"] == "2"


def test_timed_out_worker_is_replaced(platform: RunningPlatform, unique_name: str) -> None:
    client = platform.client()
    client.deploy(KIT, name=unique_name, handler="kit.sleepy", timeout_s=0.5)
    with pytest.raises(FunctionTimeout):
        client.invoke(unique_name, {"s": 5})
    first_pid = [w["pid"] for z in client.workers(unique_name) for w in z["workers"]]
    assert first_pid == []
    assert "pid" in client.invoke(unique_name, {"s": 0})


def test_memory_limit_gives_a_clear_error_and_a_new_worker(
    client: Client, unique_name: str
) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.hog", memory_mb=64)
    with pytest.raises(FunctionCrashed, match="exceeded its memory limit of 64 MB") as info:
        client.invoke(unique_name, {"n": 10})
    assert info.value.code == "out_of_memory"
    assert client.invoke(unique_name, {"n": 1}) == 1


@pytest.mark.parametrize("how", ["exit", "segv"])
def test_crash_gives_502_naming_the_cause(client: Client, unique_name: str, how: str) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.crash")
    with pytest.raises(FunctionCrashed) as info:
        client.invoke(unique_name, {"how": how})
    expected = "exited with code 7" if how == "exit" else "signal 11 (SIGSEGV)"
    assert expected in info.value.message


def test_crashing_function_hammered_while_a_healthy_one_serves_without_error(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    bad, good = unique_name + "-bad", unique_name + "-good"
    client.deploy(KIT, name=bad, handler="kit.crash", max_instances=2)
    client.deploy(KIT, name=good, handler="kit.echo", max_instances=2)
    deadline = time.monotonic() + 3

    def hammer_bad() -> int:
        crashes = 0
        with platform.http() as http:
            while time.monotonic() < deadline:
                how = "segv" if crashes % 2 else "exit"
                status = http.post(f"/fn/default/{bad}", json={"how": how}).status_code
                assert status == 502
                crashes += 1
        return crashes

    def call_good() -> tuple[int, list[str]]:
        ok, errors = 0, []
        with platform.http() as http:
            while time.monotonic() < deadline:
                response = http.post(f"/fn/default/{good}", json={"i": ok})
                if response.status_code == 200 and response.json() == {"i": ok}:
                    ok += 1
                else:
                    errors.append(f"{response.status_code} {response.text[:200]}")
        return ok, errors

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        bad_runs = [pool.submit(hammer_bad) for _ in range(2)]
        good_runs = [pool.submit(call_good) for _ in range(2)]
        crashes = sum(f.result() for f in bad_runs)
        results = [f.result() for f in good_runs]
    assert crashes >= 10
    assert sum(ok for ok, _ in results) >= 50
    assert [e for _, errors in results for e in errors] == []


def test_request_body_over_the_limit_gives_413(platform: RunningPlatform, unique_name: str) -> None:
    platform.client().deploy(KIT, name=unique_name, handler="kit.echo")
    body = b'{"x": "' + b"a" * (1024 * 1024) + b'"}'
    with platform.http() as http:
        response = http.post(f"/fn/default/{unique_name}", content=body)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"

        def chunks() -> object:
            yield b'{"x": "'
            for _ in range(20):
                yield b"a" * 65536
            yield b'"}'

        streamed = http.post(f"/fn/default/{unique_name}", content=chunks())  # type: ignore[arg-type]
        assert streamed.status_code == 413


def test_response_over_the_limit_gives_413_and_the_function_keeps_serving(
    client: Client, unique_name: str
) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.big")
    with pytest.raises(PayloadTooLarge, match="limit is 1048576 bytes"):
        client.invoke(unique_name, {"n": 2 * 1024 * 1024})
    assert client.invoke(unique_name, {"n": 3}) == "xxx"


def test_unserializable_return_value_is_a_function_error(
    platform: RunningPlatform, unique_name: str, tmp_path: object
) -> None:
    from pathlib import Path

    src = Path(str(tmp_path)) / "sets.py"
    src.write_text("def handler(event, ctx):\n    return {1, 2}\n")
    client = platform.client()
    client.deploy(src, name=unique_name, handler="sets.handler")
    with pytest.raises(FunctionError, match="not JSON-serializable"):
        client.invoke(unique_name, {})


def test_full_queue_gives_429(fresh_platform: object, tmp_path: object) -> None:
    running = fresh_platform("--queue-size", "2")  # type: ignore[operator]
    client = running.client()
    client.deploy(KIT, name="slow", handler="kit.sleepy", max_instances=1, timeout_s=10)

    def call(_: int) -> int:
        with running.http() as http:
            return int(http.post("/fn/default/slow", json={"s": 1}).status_code)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(call, range(8)))
    assert statuses.count(200) >= 2
    assert statuses.count(429) >= 1
    assert set(statuses) == {200, 429}


@pytest.mark.parametrize("then", ["crash", "hang"])
def test_call_queued_behind_a_dying_call_runs_on_a_new_worker(
    platform: RunningPlatform, unique_name: str, then: str
) -> None:
    """Regression: with prefetch, a frame waiting inside a worker must not share its fate."""
    client = platform.client()
    client.deploy(KIT, name=unique_name, handler="kit.slow_then", max_instances=1, timeout_s=1)
    client.invoke(unique_name, {"s": 0})  # a warm worker, so both calls go to it

    def call(event: dict[str, object]) -> tuple[int, dict[str, object]]:
        with platform.http() as http:
            response = http.post(f"/fn/default/{unique_name}", json=event)
            return response.status_code, response.json()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        doomed = pool.submit(call, {"s": 0.5, "then": then})
        wait_until(
            lambda: (
                [w["inflight"] for z in client.workers(unique_name) for w in z["workers"]] == [1]
            ),
            5,
            "the first call to be running",
        )
        queued = pool.submit(call, {"s": 0})
        doomed_status, _ = doomed.result()
        queued_status, queued_body = queued.result()
    assert doomed_status == (502 if then == "crash" else 504)
    assert queued_status == 200, queued_body


NO_FORKS = """
import resource

# Runs in the zygote at import: from now on the kernel refuses it every fork.
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def handler(event, ctx):
    return "never runs"
"""


def test_a_zygote_the_kernel_refuses_forks_answers_502_and_lives(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    # A refused fork (EAGAIN from the pids limit) used to raise out of the zygote's loop:
    # the zygote died and every caller waiting for a worker of it got zygote_died.
    if os.geteuid() == 0 and not sandbox.status(RuntimeSettings()).drop_uid:
        pytest.skip("zygotes run as root here, and root ignores RLIMIT_NPROC")
    source = tmp_path / "no_forks.py"
    source.write_text(NO_FORKS)
    client = platform.client()
    client.deploy(source, name=unique_name, handler="no_forks.handler")
    zygotes = []
    for _ in range(2):
        with pytest.raises(FunctionCrashed) as info:
            client.invoke(unique_name, {})
        assert info.value.code == "worker_start_failed"
        assert info.value.message.startswith("could not start a worker: ")
        zygotes.append([z["pid"] for z in client.workers(unique_name)])
    assert zygotes[0] == zygotes[1]
    assert len(zygotes[0]) == 1


OOM_SCORE = """
def handler(event, ctx):
    with open("/proc/self/oom_score_adj") as fh:
        return int(fh.read())
"""


def test_the_oom_killer_takes_a_worker_before_its_zygote(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    # A version over its memory lost its zygote to the OOM killer (the zygote is as big as
    # any worker), and with it every worker and every fork in flight.
    source = tmp_path / "oom_score.py"
    source.write_text(OOM_SCORE)
    client = platform.client()
    client.deploy(source, name=unique_name, handler="oom_score.handler")
    assert client.invoke(unique_name, {}) == 1000
    zygote = client.workers(unique_name)[0]["pid"]
    assert int(Path(f"/proc/{zygote}/oom_score_adj").read_text()) < 1000
