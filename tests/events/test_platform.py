"""Async invocations and schedules on the real platform (`cumulo up` subprocesses), including
the chaos test: 1,000 jobs, the platform SIGKILLed twice while they run, every job done and
its side effect counted exactly once."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningPlatform, start_platform, wait_until

FNS = Path(__file__).parent / "async_fns.py"


def deploy(platform: RunningPlatform, handler: str, name: str) -> None:
    platform.client().deploy(FNS, name=name, handler=f"async_fns.{handler}")


def wait_status(
    http: httpx.Client, job_id: str, wanted: set[str], timeout: float = 30
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(http.get(f"/v1/invocations/{job_id}").json())
        return seen.get("status") in wanted

    wait_until(done, timeout, f"invocation {job_id} to become {wanted} (last: {seen})")
    return seen


def test_async_invocation_on_the_platform(platform: RunningPlatform, unique_name: str) -> None:
    deploy(platform, "once", unique_name)
    with platform.http() as http:
        response = http.post(f"/async/default/{unique_name}", json={"n": 7})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        view = wait_status(http, job_id, {"succeeded"})
        assert view["result"] == {"n": 7, "id": job_id}  # ctx.invocation_id is the job id
        assert view["attempts"] == 1
        missing = http.post("/async/default/no-such-function", json={})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "function_not_found"


def test_retries_dead_letters_and_replay_on_the_platform(
    platform: RunningPlatform, unique_name: str
) -> None:
    deploy(platform, "fails_until_fixed", unique_name)
    with platform.http() as http:
        job_id = http.post(f"/async/default/{unique_name}", json={}).json()["id"]
        # Three attempts with backoff of at most 1 s then 2 s (full jitter).
        view = wait_status(http, job_id, {"dead"})
        assert (view["attempts"], view["max_attempts"], view["result_status"]) == (3, 3, 500)
        assert view["error"]["code"] == "function_error"
        letters = http.get("/v1/namespaces/default/dead-letters", params={"function": unique_name})
        assert [d["id"] for d in letters.json()["dead_letters"]] == [job_id]
        assert http.post(f"/fn/default/{unique_name}", json={"fix": True}).status_code == 200
        replay = http.post(f"/v1/namespaces/default/dead-letters/{job_id}/replay")
        assert replay.status_code == 202
        view = wait_status(http, job_id, {"succeeded"})
        assert (view["attempts"], view["replays"], view["result"]) == (1, 1, {"ok": True})


def test_idempotency_key_on_the_platform(platform: RunningPlatform, unique_name: str) -> None:
    deploy(platform, "once", unique_name)
    with platform.http() as http:
        headers = {"idempotency-key": "pay-42"}
        url = f"/async/default/{unique_name}"
        first = http.post(url, json={"n": 1}, headers=headers)
        second = http.post(url, json={"n": 1}, headers=headers)
        assert first.json()["id"] == second.json()["id"]
        assert http.post(url, json={"n": 2}, headers=headers).status_code == 409
        wait_status(http, first.json()["id"], {"succeeded"})
        state = http.post(f"/fn/default/{unique_name}", json={"count": True}).json()
        assert state["done"] == [f"done:{first.json()['id']}"]


@pytest.mark.slow
def test_a_schedule_fires_on_the_platform_with_the_function_scaled_to_zero(
    platform: RunningPlatform, unique_name: str
) -> None:
    """Real time: `* * * * *` fires within about a minute of the deploy (the session
    platform reaps idle workers after 1 s, so the function is at zero when it fires)."""
    deploy(platform, "every_minute", unique_name)
    with platform.http() as http:

        def fired() -> list[str]:
            answer = http.post(f"/fn/default/{unique_name}", json={"count": True})
            return list(answer.json()["fired"])

        wait_until(lambda: bool(fired()), 75, "the schedule to fire")
        slots = [key.split(":")[1] for key in fired()]
        assert len(slots) == len(set(slots))  # one job per slot


# ---------------------------------------------------------------- chaos
JOBS = 1000


class Chaos:
    """Drives one platform data dir through SIGKILLs and restarts."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.tmp = tmp
        self.name = name
        self.running = start_platform(tmp)
        self.http = self.running.http()
        self.ids: dict[int, str] = {}

    def restart_after_sigkill(self) -> None:
        self.http.close()
        assert self.running.stop(signal.SIGKILL) == -signal.SIGKILL
        self.running = start_platform(self.tmp)
        self.http = self.running.http()

    def enqueue(self, n: int) -> str:
        response = self.http.post(
            f"/async/default/{self.name}",
            json={"n": n, "sleep": 0.08},
            headers={"idempotency-key": f"job-{n}"},
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def state(self) -> dict[str, Any]:
        answer = self.http.post(f"/fn/default/{self.name}", json={"count": True}, timeout=60)
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        return data

    def wait_done(self, at_least: int, timeout: float) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def enough() -> bool:
            last.update(self.state())
            return len(last["done"]) >= at_least

        wait_until(enough, timeout, f"{at_least} jobs done")
        return last

    def close(self) -> None:
        self.http.close()
        self.running.stop(signal.SIGKILL)


def test_chaos_two_sigkills_every_job_completes_exactly_once(
    tmp_path: Path, unique_name: str
) -> None:
    chaos = Chaos(tmp_path, unique_name)
    try:
        deploy(chaos.running, "once", unique_name)
        # 4 workers × 80 ms: about 50 jobs/s, far slower than the enqueues even on a loaded
        # machine (at 30 ms a full-suite run once failed here intermittently), so jobs are
        # queued and running when each SIGKILL lands, most likely inside the 80 ms after a
        # job's side effect and before its result is recorded.
        for n in range(JOBS // 2):
            chaos.ids[n] = chaos.enqueue(n)
        before_first = len(chaos.state()["done"])
        assert before_first < JOBS // 2
        chaos.restart_after_sigkill()

        # The keys sent before the crash still name the same jobs.
        for n in range(0, JOBS // 2, 50):
            assert chaos.enqueue(n) == chaos.ids[n]
        for n in range(JOBS // 2, JOBS):
            chaos.ids[n] = chaos.enqueue(n)
        mid = chaos.wait_done(JOBS * 6 // 10, 60)
        assert len(mid["done"]) < JOBS
        chaos.restart_after_sigkill()

        final = chaos.wait_done(JOBS, 90)
        ids = set(chaos.ids.values())
        assert len(ids) == JOBS
        # Each job's side effect exactly once: one `done:` key per job, no other key.
        assert sorted(final["done"]) == sorted(f"done:{i}" for i in ids)
        assert final["runs"] >= JOBS  # at least once: redeliveries after a crash run again
        # A job's side effect lands 80 ms before its result is recorded: the last ones may
        # still read `running` for that long.
        pending = set(ids)

        def all_succeeded() -> bool:
            for i in list(pending):
                if chaos.http.get(f"/v1/invocations/{i}").json()["status"] == "succeeded":
                    pending.discard(i)
            return not pending

        wait_until(all_succeeded, 30, "every job recorded as succeeded")
        redelivered = final["runs"] - JOBS
        # Both kills found workers inside the 80 ms after a side effect (each worker spends
        # almost all its time there): those jobs ran again and were still counted once.
        assert redelivered >= 1
        print(
            f"chaos: {before_first} done at the first kill, {len(mid['done'])} at the "
            f"second, {redelivered} executions were redeliveries"
        )
    finally:
        chaos.close()
