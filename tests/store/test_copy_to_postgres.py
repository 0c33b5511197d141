"""`cumulo migrate`: a real platform's data dir copied into a fresh PostgreSQL database,
read back through the PostgreSQL repositories (store/copy_to_postgres.py, cli/migrate.py).

The source is one `cumulo up` per module that every room has written to (functions,
versions, traffic, keys, state, secrets, logs, invocations, metering, a queued job, the
audit chains), stopped before any copy. `cumulo` runs as a subprocess: with this
checkout's `src` on PYTHONPATH (inherited), so the command is this tree's.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import orjson
import psycopg
import pytest

from cumulo.security.crypto import (
    MASTER_ENV,
    Encryptor,
    format_master_key,
    generate_master_key,
    load_master_key,
)
from cumulo.store.alerts import Alert
from cumulo.store.copy_to_postgres import (
    COPIED,
    EMPTY_REFUSAL,
    NOT_COPIED,
    SOURCE_NOT_COPIED,
    copy_data_dir,
    covered_tables,
    masked,
)
from cumulo.store.postgres import MIGRATIONS, PostgresStore
from cumulo.store.quantum import JobRow
from cumulo.store.sqlite_alerts import SQLiteAlertRepository
from cumulo.store.sqlite_quantum import SQLiteQuantumJobRepository
from tests.conftest import CUMULO, FUNCTIONS, free_port, start_platform, wait_until
from tests.pg import PgCluster

# Its source is a SQLite platform by definition: not rerun with CUMULO_TEST_STORE=postgresql.
pytestmark = pytest.mark.sqlite_only(reason="copies a SQLite platform to PostgreSQL")

KIT = FUNCTIONS / "kit.py"
TOPIC_FNS = FUNCTIONS / "topic_fns.py"
PII = Path(__file__).parents[1] / "privacy" / "functions" / "pii.py"
SECRET = "s3cr3t-value-for-the-copy"
TICKER = """
from cumulo.sdk.schedule import schedule


@schedule("@hourly")
def tick(event, ctx):
    return {}
"""
ALERTS = [
    Alert("al-1", 1.0, "default", "function", "default/talker", ["rate_spike"], 3.5, 0, 60, {}),
    Alert("al-2", 1.0, "*", "caller", "source:1.2.3.4", ["auth_failures"], 9.0, 0, 60, {"n": 4}),
]
QUANTUM_JOB = JobRow(
    "qj-1", "default", "failed", 1.0, 2.0, 3.0, "idem-1", "h", b'{"pubs":[]}', "statevector",
    "CPU", 1024, 1, 7, 30.0, 1, [{"at": 1.0, "state": "queued", "message": "queued"}],
    {"code": "boom", "message": "it broke"}, None,
)  # fmt: skip


async def _add_embedded_rows(data_dir: Path) -> None:
    """Rows of the rooms a short run leaves empty (alerts need an anomaly, quantum jobs
    Qiskit), written through their own SQLite repositories into the platform's files."""
    alerts = SQLiteAlertRepository(data_dir / "insights.db")
    await alerts.add(ALERTS)
    await alerts.aclose()
    (data_dir / "quantum").mkdir(exist_ok=True)
    quantum = SQLiteQuantumJobRepository(data_dir / "quantum" / "quantum.db")
    await quantum.insert(QUANTUM_JOB)
    await quantum.aclose()


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # The environment is inherited (PYTHONPATH: this checkout's code), `env` added to it.
    return subprocess.run(
        [CUMULO, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped platform's data dir with rows in every room."""
    root = tmp_path_factory.mktemp("migrate-source")
    running = start_platform(root, "--idle-timeout", "5")
    try:
        admin = running.client()
        admin.deploy(KIT, name="talker", handler="kit.talk")
        admin.deploy(KIT, name="talker", handler="kit.echo")
        admin.set_traffic("talker", {1: 50, 2: 50})
        admin.deploy(KIT, name="counter", handler="kit.counter")
        (root / "ticker.py").write_text(TICKER)
        admin.deploy(root / "ticker.py", name="ticker", handler="ticker.tick")
        admin.deploy(TOPIC_FNS, name="listener", handler="topic_fns.sub_a")
        admin.set_quota(invocations=1000)
        assert admin.invoke("counter", {"key": "hits"}) == {"n": 1}
        assert admin.invoke("counter", {"key": "hits"}) == {"n": 2}
        admin.set_traffic("talker", {1: 100})
        assert admin.invoke("talker", {"order": 7}) == {"ok": True}
        admin.set_secret("API_TOKEN", SECRET)
        admin.create_key(["invoke"], name="reader")
        job = admin.invoke_async("counter", {"key": "queued"})
        wait_until(lambda: admin.async_invocation(job)["status"] == "succeeded", 30, "the job")
        wait_until(lambda: admin.logs("talker"), 10, "the log lines")
        wait_until(lambda: admin.invocations("counter"), 10, "the invocation records")
        assert admin.verify_audit()["ok"]
    finally:
        assert running.stop() == 0
    asyncio.run(_add_embedded_rows(running.data_dir))
    return running.data_dir


def _counts(stdout: str) -> dict[str, tuple[int, int]]:
    found = re.findall(r"^(\w+)\s+(\d+)\s+(\d+)\s*$", stdout, flags=re.MULTILINE)
    return {t: (int(s), int(d)) for t, s, d in found}


async def _dest_rows(dsn: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        out = {}
        for table in sorted(covered_tables() - set(NOT_COPIED)):
            cur = await conn.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
            row = await cur.fetchone()
            assert row is not None
            out[table] = int(row[0])
        return out


def test_every_postgres_table_is_copied_or_excused() -> None:
    created = {
        name
        for m in MIGRATIONS
        for name in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", m.sql)
    }
    assert created | {"schema_migrations"} == covered_tables()
    assert all(reason for reason in NOT_COPIED.values())
    assert all(reason for reason in SOURCE_NOT_COPIED.values())
    assert "privacy_consent" in {t.dest for t in COPIED}
    assert len({t.dest for t in COPIED}) == len(COPIED)


def test_masked_hides_the_password() -> None:
    assert masked("postgresql://bob:pa:ss@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert masked("postgresql://bob@db/x") == "postgresql://bob@db/x"
    assert masked("postgresql://db/x?password=hunter2&sslmode=require") == (
        "postgresql://db/x?password=***&sslmode=require"
    )


def test_migrate_copies_the_platform_and_verifies_it(source: Path, pg_dsn: str) -> None:
    proc = cli("migrate", "--from", f"sqlite://{source}", "--to", pg_dsn)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    counts = _counts(proc.stdout)
    for table in ("api_keys", "functions", "versions", "traffic_history", "state", "secrets"):
        assert counts[table][0] > 0, table
    for table in ("logs", "log_heads", "invocations", "audit_log", "audit_heads", "bundles"):
        assert counts[table][0] > 0, table
    for table in ("event_jobs", "event_schedules", "event_subscriptions", "data_keys"):
        assert counts[table][0] > 0, table
    for table in ("crypto_meta", "usage_hourly", "metering_quotas", "quantum_jobs", "ai_alerts"):
        assert counts[table][0] > 0, table
    assert all(s == d for s, d in counts.values())
    assert "not copied" not in proc.stdout  # no privacy data in this platform
    assert "audit log intact on the destination" in proc.stdout
    assert f"to {masked(pg_dsn)}" in proc.stdout

    master = load_master_key(source)

    async def read_back() -> None:
        store = PostgresStore(pg_dsn)
        await store.open()
        try:
            control = store.control
            fns = {f.name: f for f in await control.list_functions("default")}
            assert set(fns) == {"talker", "counter", "ticker", "listener"}
            assert fns["talker"].traffic == {1: 100}
            versions = await control.list_versions("default", "talker")
            assert [(v.version, v.attr) for v in versions] == [(1, "talk"), (2, "echo")]
            # The history came along: a rollback walks back to the 50/50 split.
            assert await control.rollback("default", "talker") == {1: 50, 2: 50}
            keys = await control.all_keys()
            assert "reader" in [k.name for k in keys]
            assert ("invoke",) in [k.scopes for k in keys]
            # Sealed values open with the source's master key; state ids are the same.
            enc = Encryptor(master)
            secrets = await store.secrets(enc).values("default", ["API_TOKEN"])
            assert secrets == {"API_TOKEN": SECRET.encode()}
            hits = await store.state(enc).get("default", "counter", "hits")
            assert hits is not None
            assert orjson.loads(hits.value) == 2
            lines = await store.logs(enc).query("default", "talker")
            assert any(r.message == "structured line" for _, r in lines)
            job = await store.jobs(enc).get(await _one(pg_dsn, "SELECT id FROM event_jobs"))
            assert job is not None
            assert job.status == "succeeded"
            assert orjson.loads(job.result or b"null") == {"n": 1}
            schedules = await store.jobs(enc).schedules()
            assert [(s.function, s.cron) for s in schedules] == [("ticker", "@hourly")]
            assert await store.quantum.get("qj-1") == QUANTUM_JOB
            listed = await store.alerts.list(None)
            assert sorted(listed, key=lambda a: a.id) == ALERTS
            quotas = await store.metering.all_quotas()
            assert quotas["default"].invocations == 1000
            # New rows get ids past the copied ones (else their primary keys would clash),
            # and the newest history entry is the one a rollback restores.
            await control.set_traffic("default", "talker", {2: 100})
            assert await control.rollback("default", "talker") == {1: 50, 2: 50}
        finally:
            await store.close()

    asyncio.run(read_back())


async def _one(dsn: str, sql: str) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql)
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])


def test_a_destination_with_a_platform_is_refused_and_left_alone(source: Path, pg_dsn: str) -> None:
    first = cli("migrate", "--from", str(source), "--to", pg_dsn)
    assert first.returncode == 0, first.stderr
    before = asyncio.run(_dest_rows(pg_dsn))
    again = cli("migrate", "--from", str(source), "--to", pg_dsn)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"error: {EMPTY_REFUSAL} (api_keys has rows): migrate into an empty database"
    ]
    assert asyncio.run(_dest_rows(pg_dsn)) == before


def test_a_failure_mid_copy_leaves_the_destination_empty(
    source: Path, pg_dsn: str, tmp_path: Path
) -> None:
    broken = tmp_path / "data"
    shutil.copytree(source, broken)
    with sqlite3.connect(broken / "cumulo.db") as db:
        db.execute("UPDATE logs SET message = 'plain' WHERE seq = (SELECT max(seq) FROM logs)")
    proc = cli("migrate", "--from", str(broken), "--to", pg_dsn)
    assert proc.returncode == 1
    assert "log lines from before sealing" in proc.stderr
    assert set(asyncio.run(_dest_rows(pg_dsn)).values()) == {0}  # api_keys went in first


def test_a_tampered_audit_chain_fails_the_check(source: Path, pg_dsn: str, tmp_path: Path) -> None:
    edited = tmp_path / "data"
    shutil.copytree(source, edited)
    with sqlite3.connect(edited / "cumulo.db") as db:
        db.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1")
    proc = cli("migrate", "--from", str(edited), "--to", pg_dsn)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: the audit log does not verify on the destination: ")
    assert "(recreate the database to retry)" in proc.stderr


def test_privacy_rows_without_subject_keys_need_no_key_database(
    source: Path, pg_dsn: str, tmp_path: Path
) -> None:
    private = tmp_path / "data"
    shutil.copytree(source, private)
    with sqlite3.connect(private / "cumulo.db") as db:
        db.execute("INSERT INTO privacy_retention (namespace, ttl_s) VALUES ('default', 60)")
    proc = cli("migrate", "--from", str(private), "--to", pg_dsn)
    assert proc.returncode == 0, proc.stderr
    assert _counts(proc.stdout)["privacy_retention"] == (1, 1)
    assert "not copied" not in proc.stdout


SUBJECT = "user:migrated-mia"
CANARY = "CANARY-MIA-5e1d"


@pytest.fixture(scope="module")
def private_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped platform whose data subjects have state, logs, invocations and consent
    (so subject-keys.db holds their keys)."""
    root = tmp_path_factory.mktemp("migrate-private")
    running = start_platform(root, "--idle-timeout", "5")
    try:
        admin = running.client()
        for name in ("profile", "newsletter"):
            admin.deploy(PII, name=name, handler=f"pii.{name}")
        with running.http() as http:
            headers = {"x-cumulo-subject": SUBJECT}
            r = http.post("/fn/default/profile", json={"canary": CANARY}, headers=headers)
            assert r.status_code == 200, r.text
            grant = {"subject": SUBJECT, "purpose": "marketing", "action": "grant"}
            assert http.post("/v1/privacy/consent", json=grant).status_code == 201
    finally:
        assert running.stop() == 0
    return running.data_dir


def test_subject_keys_need_a_key_database_of_their_own(private_source: Path, pg_dsn: str) -> None:
    proc = cli("migrate", "--from", str(private_source), "--to", pg_dsn)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: the data dir holds 1 subject keys: pass --subject-keys-to postgresql://… "
        "(a database of their own, docs/privacy.md)"
    ]
    assert set(asyncio.run(_dest_rows(pg_dsn)).values()) == {0}
    same = cli(
        "migrate", "--from", str(private_source), "--to", pg_dsn, "--subject-keys-to", pg_dsn
    )
    assert same.returncode == 1
    assert "give subject keys a database of their own" in same.stderr
    assert set(asyncio.run(_dest_rows(pg_dsn)).values()) == {0}  # nothing half-copied


def test_data_subjects_move_with_their_keys_and_open_on_postgres(
    private_source: Path, pg_dsn: str, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    keys_dsn = pg_cluster.create_database()
    proc = cli(
        "migrate", "--from", str(private_source), "--to", pg_dsn, "--subject-keys-to", keys_dsn
    )
    assert proc.returncode == 0, proc.stderr
    counts = _counts(proc.stdout)
    assert counts["subject_keys"] == (1, 1)
    for table in ("privacy_state", "privacy_logs", "privacy_invocations", "privacy_consent"):
        assert counts[table][0] > 0, table
        assert counts[table][0] == counts[table][1], table
    # Another platform on the copy: the subject's data opens, under the same pseudonym.
    data = tmp_path / "data"
    shutil.copytree(private_source, data)
    running = start_platform(tmp_path, "--db", pg_dsn, "--subject-keys-db", keys_dsn, data_dir=data)
    try:
        with running.http() as http:
            headers = {"x-cumulo-subject": SUBJECT}
            gated = http.post("/fn/default/newsletter", json={}, headers=headers)
            assert gated.status_code == 200, gated.text  # the consent came along
            r = http.post("/v1/privacy/requests", json={"type": "access", "subject": SUBJECT})
            assert r.status_code == 201, r.text
            export = http.get(f"/v1/privacy/requests/{r.json()['id']}/export").json()
        assert CANARY in orjson.dumps(export["state"]).decode()
        assert CANARY in orjson.dumps(export["logs"]).decode()
        assert export["manifest"]["consent"] == 1
    finally:
        running.stop()
    again = cli(
        "migrate", "--from", str(private_source), "--to", pg_cluster.create_database(),
        "--subject-keys-to", keys_dsn,
    )  # fmt: skip
    assert again.returncode == 1
    assert "holds subject keys already: migrate into an empty one" in again.stderr


def test_an_unmapped_postgres_table_is_refused(source: Path, pg_dsn: str) -> None:
    async def main() -> None:
        store = PostgresStore(pg_dsn)
        await store.open()
        try:
            async with store.connection() as conn:
                await conn.execute("CREATE TABLE future_room (id text)")
            with pytest.raises(Exception, match="future_room has no mapping"):
                await copy_data_dir(source, store)
        finally:
            await store.close()

    asyncio.run(main())
    assert set(asyncio.run(_dest_rows(pg_dsn)).values()) == {0}


def test_an_unmapped_sqlite_table_is_refused(source: Path, pg_dsn: str, tmp_path: Path) -> None:
    grown = tmp_path / "data"
    shutil.copytree(source, grown)
    with sqlite3.connect(grown / "cumulo.db") as db:
        db.execute("CREATE TABLE future_thing (id TEXT)")
    proc = cli("migrate", "--from", str(grown), "--to", pg_dsn)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: SQLite table cumulo.db:future_thing has no mapping in cumulo migrate "
        "(store/copy_to_postgres.py): nothing was copied"
    )


def test_from_defaults_to_the_default_data_dir(source: Path, pg_dsn: str, tmp_path: Path) -> None:
    (tmp_path / ".cumulo").symlink_to(source)  # what `cumulo up` uses without --data-dir
    proc = cli("migrate", "--to", pg_dsn, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"copied {source}" in proc.stdout


def test_a_database_the_server_refuses_is_one_line(source: Path, pg_dsn: str) -> None:
    # The test cluster trusts every login, so a wrong password cannot be staged: a missing
    # database is refused by the server at the same step.
    missing = pg_dsn.rsplit("/", 1)[0] + "/no_such_database"
    proc = cli("migrate", "--from", str(source), "--to", missing)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert 'database "no_such_database" does not exist' in lines[0]


def test_an_unreachable_database_is_one_line_without_the_password(source: Path) -> None:
    dsn = f"postgresql://cumulo:hunter2secret@127.0.0.1:{free_port()}/cumulo"
    proc = cli("migrate", "--from", str(source), "--to", dsn)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: the database is unavailable")
    assert "hunter2secret" not in proc.stderr + proc.stdout


def test_the_source_master_key_is_needed_and_checked(source: Path, tmp_path: Path) -> None:
    other = {MASTER_ENV: format_master_key(generate_master_key())}
    proc = cli("migrate", "--from", str(source), "--to", "postgresql://127.0.0.1:1/x", env=other)
    assert proc.returncode == 1
    assert "is not the one that wraps this database's data keys" in proc.stderr
    keyless = tmp_path / "data"
    shutil.copytree(source, keyless)
    (keyless / "master.key").unlink()
    proc = cli("migrate", "--from", str(keyless), "--to", "postgresql://127.0.0.1:1/x")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: no master key: {keyless / 'master.key'} is missing and {MASTER_ENV} is not set"
    )
    assert not (keyless / "master.key").exists()  # not created by the attempt


def test_a_data_dir_that_is_not_sqlite_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cumulo.db").write_bytes(b"not a database, not at all" * 100)
    proc = cli("migrate", "--from", str(tmp_path), "--to", "postgresql://127.0.0.1:1/x")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot read {tmp_path / 'cumulo.db'}: file is not a database"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "{empty}"), "is not a cumulo data dir"),
        (("--from", "sqlite://relative/dir"), "--from takes sqlite:///"),
        (("--to", "mysql://u:pw@h/db"), "--to takes a postgresql:// URL"),
        (("--to", "postgresql://h/db?bogus=1"), "--to is not a valid PostgreSQL URL"),
    ],
)
def test_bad_input_is_one_line(
    source: Path, tmp_path: Path, args: tuple[str, str], message: str
) -> None:
    options = {"--from": str(source), "--to": "postgresql://127.0.0.1:1/x"}
    options[args[0]] = args[1].format(empty=tmp_path)
    proc = cli("migrate", *(x for kv in options.items() for x in kv))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
