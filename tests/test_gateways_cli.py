"""`cumulo up --gateways N`: N gateway processes on one port (SO_REUSEPORT), one store.

A real supervisor and real gateways; the test only reads what a user sees: the port
answers, changes made through it hold for every gateway, SIGTERM stops them all (exit 0),
and a gateway that dies takes the others down with an error rather than serving half a
platform.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CUMULO, FUNCTIONS, free_port, platform_database, wait_until
from tests.pg import keys_database_for

KIT = FUNCTIONS / "kit.py"
pytestmark = pytest.mark.integration  # run again on PostgreSQL by make test


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


class Supervised:
    def __init__(self, tmp: Path, count: int) -> None:
        self.port = free_port()
        self.data_dir = tmp / "data"
        extra: list[str] = []
        database = platform_database(self.data_dir)
        if database is not None:
            extra = ["--db", database, "--subject-keys-db", keys_database_for(database)]
        self.log_path = tmp / "gateways.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    CUMULO,
                    "up",
                    "--gateways",
                    str(count),
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: f"{count} gateways share" in self.log(), 60, "the gateways to start")
        creds = json.loads((self.data_dir / "credentials.json").read_text())
        self.headers = {"authorization": f"Bearer {creds['api_key']}"}

    def log(self) -> str:
        if self.proc.poll() is not None and "gateways share" not in self.log_path.read_text():
            raise AssertionError(f"cumulo up --gateways exited:\n{self.log_path.read_text()}")
        return self.log_path.read_text()

    def gateways(self) -> list[int]:
        return children(self.proc.pid)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Supervised]:
    running = Supervised(tmp_path, 2)
    yield running
    running.kill()


def test_two_gateways_serve_one_port_and_one_store(supervised: Supervised) -> None:
    assert len(supervised.gateways()) == 2
    deploy = subprocess.run(
        [CUMULO, "deploy", str(KIT), "--name", "count", "--handler", "kit.counter"],
        env={
            **os.environ,
            "CUMULO_URL": supervised.url,
            "CUMULO_API_KEY": supervised.headers["authorization"].split()[1],
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deploy.returncode == 0, deploy.stderr
    seen = []
    for _ in range(20):  # a new connection each: the kernel picks a gateway each time
        response = httpx.post(
            f"{supervised.url}/fn/default/count", json={}, headers=supervised.headers
        )
        assert response.status_code == 200, response.text
        seen.append(response.json()["n"])
    assert seen == list(range(1, 21))  # one state, whichever gateway answered


def test_sigterm_stops_every_gateway_and_exits_0(supervised: Supervised) -> None:
    gateways = supervised.gateways()
    supervised.proc.send_signal(signal.SIGTERM)
    assert supervised.proc.wait(60) == 0
    for pid in gateways:
        assert not Path(f"/proc/{pid}").exists()  # reaped by the supervisor


def test_a_gateway_that_dies_stops_the_others(supervised: Supervised) -> None:
    first, second = supervised.gateways()
    os.kill(second, signal.SIGKILL)
    assert supervised.proc.wait(60) != 0
    assert (
        "error: a gateway exited (code -9); stopping the others" in supervised.log_path.read_text()
    )
    assert not Path(f"/proc/{first}").exists()


def test_gateways_need_a_fixed_port(tmp_path: Path) -> None:
    done = subprocess.run(
        [CUMULO, "up", "--gateways", "2", "--port", "0", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: --gateways needs a fixed --port: the gateways share it"
