"""Plaintext at rest (issue 15, finding 9): a tenant's state key names and values, log
lines, async job bodies, results and dead-letter errors are sealed under the namespace key.
The attack is a copy of the data dir (a backup, a stolen disk): it must hold none of them,
while the API and CLI still read every one back."""

from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from cumulo.security.crypto import Encryptor, load_master_key
from cumulo.store.base import LogRecord
from cumulo.store.sqlite import SQLiteStore
from tests.conftest import start_platform, wait_until

HOSTILE = Path(__file__).parent.parent / "functions" / "hostile"


def every_byte_under(root: Path) -> bytes:
    """Every file in the data dir: cumulo.db, its -wal and -shm, keys, code, everything."""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def _finished(h: httpx.Client, job_id: str) -> dict[str, object]:
    def done() -> bool:
        return h.get(f"/v1/invocations/{job_id}").json()["status"] in ("succeeded", "dead")

    wait_until(done, 30, f"job {job_id}")
    return dict(h.get(f"/v1/invocations/{job_id}").json())


@pytest.mark.sqlite_only(
    reason="scans the data dir's SQLite files; on PostgreSQL the data is in the database"
)
def test_copy_of_the_data_dir_holds_no_tenant_plaintext(tmp_path: Path) -> None:
    p = start_platform(tmp_path)
    seed = "zq" + secrets.token_hex(6)
    try:
        p.client().deploy(HOSTILE / "disk_at_rest.py", name="at-rest")
        with p.http() as h:
            # An async job: its body carries the seed; the function writes state under a
            # name made from it, logs it, prints it and returns it.
            r = h.post("/async/default/at-rest", json={"seed": seed, "note": f"{seed}-BODY"})
            assert r.status_code == 202, r.text
            job = _finished(h, r.json()["id"])
            assert job["status"] == "succeeded"
            assert job["result"] == {"result": f"{seed}-RESULT"}
            # A dead letter whose error holds the seed.
            r = h.post("/async/default/at-rest", json={"seed": seed, "op": "fail"})
            dead = _finished(h, r.json()["id"])
            assert dead["status"] == "dead"
            letters = h.get("/v1/namespaces/default/dead-letters").json()["dead_letters"]
            assert any(f"{seed}-ERROR" in str(d["error"]) for d in letters)
            # State by name, incr and list still work.
            read = h.post("/fn/default/at-rest", json={"seed": seed, "op": "read"}).json()
            assert read == {
                "value": f"{seed}-VALUE",
                "hits": 1,
                "keys": sorted([f"{seed}-COUNTER", f"{seed}-KEY"]),
            }
        logs = p.cli("logs", "at-rest", "--limit", "50")
        assert logs.returncode == 0, logs.stderr
        for shown in (f"{seed}-LOGLINE", f"{seed}-PRINTED", f"{seed}-FIELD"):
            assert shown in logs.stdout, shown
        time.sleep(0.5)  # the recorder's flush interval: every line is on disk now
    finally:
        p.stop()
    # Stopped: nothing is left in memory only. Every file, the WAL included, byte-scanned.
    raw = every_byte_under(p.data_dir)
    assert len(raw) > 100_000
    assert seed.encode() not in raw
    assert seed.encode("utf-16-le") not in raw


def test_rows_written_in_clear_by_an_older_build_are_sealed_at_start(tmp_path: Path) -> None:
    """Migration at start, idempotent: a database from before sealing keeps working and
    stops holding its plaintext."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    seed = "old" + secrets.token_hex(6)
    plain = SQLiteStore(data_dir / "cumulo.db")  # no encryptor: how the old rows look
    plain.open()
    plain.state_put("ns", "fn", f"{seed}-key", b'"v"', None, 1.0)
    plain.append_logs([LogRecord("ns", "fn", 1, "i1", 1.0, "info", f"{seed}-line", {"k": 1})])
    plain.db.execute(
        "CREATE TABLE event_jobs (id TEXT PRIMARY KEY, namespace TEXT, function TEXT, "
        "body BLOB, result BLOB, error TEXT)"
    )
    plain.db.execute(
        "INSERT INTO event_jobs VALUES ('j1', 'ns', 'fn', ?, ?, ?)",
        (f'{{"b":"{seed}-body"}}'.encode(), f"{seed}-result".encode(), f'"{seed}-error"'),
    )
    plain.close()

    for _ in range(2):  # twice: the second start finds nothing left to seal
        encryptor = Encryptor(load_master_key(data_dir, environ={}))
        store = SQLiteStore(data_dir / "cumulo.db", encryptor=encryptor)
        store.open()
        encryptor.open(store)
        try:
            record = store.state_get("ns", "fn", f"{seed}-key")
            assert record is not None
            assert record.value == b'"v"'
            assert store.state_list("ns", "fn", seed, 10) == [f"{seed}-key"]
            [(_, line)] = store.query_logs("ns", "fn")
            assert (line.message, line.fields) == (f"{seed}-line", {"k": 1})
            assert store.seal_legacy_rows() == {"state_keys": 0, "logs": 0, "jobs": 0}
            store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            store.db.execute("VACUUM")
        finally:
            store.close()
    with sqlite3.connect(data_dir / "cumulo.db") as db:
        body, result, error = db.execute("SELECT body, result, error FROM event_jobs").fetchone()
    assert all(isinstance(v, bytes) and v.startswith(b"\xffCM") for v in (body, result, error))
    assert seed.encode() not in every_byte_under(data_dir)
