"""`cumulo.client.AsyncClient` against a real platform: the same answers as `Client`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cumulo.client import AsyncClient, Client, raise_for_quantum_job
from cumulo.errors import BadRequest, Conflict, NotFound, TransportError
from cumulo.quantum import QuantumJobError
from tests.conftest import FUNCTIONS, RunningPlatform, free_port
from tests.quantum.circuits import BELL
from tests.quantum.conftest import BusyPool


def bell(seed: int, shots: int = 200) -> dict[str, Any]:
    return {"pubs": [{"circuit": BELL, "shots": shots}], "seed": seed}


def test_quantum_round_trip_with_asyncio(platform: RunningPlatform, client: Client) -> None:
    async def main() -> dict[str, Any]:
        async with AsyncClient(platform.url, platform.api_key) as aclient:
            backends = await aclient.quantum_backends()
            assert backends["methods"] == client.quantum_backends()["methods"]
            assert (await aclient.quantum_dry_run(bell(1)))["method"] == "stabilizer"
            # Several jobs in flight at once from one event loop.
            submitted = await asyncio.gather(
                *(aclient.submit_quantum_job(bell(s)) for s in (1, 2, 3))
            )
            finished = await asyncio.gather(
                *(aclient.wait_quantum_job(job["id"], timeout=60) for job in submitted)
            )
            assert [job["state"] for job in finished] == ["succeeded"] * 3
            ran = await aclient.run_quantum_job(bell(1), timeout=60)
            listed = await aclient.quantum_jobs(state="succeeded", limit=500)
            fetched = await aclient.quantum_job(submitted[0]["id"])
            with pytest.raises(Conflict, match="already succeeded"):
                await aclient.cancel_quantum_job(submitted[0]["id"])
            with pytest.raises(NotFound):
                await aclient.quantum_job("qj_nosuchjob")
            return {"finished": finished, "ran": ran, "listed": listed, "fetched": fetched}

    out = asyncio.run(main())
    finished, ran = out["finished"], out["ran"]
    counts = [job["result"]["pubs"][0]["data"]["c"]["counts"] for job in finished]
    assert all(set(c) == {"00", "11"} and sum(c.values()) == 200 for c in counts)
    assert ran["result"]["pubs"][0]["data"]["c"]["counts"] == counts[0]  # same seed
    assert {job["id"] for job in finished} <= {job["id"] for job in out["listed"]}
    # The sync client sees the very same job document.
    assert out["fetched"] == client.quantum_job(finished[0]["id"])


def test_cancel_a_queued_job_and_wait_for_it(
    platform: RunningPlatform, busy_pool: BusyPool
) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with AsyncClient(platform.url, platform.api_key) as aclient:
            job = await aclient.submit_quantum_job(bell(4))
            assert job["state"] == "queued"
            with pytest.raises(TimeoutError, match=r"is still queued after 0\.3 s"):
                await aclient.wait_quantum_job(job["id"], timeout=0.3)
            cancelled = await aclient.cancel_quantum_job(job["id"])
            waited = await aclient.wait_quantum_job(job["id"], timeout=10)
            return cancelled, waited

    cancelled, waited = asyncio.run(main())
    assert cancelled["state"] == waited["state"] == "cancelled"
    assert [e["state"] for e in waited["events"]] == ["queued", "cancelled"]
    with pytest.raises(QuantumJobError, match=rf"^quantum job {waited['id']} cancelled"):
        raise_for_quantum_job(waited)


def test_functions_deploy_invoke_and_list(platform: RunningPlatform, unique_name: str) -> None:
    async def main() -> tuple[dict[str, Any], Any, list[dict[str, Any]], dict[str, Any]]:
        async with AsyncClient(platform.url, platform.api_key) as aclient:
            deployed = await aclient.deploy(
                FUNCTIONS / "kit.py", name=unique_name, handler="kit.echo"
            )
            answer = await aclient.invoke(unique_name, {"hello": "async"})
            raw = await aclient.invoke_raw(unique_name, {"n": 1})
            assert raw.headers["x-cumulo-version"] == str(deployed["version"])
            with pytest.raises(NotFound):
                await aclient.invoke(f"{unique_name}-missing", {})
            return deployed, answer, await aclient.functions(), await aclient.function(unique_name)

    deployed, answer, listed, one = asyncio.run(main())
    assert answer == {"hello": "async"}
    assert unique_name in {f["name"] for f in listed}
    assert one["name"] == unique_name
    assert deployed["version"] >= 1


def test_refusals_are_the_sync_clients_own(platform: RunningPlatform, client: Client) -> None:
    bad = {"pubs": [{"circuit": BELL, "shots": 0}]}
    with pytest.raises(BadRequest) as sync_error:
        client.submit_quantum_job(bad)

    async def main() -> BadRequest:
        async with AsyncClient(platform.url, platform.api_key) as aclient:
            with pytest.raises(BadRequest) as caught:
                await aclient.submit_quantum_job(bad)
            return caught.value

    async_error = asyncio.run(main())
    assert (
        str(async_error)
        == str(sync_error.value)
        == ("pubs[0].shots must be between 1 and 1000000, not 0")
    )
    assert async_error.code == sync_error.value.code == "invalid_request"
    assert async_error.status == 400


def test_an_unreachable_platform_is_one_transport_error() -> None:
    async def main() -> None:
        async with AsyncClient(f"http://127.0.0.1:{free_port()}", "key") as aclient:
            await aclient.quantum_jobs()

    with pytest.raises(TransportError, match=r"^cannot reach http://127\.0\.0\.1:\d+: "):
        asyncio.run(main())
