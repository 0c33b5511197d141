"""Fixtures that run the real platform: `cumulo up` in a subprocess on a free loopback port."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cumulo.client import Client
from tests.pg import PgCluster, keys_database_for, why_unavailable

FUNCTIONS = Path(__file__).parent / "functions"
# `cumulo up` saves a context in the per-user config (cumulo.cli.profiles): the suite's
# platforms write to a throwaway one, never to the real ~/.config/cumulo.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="cumulo-test-config-")
CUMULO = str(Path(sys.executable).parent / "cumulo")


# `CUMULO_TEST_STORE=postgresql` runs every platform the suite starts on PostgreSQL (a
# database per data dir, on one throwaway cluster: tests/pg.py); `make test` runs the
# integration tests (marker `integration`) once more that way.
TEST_STORE = os.environ.get("CUMULO_TEST_STORE", "sqlite")
INTEGRATION_FIXTURES = {"platform", "fresh_platform", "client"}
_pg_cluster: PgCluster | None = None
_pg_databases: dict[Path, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        uses_platform = INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_platform or (module is not None and "start_platform" in vars(module)):
            item.add_marker(pytest.mark.integration)
        if TEST_STORE == "postgresql" and item.get_closest_marker("sqlite_only"):
            reason = item.get_closest_marker("sqlite_only").kwargs.get("reason", "")  # type: ignore[union-attr]
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))


def platform_database(data_dir: Path) -> str | None:
    """The PostgreSQL database the platform on `data_dir` uses under CUMULO_TEST_STORE=
    postgresql (gateways sharing a data dir share it too); None on the SQLite default."""
    global _pg_cluster
    if TEST_STORE != "postgresql":
        return None
    if _pg_cluster is None:
        reason = why_unavailable()
        if reason is not None:
            pytest.fail(f"CUMULO_TEST_STORE=postgresql, but {reason}")
        _pg_cluster = PgCluster.start()
        atexit.register(_pg_cluster.stop)
    key = data_dir.resolve()
    if key not in _pg_databases:
        _pg_databases[key] = _pg_cluster.create_database()
    return _pg_databases[key]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


@dataclass
class RunningPlatform:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    api_key: str
    log_path: Path
    verify: ssl.SSLContext | bool = True
    clients: list[Client] = field(default_factory=list)
    database: str | None = None  # its PostgreSQL DSN; None: SQLite in the data dir

    def store_query(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run `query` (`?` placeholders) on the platform's own store, whichever it is: for
        tests that inspect or tamper with what is stored (same tables on both backends)."""
        if self.database is None:
            with contextlib.closing(sqlite3.connect(self.data_dir / "cumulo.db")) as db, db:
                return list(db.execute(query, params).fetchall())
        with psycopg.connect(self.database, autocommit=True) as conn:
            cur = conn.execute(query.replace("?", "%s").encode(), params)
            return list(cur.fetchall()) if cur.description else []

    def client(self, namespace: str = "default") -> Client:
        c = Client(self.url, self.api_key, namespace=namespace)
        self.clients.append(c)
        return c

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30, verify=self.verify)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CUMULO_URL": self.url, "CUMULO_API_KEY": self.api_key}
        return subprocess.run(
            [CUMULO, *args], capture_output=True, text=True, env=env, input=input, timeout=120
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_platform(
    tmp: Path,
    *extra: str,
    cwd: Path | None = None,
    verify: ssl.SSLContext | bool = True,
    launcher: Sequence[str] = (),
    env: dict[str, str] | None = None,
    data_dir: Path | None = None,
) -> RunningPlatform:
    """Start `cumulo up` with its data in `data_dir` (default `tmp/data`); `launcher` is put
    before the command (it must end by exec-ing it, so the process is the platform). A
    second gateway on a shared data dir is ready when its own port answers."""
    port = free_port()
    data_dir = data_dir or tmp / "data"
    database = platform_database(data_dir)
    if database is not None and "--db" not in extra:
        extra = (*extra, "--db", database)
    if "--db" in extra and "--subject-keys-db" not in extra:
        main_db = extra[list(extra).index("--db") + 1]
        extra = (*extra, "--subject-keys-db", keys_database_for(main_db))
    log_path = tmp / "platform.log"
    with log_path.open("wb") as logfile:
        proc = subprocess.Popen(
            [
                *launcher,
                CUMULO,
                "up",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=cwd or tmp,
            env=env,
            start_new_session=True,
        )
    creds = data_dir / "credentials.json"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"cumulo up exited early:\n{log_path.read_text()}")
        if not creds.exists():
            return False
        url = json.loads(creds.read_text())["url"]
        url = f"{url.rsplit(':', 1)[0]}:{port}"  # the credentials may name another gateway
        try:
            return httpx.get(f"{url}/readyz", timeout=1, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 30, "the platform to become ready")
    except BaseException:
        # A platform that never became ready is not in any fixture's list: stop it here.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    saved = json.loads(creds.read_text())
    assert saved["url"].endswith(f":{port}")
    url = f"{saved['url'].rsplit(':', 1)[0]}:{port}"
    if "--db" in extra:
        database = extra[list(extra).index("--db") + 1]
    return RunningPlatform(
        proc, url, data_dir, saved["api_key"], log_path, verify=verify, database=database
    )


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    """One platform for the whole session, with short idle windows so scaling is observable."""
    running = start_platform(
        tmp_path_factory.mktemp("platform"),
        "--idle-timeout",
        "1",
        "--zygote-idle-timeout",
        "3",
        "--max-body-mb",
        "1",
        "--grace",
        "5",
    )
    yield running
    running.stop()


@pytest.fixture
def fresh_platform(tmp_path: Path) -> Iterator[Callable[..., RunningPlatform]]:
    """A platform of the test's own, for tests that stop or overload it."""
    started: list[RunningPlatform] = []

    def make(
        *extra: str, cwd: Path | None = None, verify: ssl.SSLContext | bool = True
    ) -> RunningPlatform:
        running = start_platform(tmp_path, *extra, cwd=cwd, verify=verify)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop(signal.SIGKILL)


@pytest.fixture
def client(platform: RunningPlatform) -> Client:
    return platform.client()


_counter = iter(range(1_000_000))


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A function name no other test uses on the shared platform."""
    base = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:40]
    return f"{base}-{next(_counter)}"
