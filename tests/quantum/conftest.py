"""A real QuantumService with real Aer workers behind a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cumulo.client import Client
from cumulo.errors import ApiError
from cumulo.quantum.api import build_router
from cumulo.quantum.service import QuantumService
from cumulo.store.sqlite_quantum import SQLiteQuantumJobRepository
from tests.conftest import RunningPlatform, free_port, wait_until

T = TypeVar("T")
MEMORY_CAP = 2 * 2**30


def namespace_of(request: Request) -> str:
    # Header for the tests' own clients; query parameter as the CLI sends it.
    return request.headers.get("x-namespace") or request.query_params.get("namespace", "default")


def build_app(service: QuantumService, started: list[asyncio.AbstractEventLoop]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        started.append(asyncio.get_running_loop())
        yield
        await service.stop()

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    async def get_service() -> QuantumService:
        return service

    app.include_router(build_router(get_service, namespace_of))
    return app


@dataclass
class QuantumServer:
    url: str
    service: QuantumService
    loop: asyncio.AbstractEventLoop
    data_dir: Path

    def http(self, namespace: str = "default") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"x-namespace": namespace}, timeout=60)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the server's event loop (where the service lives)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@dataclass
class RunningServer:
    server: uvicorn.Server
    thread: threading.Thread
    quantum: QuantumServer

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive()


def start_server(data_dir: Path, **options: Any) -> RunningServer:
    service = QuantumService(SQLiteQuantumJobRepository(data_dir / "quantum.db"), **options)
    loops: list[asyncio.AbstractEventLoop] = []
    port = free_port()
    config = uvicorn.Config(
        build_app(service, loops), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="quantum-uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 120, "uvicorn to start")
    assert server.started, "uvicorn did not start"
    quantum = QuantumServer(f"http://127.0.0.1:{port}", service, loops[0], data_dir)
    return RunningServer(server, thread, quantum)


@pytest.fixture(scope="session")
def quantum_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuantumServer]:
    """One server for the session: two warm workers, a 2 GiB memory budget, 60 s time cap."""
    running = start_server(
        tmp_path_factory.mktemp("quantum"),
        pool_size=2,
        max_qubits_memory_bytes=MEMORY_CAP,
        job_timeout_s=60,
    )
    yield running.quantum
    running.stop()


@pytest.fixture
def http(quantum_server: QuantumServer) -> Iterator[httpx.Client]:
    with quantum_server.http() as client:
        yield client


def run_job(client: httpx.Client, body: dict[str, Any], wait: float = 60) -> dict[str, Any]:
    """Submit and long-poll until the job is terminal."""
    response = client.post("/v1/quantum/jobs", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    deadline = time.monotonic() + wait
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job['state']}"
        job = client.get(f"/v1/quantum/jobs/{job['id']}", params={"wait": 10}).json()
    return job


SRC = Path(__file__).resolve().parents[2] / "src"


def run_user_script(platform: RunningPlatform, tmp_path: Path, source: str) -> str:
    """Run `source` as a user's own script (a fresh interpreter, the platform found through
    CUMULO_URL/CUMULO_API_KEY as a user sets them) and return what it printed."""
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(source))
    env = {
        **os.environ,
        "CUMULO_URL": platform.url,
        "CUMULO_API_KEY": platform.api_key,
        "PYTHONPATH": str(SRC),
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class BusyPool:
    """Every quantum worker of a platform running a job that takes minutes: a job submitted
    now stays queued (deterministically, no sleeps) until `release()` cancels them."""

    def __init__(self, client: Client) -> None:
        from tests.quantum.circuits import slow_circuit

        self._client = client
        body = {"pubs": [{"circuit": slow_circuit(), "shots": 1_000_000}], "seed": 1}
        size = int(client.quantum_backends()["pool_size"])
        self.jobs = [client.submit_quantum_job(body)["id"] for _ in range(size)]
        for job_id in self.jobs:
            wait_until(
                lambda job_id=job_id: client.quantum_job(job_id)["state"] == "running",
                120,
                f"{job_id} to run",
            )

    def release(self) -> None:
        for job_id in self.jobs:
            if self._client.quantum_job(job_id)["state"] in ("queued", "running"):
                self._client.cancel_quantum_job(job_id)
        for job_id in self.jobs:
            assert self._client.wait_quantum_job(job_id, timeout=60)["state"] == "cancelled"


@pytest.fixture
def busy_pool(client: Client) -> Iterator[BusyPool]:
    pool = BusyPool(client)
    try:
        yield pool
    finally:
        pool.release()
