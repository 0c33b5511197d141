"""The audit log: hash chains per namespace, an authenticated head, a registry and an anchor,
so edits, deletions, reorders, truncations and rollbacks are each detected and named."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from cumulo.security.audit import REDACTED, AuditLog, AuditReport, ChainReport, redact, row_hash
from cumulo.security.crypto import Encryptor, load_master_key, rotate_master
from cumulo.store.sqlite import SQLiteStore
from cumulo.store.sqlite_audit import SQLiteAuditRepository
from tests.conftest import RunningPlatform

API_KEY = "cmo_" + "A1b2C3d4E5" * 4 + "xyz" + "QwErTy"


def verify(log: AuditLog, namespace: str | None = None) -> AuditReport:
    """`AuditLog.verify` from synchronous test code."""
    return asyncio.run(log.verify(namespace))


class Env:
    def __init__(self, data_dir: Path, *, anchor: bool = True) -> None:
        self.data_dir = data_dir
        self.encryptor = Encryptor(load_master_key(data_dir, environ={}))
        self.store = SQLiteStore(data_dir / "cumulo.db", encryptor=self.encryptor)
        self.store.open()
        self.encryptor.open(self.store)
        self.audit = self.log(anchor=anchor)

    def log(self, *, anchor: bool = True) -> AuditLog:
        path = self.data_dir / "audit.anchor" if anchor else None
        return AuditLog(SQLiteAuditRepository(self.store), self.encryptor, anchor_path=path)

    def fill(self, namespace: str, n: int) -> None:
        for i in range(n):
            self.audit.record(
                namespace, "key_0123456789ab", "secret.set", f"NAME_{i}", "ok", "127.0.0.1"
            )
        asyncio.run(self.audit.flush())

    def tamper(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        """Edit the database behind the platform's back, as an intruder would."""
        with sqlite3.connect(self.data_dir / "cumulo.db") as db:
            for sql, args in statements:
                db.execute(sql, args)

    def chain(self, namespace: str) -> ChainReport:
        report = verify(self.audit, namespace)
        assert len(report.chains) == 1
        return report.chains[0]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    e = Env(data_dir)
    e.fill("a", 5)
    e.fill("b", 3)
    yield e
    e.store.close()


def broken(report: AuditReport) -> list[tuple[str, int | None, str | None]]:
    return [(c.namespace, c.first_bad_seq, c.reason) for c in report.chains if not c.ok]


def test_untouched_chains_verify(env: Env) -> None:
    report = verify(env.audit)
    assert report.ok, report.public()
    assert [(c.namespace, c.rows, c.head_seq) for c in report.chains] == [("a", 5, 5), ("b", 3, 3)]
    assert report.first_problem() is None
    env.fill("a", 2)  # appending to a verified chain keeps it verifying
    assert verify(env.audit).ok


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "key_mallory"),
        ("result", "denied"),
        ("details", '{"added":1}'),
        ("ts", 0.0),
        ("hash", b"\x00" * 32),
    ],
)
def test_an_edited_field_is_detected_at_its_row(env: Env, column: str, value: object) -> None:
    env.tamper(
        (f"UPDATE audit_log SET {column} = ? WHERE namespace = 'a' AND seq = 3", (value,))  # noqa: S608
    )
    chain = env.chain("a")
    assert (chain.ok, chain.first_bad_seq, chain.reason) == (False, 3, "edited")
    assert env.chain("b").ok
    report = verify(env.audit)
    assert broken(report) == [("a", 3, "edited")]
    assert report.first_problem() == (
        "namespace 'a': edited at seq 3: row 3 was altered after it was written"
    )


def test_a_deleted_middle_row_is_detected(env: Env) -> None:
    env.tamper(("DELETE FROM audit_log WHERE namespace = 'a' AND seq = 3", ()))
    assert broken(verify(env.audit)) == [("a", 3, "deleted")]


def test_a_deleted_row_with_the_rest_renumbered_is_detected(env: Env) -> None:
    env.tamper(
        ("DELETE FROM audit_log WHERE namespace = 'a' AND seq = 3", ()),
        ("UPDATE audit_log SET seq = seq - 1 WHERE namespace = 'a' AND seq > 3", ()),
    )
    chain = env.chain("a")
    assert (chain.ok, chain.first_bad_seq) == (False, 3)


def test_swapped_rows_are_detected_as_reordered(env: Env) -> None:
    env.tamper(
        ("UPDATE audit_log SET seq = -1 WHERE namespace = 'a' AND seq = 3", ()),
        ("UPDATE audit_log SET seq = 3 WHERE namespace = 'a' AND seq = 4", ()),
        ("UPDATE audit_log SET seq = 4 WHERE namespace = 'a' AND seq = -1", ()),
    )
    chain = env.chain("a")
    assert (chain.first_bad_seq, chain.reason) == (3, "reordered")
    assert chain.message == "row 3 was written after row 4"


def test_deleting_the_newest_rows_is_detected_as_truncation(env: Env) -> None:
    env.tamper(("DELETE FROM audit_log WHERE namespace = 'a' AND seq >= 4", ()))
    chain = env.chain("a")
    assert (chain.first_bad_seq, chain.reason, chain.rows) == (4, "truncated", 3)
    assert chain.message == "rows 4..5 were removed from the end"


def test_a_whole_chain_rewritten_with_fresh_hashes_is_detected(env: Env) -> None:
    rows = env.store.audit_rows("a", 0, 100)
    prev = rows[0].hash
    statements: list[tuple[str, tuple[object, ...]]] = []
    for row in rows[1:]:
        forged = dataclasses.replace(row, actor="key_mallory") if row.seq == 2 else row
        digest = row_hash(prev, forged)
        statements.append(
            (
                "UPDATE audit_log SET actor = ?, prev_hash = ?, hash = ? "
                "WHERE namespace = 'a' AND seq = ?",
                (forged.actor, prev, digest, row.seq),
            )
        )
        prev = digest
    env.tamper(*statements)
    chain = env.chain("a")
    assert (chain.ok, chain.reason) == (False, "rewritten")
    assert chain.rows == 5  # every row is self-consistent: only the head tells


def test_a_moved_head_fails_its_hmac(env: Env) -> None:
    third = env.store.audit_rows("a", 2, 1)[0]
    env.tamper(
        ("DELETE FROM audit_log WHERE namespace = 'a' AND seq > 3", ()),
        ("UPDATE audit_heads SET seq = 3, hash = ? WHERE namespace = 'a'", (third.hash,)),
    )
    chain = env.chain("a")
    assert (chain.first_bad_seq, chain.reason) == (3, "head_forged")


def test_a_replayed_old_head_with_truncated_rows_is_caught_by_the_anchor(env: Env) -> None:
    old_head = env.store.audit_heads()["a"]  # an intruder's snapshot, validly authenticated
    env.fill("a", 3)
    env.tamper(
        ("DELETE FROM audit_log WHERE namespace = 'a' AND seq > ?", (old_head.seq,)),
        (
            "UPDATE audit_heads SET seq = ?, hash = ?, mac = ? WHERE namespace = 'a'",
            (old_head.seq, old_head.hash, old_head.mac),
        ),
    )
    assert verify(env.log(anchor=False), "a").ok  # the database alone is consistent again
    chain = env.chain("a")
    assert (chain.first_bad_seq, chain.reason) == (6, "truncated")
    assert "rolled back" in chain.message
    # Later events do not move the anchor past the evidence: once the chain grows past the
    # mark again, the row at the mark is not the one the anchor recorded.
    env.fill("a", 5)
    chain = env.chain("a")
    assert (chain.ok, chain.reason) == (False, "rewritten")
    assert chain.message == "row 8 differs from the one recorded in audit.anchor"


def test_a_namespace_deleted_whole_is_detected(env: Env) -> None:
    env.tamper(
        ("DELETE FROM audit_log WHERE namespace = 'b'", ()),
        ("DELETE FROM audit_heads WHERE namespace = 'b'", ()),
    )
    report = verify(env.log(anchor=False))
    assert not report.ok
    assert report.problems == ["1 namespace chain(s) were deleted (2 recorded, 1 present)"]
    report = verify(env.audit)
    assert broken(report) == [("b", 1, "truncated")]
    env.fill("c", 1)  # a later namespace does not paper over the deleted one
    assert verify(env.log(anchor=False)).problems


def test_details_are_redacted_and_credentials_never_stored(env: Env) -> None:
    secret_values = ["s3cr3t-val", "v4lue-val", "t0ken-val", "p4ss-val", "pk-val", API_KEY]
    env.audit.record(
        "a",
        "key_0123456789ab",
        "secret.set",
        f"DB_URL with {API_KEY}",
        403,
        "10.0.0.1",
        {
            "secret": "s3cr3t-val",
            "new_value": "v4lue-val",
            "api_token": "t0ken-val",
            "Password": "p4ss-val",
            "authorization": f"Bearer {API_KEY}",
            "key_id": "key_0123456789ab",
            "secret_name": "DB_URL",
            "nested": {"private_key": "pk-val", "scopes": ["deploy"]},
            "note": f"header was {API_KEY}",
            "raw": b"bytes-are-never-kept",
            "obj": object(),
        },
    )
    asyncio.run(env.audit.flush())
    row = env.store.audit_rows("a", 5, 1)[0]
    assert row.result == "403"
    assert row.target == f"DB_URL with {REDACTED}"
    assert orjson.loads(row.details) == {
        "secret": REDACTED,
        "new_value": REDACTED,
        "api_token": REDACTED,
        "Password": REDACTED,
        "authorization": REDACTED,
        "key_id": "key_0123456789ab",
        "secret_name": "DB_URL",
        "nested": {"private_key": REDACTED, "scopes": ["deploy"]},
        "note": f"header was {REDACTED}",
        "raw": "<20 bytes>",
        "obj": "<object>",
    }
    env.store.close()
    for path in env.data_dir.iterdir():
        data = path.read_bytes()
        for value in [*secret_values, "bytes-are-never-kept"]:
            assert value.encode() not in data, path
    env.store = SQLiteStore(env.data_dir / "cumulo.db", encryptor=env.encryptor)
    env.store.open()


def test_redact_keeps_plain_metadata() -> None:
    assert redact(None) == {}
    assert redact({"status": 401, "path": "/v1/keys", "ok": False, "ratio": 0.5}) == {
        "status": 401,
        "path": "/v1/keys",
        "ok": False,
        "ratio": 0.5,
    }
    deep = redact({"a": {"b": {"c": {"d": {"e": 1}}}}})
    assert deep == {"a": {"b": {"c": {"d": "<nested>"}}}}
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3In0.c2lnbmF0dXJl"
    assert redact({"note": f"got {jwt} and Bearer abc"}) == {
        "note": f"got {REDACTED} and {REDACTED}"
    }


def test_a_flood_is_shed_and_the_shedding_recorded(tmp_path: Path) -> None:
    env = Env(tmp_path)
    audit = AuditLog(SQLiteAuditRepository(env.store), env.encryptor, max_buffer=3)
    try:
        for _ in range(5):
            audit.record("a", None, "auth.failure", "/v1/keys", "denied", "10.0.0.9")
        asyncio.run(audit.flush())
        rows = env.store.audit_rows("a", 0, 10)
        assert [r.action for r in rows] == ["auth.failure"] * 3 + ["audit.dropped"]
        audit.record("", None, "auth.failure", "/v1/keys", 401)  # no namespace: the "*" chain
        asyncio.run(audit.flush())
        assert [r.action for r in env.store.audit_rows("*", 0, 10)] == ["auth.failure"]
        assert rows[0].actor == "anonymous"
        assert rows[-1].details == '{"count":2}'
        assert verify(audit).ok
    finally:
        env.store.close()


def test_stop_flushes_what_is_buffered(tmp_path: Path) -> None:
    env = Env(tmp_path)

    async def run() -> AuditReport:
        audit = env.log()
        await audit.start()
        audit.record("a", "key_x", "function.delete", "hello", "ok", "127.0.0.1")
        await audit.stop()
        return await audit.verify_async()

    try:
        report = asyncio.run(run())
        assert report.ok
        assert [c.rows for c in report.chains] == [1]
    finally:
        env.store.close()


def test_a_master_rotation_keeps_chains_verifying_and_forgeries_forged(env: Env) -> None:
    env.tamper(("UPDATE audit_heads SET mac = zeroblob(32) WHERE namespace = 'b'", ()))
    result = rotate_master(env.store)
    assert result.audit_heads == 2  # a and the registry; b's forged head is not laundered
    assert broken(verify(env.audit)) == [("b", 3, "head_forged")]
    env.fill("a", 1)
    assert env.chain("a").ok


def test_the_platform_starts_and_stops_with_an_intact_audit_log(
    fresh_platform: Callable[..., RunningPlatform],
) -> None:
    p = fresh_platform()
    assert p.stop() == 0
    env = Env(p.data_dir)
    try:
        env.fill("default", 2)
        assert verify(env.audit).ok
        assert (p.data_dir / "audit.anchor").stat().st_mode & 0o777 == 0o600
    finally:
        env.store.close()
