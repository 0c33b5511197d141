"""Encryption at rest: the key hierarchy, the ciphertext format, master and data-key rotation,
and a real platform whose data dir never holds a canary value in plaintext."""

from __future__ import annotations

import base64
import secrets
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cumulo.errors import ConfigError
from cumulo.security import crypto
from cumulo.security.crypto import (
    HEADER_LEN,
    MAGIC,
    MASTER_ENV,
    CryptoError,
    Encryptor,
    MasterKey,
    load_master_key,
    parse_header,
    parse_master_key,
    rotate_data_key,
    rotate_master,
)
from cumulo.store.sqlite import SQLiteStore
from tests.conftest import FUNCTIONS, RunningPlatform

VAULT = FUNCTIONS / "vault.py"


def open_store(data_dir: Path, master: MasterKey | None) -> SQLiteStore:
    encryptor = Encryptor(master) if master is not None else None
    store = SQLiteStore(data_dir / "cumulo.db", encryptor=encryptor)
    store.open()
    if encryptor is not None:
        encryptor.open(store)
    return store


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def store(data_dir: Path) -> Iterator[SQLiteStore]:
    s = open_store(data_dir, load_master_key(data_dir, environ={}))
    yield s
    s.close()


def raw_value(db_path: Path, table: str, where: str, args: tuple[str, ...]) -> bytes:
    with sqlite3.connect(db_path) as db:
        row = db.execute(f"SELECT value FROM {table} WHERE {where}", args).fetchone()  # noqa: S608
    return bytes(row[0])


# ---------------------------------------------------------------- the master key
def test_master_keys_parse_from_hex_and_base64_and_errors_never_echo_them() -> None:
    key = secrets.token_bytes(32)
    assert parse_master_key(key.hex()) == key
    assert parse_master_key(base64.b64encode(key).decode() + "\n") == key
    assert parse_master_key(base64.urlsafe_b64encode(key).decode().rstrip("=")) == key
    for bad in (key.hex()[:-2], base64.b64encode(key[:31]).decode(), "not a key at all", ""):
        with pytest.raises(ConfigError) as info:
            parse_master_key(bad)
        assert MASTER_ENV in str(info.value)
        if bad:
            assert bad not in str(info.value)


def test_the_key_file_is_created_0600_once_and_a_looser_one_is_refused(data_dir: Path) -> None:
    first = load_master_key(data_dir, environ={})
    path = data_dir / "master.key"
    assert first.source == "file"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_master_key(data_dir, environ={}).key_id == first.key_id
    text = path.read_text()
    assert text.strip() not in repr(first)
    with pytest.raises(FileExistsError):  # a second creator never replaces the first key
        crypto.write_key_file(path, secrets.token_bytes(32), exclusive=True)
    assert load_master_key(data_dir, environ={}).key_id == first.key_id
    assert sorted(p.name for p in data_dir.iterdir()) == ["master.key"]
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_master_key(data_dir, environ={})


def test_an_env_master_key_wins_and_writes_no_file(data_dir: Path) -> None:
    key = secrets.token_bytes(32)
    master = load_master_key(data_dir, environ={MASTER_ENV: base64.b64encode(key).decode()})
    assert master.source == "env"
    assert master.key_id == MasterKey(key, "memory").key_id
    assert not (data_dir / "master.key").exists()
    with pytest.raises(ConfigError, match=MASTER_ENV):
        load_master_key(data_dir, environ={MASTER_ENV: "0123"})


# ---------------------------------------------------------------- values
def test_values_round_trip_and_are_ciphertext_at_rest(store: SQLiteStore) -> None:
    canary = b'"canary-' + secrets.token_hex(8).encode() + b'"'
    assert store.state_put("ns", "fn", "doc", canary, None, 1.0) == (True, 1)
    assert store.state_put("ns", "fn", "doc", canary, 1, 2.0) == (True, 2)
    assert store.state_put("ns", "fn", "doc", b"1", 1, 3.0) == (False, 2)
    record = store.state_get("ns", "fn", "doc")
    assert record is not None
    assert (record.value, record.version) == (canary, 2)
    assert store.state_incr("ns", "fn", "n", 2, 1.0) == (2, 1)
    assert store.state_incr("ns", "fn", "n", 3, 1.0) == (5, 2)
    store.secret_set("ns", "TOKEN", canary, 1.0)
    assert store.secret_values("ns", ["TOKEN", "MISSING"]) == {"TOKEN": canary}

    rows = store.encrypted_rows()
    assert {(r.table, r.item) for r in rows} == {
        ("state", ("fn", "doc")),
        ("state", ("fn", "n")),
        ("secrets", ("TOKEN",)),
    }
    for row in rows:
        header = parse_header(row.value)
        assert header is not None, row
        assert row.value.startswith(MAGIC)
        assert (header.kind, header.key_version) == (0, 1)
        assert canary not in row.value
        assert len(row.value) > HEADER_LEN + 16  # header, ciphertext, 16-byte GCM tag
    # Two encryptions of one value differ (a fresh nonce each time).
    store.secret_set("ns", "OTHER", canary, 1.0)
    values = {r.item: r.value for r in store.encrypted_rows()}
    assert values[("TOKEN",)] != values[("OTHER",)]


def test_a_ciphertext_moved_to_another_row_or_altered_fails_to_decrypt(store: SQLiteStore) -> None:
    store.state_put("ns", "fn", "a", b'"alpha-plain"', None, 1.0)
    store.state_put("ns", "fn", "b", b'"beta-plain"', None, 1.0)
    store.state_put("other", "fn", "a", b'"gamma-plain"', None, 1.0)
    store.secret_set("ns", "S", b"secret-plain", 1.0)
    db = store.db

    def expect_failure(call: Callable[[], object]) -> None:
        with pytest.raises(CryptoError) as info:
            call()
        assert "plain" not in str(info.value)

    # Rows are stored under keyed hashes of their names (state_id), not the names.
    ns_a, ns_b = store.state_id("ns", "fn", "a"), store.state_id("ns", "fn", "b")
    other_a = store.state_id("other", "fn", "a")
    assert "a" not in (ns_a, ns_b, other_a)
    assert ns_a != other_a

    # Another key of the same function.
    a = raw_value(store.path, "state", "namespace = ? AND key = ?", ("ns", ns_a))
    db.execute("UPDATE state SET value = ? WHERE namespace = 'ns' AND key = ?", (a, ns_b))
    expect_failure(lambda: store.state_get("ns", "fn", "b"))
    # The same key in another namespace.
    db.execute("UPDATE state SET value = ? WHERE namespace = 'other' AND key = ?", (a, other_a))
    expect_failure(lambda: store.state_get("other", "fn", "a"))
    # A state value presented as a secret.
    db.execute("UPDATE secrets SET value = ? WHERE name = 'S'", (a,))
    expect_failure(lambda: store.secret_values("ns", ["S"]))
    # One flipped bit in the ciphertext, then in the header's key version.
    for offset in (len(a) - 1, len(MAGIC) + 5):
        flipped = bytearray(a)
        flipped[offset] ^= 1
        db.execute("UPDATE state SET value = ? WHERE namespace = 'ns' AND key = ?", (flipped, ns_a))
        expect_failure(lambda: store.state_get("ns", "fn", "a"))
    # A plaintext slipped in behind the encryptor's back is refused, not served.
    db.execute("UPDATE state SET value = ? WHERE namespace = 'ns' AND key = ?", (b'"x"', ns_a))
    expect_failure(lambda: store.state_get("ns", "fn", "a"))
    # A sealed key name moved to another row does not open either.
    name_a = db.execute("SELECT key_sealed FROM state WHERE key = ?", (ns_a,)).fetchone()[0]
    db.execute("UPDATE state SET key_sealed = ? WHERE key = ?", (name_a, ns_b))
    expect_failure(lambda: store.state_list("ns", "fn", "", 10))


def test_incr_decrypts_adds_and_encrypts_in_its_transaction(store: SQLiteStore) -> None:
    for i in range(1, 6):
        assert store.state_incr("fresh-ns", "fn", "hits", 1, float(i)) == (i, i)
    store.state_put("fresh-ns", "fn", "text", b'"abc"', None, 1.0)
    with pytest.raises(ValueError, match="abc"):
        store.state_incr("fresh-ns", "fn", "text", 1, 1.0)
    assert not store.db.in_transaction
    record = store.state_get("fresh-ns", "fn", "hits")
    assert record is not None
    assert record.value == b"5"


def test_data_key_rotation_keeps_old_values_readable(data_dir: Path, store: SQLiteStore) -> None:
    store.state_put("ns", "fn", "old", b"1", None, 1.0)
    assert rotate_data_key(store, "ns") == 2
    store.state_put("ns", "fn", "new", b"2", None, 1.0)
    versions = {}
    for row in store.encrypted_rows():
        header = parse_header(row.value)
        assert header is not None
        versions[row.item] = header.key_version
    assert versions == {("fn", "old"): 1, ("fn", "new"): 2}
    # A fresh encryptor (empty cache) unwraps both versions from the database.
    store.close()
    reopened = open_store(data_dir, load_master_key(data_dir, environ={}))
    try:
        old, new = reopened.state_get("ns", "fn", "old"), reopened.state_get("ns", "fn", "new")
        assert old is not None
        assert new is not None
        assert (old.value, new.value) == (b"1", b"2")
    finally:
        reopened.close()


def test_legacy_plaintext_rows_are_encrypted_when_encryption_starts(data_dir: Path) -> None:
    plain = open_store(data_dir, None)
    plain.state_put("ns", "fn", "doc", b'"legacy-plain"', None, 1.0)
    plain.secret_set("ns", "S", b"legacy-secret", 1.0)
    plain.close()
    store = open_store(data_dir, load_master_key(data_dir, environ={}))
    try:
        assert all(parse_header(r.value) is not None for r in store.encrypted_rows())
        record = store.state_get("ns", "fn", "doc")
        assert record is not None
        assert record.value == b'"legacy-plain"'
        assert store.secret_values("ns", ["S"]) == {"S": b"legacy-secret"}
    finally:
        store.close()


# ---------------------------------------------------------------- master rotation
def test_rotate_master_rewraps_every_data_key(data_dir: Path, store: SQLiteStore) -> None:
    for ns in ("a", "b"):
        store.state_put(ns, "fn", "k", b'"v"', None, 1.0)
        store.secret_set(ns, "S", b"s", 1.0)
    rotate_data_key(store, "a")
    assert store.encryptor is not None
    old = load_master_key(data_dir, environ={})
    old_file = (data_dir / "master.key").read_text()

    result = rotate_master(store)

    assert (result.old_key_id, result.data_keys) == (old.key_id, 3)
    assert result.new_key_id != old.key_id
    assert result.key_file == str(data_dir / "master.key")
    assert not result.env_update_needed
    assert (data_dir / "master.key").read_text() != old_file
    assert (data_dir / "master.key").stat().st_mode & 0o777 == 0o600
    assert not (data_dir / "master.key.next").exists()
    # The running store keeps serving, and writes a brand-new namespace under the new master.
    assert store.secret_values("a", ["S"]) == {"S": b"s"}
    store.secret_set("c", "S", b"t", 1.0)
    # The old master unwraps none of the data keys any more.
    for row in store.all_data_keys():
        assert row.master_id == result.new_key_id
        with pytest.raises(CryptoError):
            old.unwrap(row.wrapped, row.namespace, row.version)
    store.close()
    # Reopened with the key file: everything reads. With the old key: a clear refusal.
    reopened = open_store(data_dir, load_master_key(data_dir, environ={}))
    try:
        for ns, value in (("a", b"s"), ("b", b"s"), ("c", b"t")):
            assert reopened.secret_values(ns, ["S"]) == {"S": value}
    finally:
        reopened.close()
    env = {MASTER_ENV: old_file.strip()}
    with pytest.raises(ConfigError, match=f"{old.key_id}.*{result.new_key_id}"):
        open_store(data_dir, load_master_key(data_dir, environ=env))


def test_a_rotation_that_crashed_after_its_commit_is_finished_at_start(
    data_dir: Path, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.secret_set("ns", "S", b"s", 1.0)

    real_replace = crypto.os.replace

    def crash(src: Path, dst: Path) -> None:
        if str(src).endswith(".next"):  # the rename that follows the commit
            raise OSError("simulated crash before the key file rename")
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(crypto.os, "replace", crash)
        with pytest.raises(OSError, match="simulated"):
            rotate_master(store)
    new_id = store.crypto_meta_get("master_id")
    assert (data_dir / "master.key.next").exists()
    store.close()
    reopened = open_store(data_dir, load_master_key(data_dir, environ={}))
    try:
        assert reopened.secret_values("ns", ["S"]) == {"S": b"s"}
        assert reopened.encryptor is not None
        assert load_master_key(data_dir, environ={}).key_id == new_id
        assert not (data_dir / "master.key.next").exists()
    finally:
        reopened.close()


def test_a_rotation_that_failed_before_its_commit_changes_nothing(
    data_dir: Path, store: SQLiteStore
) -> None:
    store.secret_set("ns", "S", b"s", 1.0)
    before = (data_dir / "master.key").read_text()
    store.db.execute("UPDATE data_keys SET wrapped = X'00'")  # unwrappable: the rotation fails
    with pytest.raises(CryptoError):
        rotate_master(store)
    assert (data_dir / "master.key").read_text() == before
    assert not (data_dir / "master.key.next").exists()
    assert store.crypto_meta_get("master_id") == load_master_key(data_dir, environ={}).key_id


def test_an_env_master_is_rotated_only_to_a_given_key(data_dir: Path) -> None:
    first, second = secrets.token_bytes(32), secrets.token_bytes(32)
    store = open_store(data_dir, MasterKey(first, "env"))
    try:
        store.secret_set("ns", "S", b"s", 1.0)
        with pytest.raises(ConfigError, match=MASTER_ENV):
            rotate_master(store)
        result = rotate_master(store, second)
        assert result.env_update_needed
        assert result.key_file is None
    finally:
        store.close()
    reopened = open_store(data_dir, MasterKey(second, "env"))
    try:
        assert reopened.secret_values("ns", ["S"]) == {"S": b"s"}
    finally:
        reopened.close()


# ---------------------------------------------------------------- a real platform
def deploy_vault(p: RunningPlatform) -> None:
    client = p.client()
    for handler in ("vault", "reveal"):
        client.deploy(VAULT, name=handler, handler=f"vault.{handler}")


def files_holding(data_dir: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in data_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path.name}: {n.decode()}" for n in needles if n in data]
    return hits


@pytest.mark.sqlite_only(
    reason="scans cumulo.db and its WAL; on PostgreSQL: tests/store sealing tests"
)
def test_canary_values_never_reach_the_data_dir_in_plaintext(
    fresh_platform: Callable[..., RunningPlatform],
) -> None:
    state_canary = "canary-state-" + secrets.token_hex(12)
    secret_canary = "canary-secret-" + secrets.token_hex(12)
    p = fresh_platform()
    deploy_vault(p)
    client = p.client()
    client.set_secret("CANARY_SECRET", secret_canary)
    assert client.invoke(
        "vault", {"op": "keep", "key": "doc", "value": {"note": state_canary}}
    ) == {"count": 1}
    assert client.invoke("vault", {"key": "doc"})["value"] == {"note": state_canary}
    assert client.invoke("reveal") == {"secret": secret_canary}
    db_files = sorted(f.name for f in p.data_dir.glob("cumulo.db*"))
    assert "cumulo.db-wal" in db_files  # the live database has its WAL: grep it too
    needles = [state_canary.encode(), secret_canary.encode()]
    assert files_holding(p.data_dir, needles) == []
    assert p.stop() == 0
    assert files_holding(p.data_dir, needles) == []
    assert (p.data_dir / "master.key").stat().st_mode & 0o777 == 0o600

    again = fresh_platform()  # the same data dir, so the same master key file
    client = again.client()
    assert client.invoke("vault", {"key": "doc"}) == {
        "value": {"note": state_canary},
        "writes": 1,
    }
    assert client.invoke("reveal") == {"secret": secret_canary}


@pytest.mark.sqlite_only(reason="pins the SQLite message; on PostgreSQL: test_postgres_gateways.py")
def test_a_platform_with_an_env_master_key_refuses_another_one(
    fresh_platform: Callable[..., RunningPlatform], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv(MASTER_ENV, first)
    p = fresh_platform()
    deploy_vault(p)
    p.client().set_secret("CANARY_SECRET", "env-kept")
    assert p.client().invoke("reveal") == {"secret": "env-kept"}
    assert p.stop() == 0
    assert not (p.data_dir / "master.key").exists()

    second = secrets.token_hex(32)
    monkeypatch.setenv(MASTER_ENV, second)
    with pytest.raises(AssertionError, match="exited early") as info:
        fresh_platform()
    message = str(info.value)
    assert "is not the one that wraps this database's data keys" in message
    assert first not in message
    assert second not in message


@pytest.mark.sqlite_only(reason="rotates the SQLite store offline")
def test_rotate_master_offline_then_the_platform_reads_everything(
    fresh_platform: Callable[..., RunningPlatform],
) -> None:
    p = fresh_platform()
    deploy_vault(p)
    client = p.client()
    client.set_secret("CANARY_SECRET", "before-rotation")
    client.invoke("vault", {"op": "keep", "key": "doc", "value": [1, 2, 3]})
    assert p.stop() == 0
    old = load_master_key(p.data_dir, environ={})

    store = open_store(p.data_dir, old)
    try:
        result = rotate_master(store)
        wrapped = store.all_data_keys()
    finally:
        store.close()
    # default's, and the reserved `_sigv4` namespace's (the admin key's sealed SigV4 secret)
    assert result.data_keys == len(wrapped) == 2
    assert {row.namespace for row in wrapped} == {"default", "_sigv4"}
    for row in wrapped:
        with pytest.raises(CryptoError):
            old.unwrap(row.wrapped, row.namespace, row.version)

    again = fresh_platform()
    client = again.client()
    assert client.invoke("reveal") == {"secret": "before-rotation"}
    assert client.invoke("vault", {"key": "doc"})["value"] == [1, 2, 3]
    assert again.stop(signal.SIGTERM) == 0
