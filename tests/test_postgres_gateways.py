"""`cumulo up --db postgresql://…`: gateways that share one PostgreSQL database and no disk,
a refused start on a bad `--db`, and a gateway riding out a PostgreSQL restart. (Changes
reaching the other gateway: tests/test_multi_gateway.py, which `make test` runs on
PostgreSQL too.)

Real `cumulo up` processes and a real PostgreSQL cluster (tests/pg.py); each gateway has
a data dir of its own (as on separate machines), sharing only the master key and the key
hasher's secret, which an operator copies like the admin key.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CUMULO, FUNCTIONS, RunningPlatform, start_platform, wait_until
from tests.pg import PgCluster, keys_database_for, why_unavailable

KIT = FUNCTIONS / "kit.py"
SHARED_FILES = ("master.key", "keyhash.secret", "credentials.json")

pytestmark = pytest.mark.skipif(why_unavailable() is not None, reason=str(why_unavailable()))


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A cluster of this module's own: one test stops and restarts its server."""
    started = PgCluster.start()
    try:
        yield started
    finally:
        started.stop()


def second_data_dir(first: RunningPlatform, root: Path) -> Path:
    """What an operator copies to a second machine: the keys, not the data."""
    data_dir = root / "data"
    data_dir.mkdir(mode=0o700, parents=True)
    for name in SHARED_FILES:
        shutil.copy2(first.data_dir / name, data_dir / name)
    return data_dir


def up(
    *args: str, cwd: Path, keys: str = "postgresql://127.0.0.1:1/keys"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CUMULO, "up", "--port", "0", *args, "--subject-keys-db", keys],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def gateways(
    cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningPlatform, RunningPlatform]]:
    dsn = cluster.create_database()
    root = tmp_path_factory.mktemp("pg-gateways")
    started: list[RunningPlatform] = []
    try:
        (root / "one").mkdir()
        one = start_platform(root / "one", "--db", dsn, "--idle-timeout", "2")
        started.append(one)
        (root / "two").mkdir()
        data_two = second_data_dir(one, root / "two")
        started.append(
            start_platform(root / "two", "--db", dsn, "--idle-timeout", "2", data_dir=data_two)
        )
        yield started[0], started[1]
    finally:
        for running in started:
            running.stop(signal.SIGKILL)


def test_a_function_deployed_on_one_gateway_runs_on_another_that_shares_no_disk(
    gateways: tuple[RunningPlatform, RunningPlatform], unique_name: str
) -> None:
    one, two = gateways
    assert "data in PostgreSQL" in two.log()
    one.client().deploy(KIT, name=unique_name, handler="kit.counter")
    with two.http() as http:
        first = http.post(f"/fn/default/{unique_name}", json={})
    assert first.status_code == 200, first.text  # its bundle came from the database
    with one.http() as http:
        second = http.post(f"/fn/default/{unique_name}", json={})
    assert second.status_code == 200, second.text
    assert second.json()["n"] == first.json()["n"] + 1  # one state for both gateways


@pytest.mark.parametrize(
    ("db", "message"),
    [
        (
            "mysql://app:hunter2@127.0.0.1/cumulo",
            "error: unsupported --db 'mysql://app:***@127.0.0.1/cumulo': use "
            "postgresql://USER@HOST/DB or sqlite:///PATH/TO/DATA-DIR/cumulo.db",
        ),
        (
            "postgresql://app:hunter2@127.0.0.1:1/cumulo",
            "error: the database is unavailable: connection failed: connection to server at "
            '"127.0.0.1", port 1 failed: Connection refused',
        ),
    ],
    ids=["unsupported-scheme", "unreachable"],
)
def test_a_bad_db_url_is_one_line_and_exit_1(tmp_path: Path, db: str, message: str) -> None:
    done = up("--data-dir", str(tmp_path / "data"), "--db", db, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in done.stderr + done.stdout
    assert "hunter2" not in done.stderr + done.stdout


def test_an_unknown_role_is_one_line_and_exit_1(cluster: PgCluster, tmp_path: Path) -> None:
    dsn = cluster.dsn("postgres").replace("postgres@", "nobody@", 1)
    done = up("--data-dir", str(tmp_path / "data"), "--db", dsn, cwd=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the database is unavailable: connection failed:")
    assert 'role "nobody" does not exist' in last
    assert "Traceback" not in done.stderr


def test_a_gateway_with_another_master_key_is_refused(
    gateways: tuple[RunningPlatform, RunningPlatform], tmp_path: Path
) -> None:
    one, _ = gateways
    dsn = one.log().split("data in PostgreSQL ", 1)[1].split(",", 1)[0]
    done = up(
        "--data-dir", str(tmp_path / "data"), "--db", dsn, cwd=tmp_path, keys=keys_database_for(dsn)
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "is not the one this database's data keys are wrapped with" in last
    assert last.endswith(
        "give this gateway the key the others use (CUMULO_MASTER_KEY, or their data dir's "
        "master.key)"
    )


def test_a_gateway_rides_out_a_postgres_restart(
    cluster: PgCluster, tmp_path: Path, unique_name: str
) -> None:
    gateway = start_platform(tmp_path, "--db", cluster.create_database())
    try:
        client = gateway.client()
        client.deploy(KIT, name=unique_name, handler="kit.whoami")
        with gateway.http() as http:
            accepted = http.post(f"/async/default/{unique_name}", json={"before": "outage"})
        assert accepted.status_code == 202, accepted.text
        cluster.stop_server()
        try:
            with gateway.http() as http:

                def store_down() -> bool:
                    return http.get("/readyz").status_code == 503

                wait_until(store_down, 15, "/readyz to report the outage")
                ready = http.get("/readyz")
                assert ready.json()["error"]["code"] == "store_unavailable"
                deploy = http.get("/v1/namespaces/default/functions")
                assert deploy.status_code == 503
                assert deploy.json()["error"]["code"] == "store_unavailable"
        finally:
            cluster.start_server()
        with gateway.http() as http:
            wait_until(lambda: http.get("/readyz").status_code == 200, 30, "recovery")
            job = accepted.json()["id"]

            def finished() -> bool:
                body = http.get(f"/v1/invocations/{job}").json()
                return bool(body.get("status") == "succeeded")

            wait_until(finished, 30, "the job accepted before the outage to run")
        client.deploy(KIT, name=unique_name, handler="kit.whoami", env={"AFTER": "outage"})
    finally:
        gateway.stop(signal.SIGKILL)


def test_master_rotation_is_refused_on_postgres_with_a_clear_error(
    gateways: tuple[RunningPlatform, RunningPlatform],
) -> None:
    one, _ = gateways
    with one.http() as http:
        response = http.post("/v1/master-key/rotate")
    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "not_on_this_store",
        "message": "master key rotation runs on the embedded SQLite store only; on "
        "PostgreSQL it is not available yet (docs/storage.md)",
    }


def test_a_job_on_a_sigkilled_gateway_runs_again_on_another(
    cluster: PgCluster, tmp_path: Path, unique_name: str
) -> None:
    dsn = cluster.create_database()
    (tmp_path / "one").mkdir()
    one = start_platform(tmp_path / "one", "--db", dsn)
    two: RunningPlatform | None = None
    try:
        one.client().deploy(KIT, name=unique_name, handler="kit.sleepy")
        with one.http() as http:
            accepted = http.post(f"/async/default/{unique_name}", json={"s": 3})
            assert accepted.status_code == 202, accepted.text
            job = accepted.json()["id"]
            wait_until(
                lambda: http.get(f"/v1/invocations/{job}").json()["status"] == "running",
                20,
                "gateway one to claim the job",
            )
        one.stop(signal.SIGKILL)  # mid-job: its lease is left to run out
        (tmp_path / "two").mkdir()
        two = start_platform(
            tmp_path / "two", "--db", dsn, data_dir=second_data_dir(one, tmp_path / "two")
        )
        with two.http() as http:

            def done() -> bool:
                return bool(http.get(f"/v1/invocations/{job}").json()["status"] == "succeeded")

            wait_until(done, 60, "gateway two to run the job once the lease ran out")
            record = http.get(f"/v1/invocations/{job}").json()
        # The 3 s job was running when gateway one (and its workers, which die with it)
        # was killed: only gateway two can have finished it.
        assert one.proc.returncode == -signal.SIGKILL
        assert isinstance(record["result"]["pid"], int), record
    finally:
        one.stop(signal.SIGKILL)
        if two is not None:
            two.stop(signal.SIGKILL)


def test_postgres_without_a_subject_keys_database_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            CUMULO,
            "up",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "d"),
            "--db",
            "postgresql://127.0.0.1:1/cumulo",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --db postgresql://… needs --subject-keys-db postgresql://…: a database of its "
        "own for the subject keys, so a backup of the main one never holds one "
        "(docs/privacy.md)"
    )
