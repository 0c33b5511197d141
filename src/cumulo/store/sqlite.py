"""SQLite backend: one connection, owned by one thread; callers await `store.call(...)`."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

import orjson

from cumulo.store.base import (
    ApiKeyRecord,
    FunctionRecord,
    InvocationRecord,
    LogRecord,
    StateRecord,
    VersionRecord,
)

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL, key_hash BLOB UNIQUE,
    scopes TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL);
CREATE TABLE IF NOT EXISTS functions (
    namespace TEXT NOT NULL, name TEXT NOT NULL, created_at REAL NOT NULL,
    traffic TEXT NOT NULL, next_version INTEGER NOT NULL,
    PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS traffic_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, function TEXT NOT NULL,
    traffic TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    namespace TEXT NOT NULL, function TEXT NOT NULL, version INTEGER NOT NULL,
    bundle_sha TEXT NOT NULL, module TEXT NOT NULL, attr TEXT NOT NULL, kind TEXT NOT NULL,
    config TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (namespace, function, version));
CREATE TABLE IF NOT EXISTS state (
    namespace TEXT NOT NULL, function TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    version INTEGER NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, function, key));
CREATE TABLE IF NOT EXISTS secrets (
    namespace TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, function TEXT NOT NULL,
    version INTEGER NOT NULL, invocation_id TEXT NOT NULL, ts REAL NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL, fields TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs (namespace, function, seq);
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, function TEXT NOT NULL,
    version INTEGER NOT NULL, status INTEGER NOT NULL, code TEXT NOT NULL, cold INTEGER NOT NULL,
    started_at REAL NOT NULL, duration_ms REAL NOT NULL);
CREATE INDEX IF NOT EXISTS invocations_by_function
    ON invocations (namespace, function, started_at);
CREATE TABLE IF NOT EXISTS crypto_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS data_keys (
    namespace TEXT NOT NULL, version INTEGER NOT NULL, master_id TEXT NOT NULL,
    wrapped BLOB NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (namespace, version));
CREATE TABLE IF NOT EXISTS audit_log (
    namespace TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, result TEXT NOT NULL, source TEXT NOT NULL,
    details TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (namespace, seq));
CREATE INDEX IF NOT EXISTS audit_log_by_hash ON audit_log (namespace, hash);
CREATE TABLE IF NOT EXISTS audit_heads (
    namespace TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash BLOB NOT NULL, mac BLOB NOT NULL);
"""


def _traffic_to_json(traffic: dict[int, int]) -> str:
    return orjson.dumps({str(v): w for v, w in traffic.items()}).decode()


def _traffic_from_json(raw: str) -> dict[int, int]:
    return {int(v): int(w) for v, w in orjson.loads(raw).items()}


class ValueCipher(Protocol):
    """Encrypts state values and secrets at rest (security.crypto.Encryptor). `item` names
    the row (function and key, or secret name) and is bound to the ciphertext."""

    def prepare(self, store: SQLiteStore, namespace: str) -> None: ...

    def encrypt(
        self, store: SQLiteStore, namespace: str, purpose: str, item: tuple[str, ...], data: bytes
    ) -> bytes: ...

    def decrypt(
        self, store: SQLiteStore, namespace: str, purpose: str, item: tuple[str, ...], blob: bytes
    ) -> bytes: ...


class SQLiteStore:
    def __init__(self, path: Path, encryptor: ValueCipher | None = None) -> None:
        self.path = path
        self.encryptor = encryptor
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------ plumbing
    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA cache_size=-65536")
        conn.executescript(SCHEMA)
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._executor.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    # ------------------------------------------------------------ api keys
    def insert_key(self, record: ApiKeyRecord) -> None:
        self.db.execute(
            "INSERT INTO api_keys VALUES (?,?,?,?,?,?,?,?)",
            (
                record.id,
                record.namespace,
                record.name,
                record.key_hash,
                ",".join(record.scopes),
                record.created_at,
                record.expires_at,
                record.revoked_at,
            ),
        )

    def all_keys(self) -> list[ApiKeyRecord]:
        rows = self.db.execute(
            "SELECT id, namespace, name, scopes, created_at, expires_at, revoked_at, key_hash "
            "FROM api_keys ORDER BY created_at"
        ).fetchall()
        return [
            ApiKeyRecord(
                id=r[0],
                namespace=r[1],
                name=r[2],
                scopes=tuple(s for s in r[3].split(",") if s),
                created_at=r[4],
                expires_at=r[5],
                revoked_at=r[6],
                key_hash=r[7],
            )
            for r in rows
        ]

    def revoke_key(self, key_id: str, now: float) -> bool:
        cur = self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (now, key_id),
        )
        return cur.rowcount > 0

    # ------------------------------------------------------------ functions and versions
    def get_function(self, namespace: str, name: str) -> FunctionRecord | None:
        row = self.db.execute(
            "SELECT created_at, traffic FROM functions WHERE namespace = ? AND name = ?",
            (namespace, name),
        ).fetchone()
        if row is None:
            return None
        return FunctionRecord(namespace, name, row[0], _traffic_from_json(row[1]))

    def list_functions(self, namespace: str) -> list[FunctionRecord]:
        rows = self.db.execute(
            "SELECT name, created_at, traffic FROM functions WHERE namespace = ? ORDER BY name",
            (namespace,),
        ).fetchall()
        return [FunctionRecord(namespace, r[0], r[1], _traffic_from_json(r[2])) for r in rows]

    def add_version(
        self,
        namespace: str,
        name: str,
        *,
        bundle_sha: str,
        module: str,
        attr: str,
        kind: str,
        config: dict[str, Any],
        promote: bool,
        now: float,
    ) -> VersionRecord:
        """Create the next immutable version (and the function on first deploy)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT next_version, traffic FROM functions WHERE namespace = ? AND name = ?",
                (namespace, name),
            ).fetchone()
            if row is None:
                version, traffic = 1, {}
                db.execute(
                    "INSERT INTO functions VALUES (?,?,?,?,?)", (namespace, name, now, "{}", 2)
                )
            else:
                version, traffic = int(row[0]), _traffic_from_json(row[1])
                db.execute(
                    "UPDATE functions SET next_version = ? WHERE namespace = ? AND name = ?",
                    (version + 1, namespace, name),
                )
            db.execute(
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    namespace,
                    name,
                    version,
                    bundle_sha,
                    module,
                    attr,
                    kind,
                    orjson.dumps(config).decode(),
                    now,
                ),
            )
            if promote or not traffic:
                self._set_traffic(db, namespace, name, traffic, {version: 100})
        return VersionRecord(namespace, name, version, bundle_sha, module, attr, kind, config, now)

    def get_version(self, namespace: str, name: str, version: int) -> VersionRecord | None:
        row = self.db.execute(
            "SELECT bundle_sha, module, attr, kind, config, created_at FROM versions "
            "WHERE namespace = ? AND function = ? AND version = ?",
            (namespace, name, version),
        ).fetchone()
        if row is None:
            return None
        return VersionRecord(
            namespace, name, version, row[0], row[1], row[2], row[3], orjson.loads(row[4]), row[5]
        )

    def list_versions(self, namespace: str, name: str) -> list[VersionRecord]:
        rows = self.db.execute(
            "SELECT version FROM versions WHERE namespace = ? AND function = ? ORDER BY version",
            (namespace, name),
        ).fetchall()
        found = (self.get_version(namespace, name, int(r[0])) for r in rows)
        return [v for v in found if v is not None]

    def _set_traffic(
        self,
        db: sqlite3.Connection,
        namespace: str,
        name: str,
        old: dict[int, int],
        new: dict[int, int],
    ) -> None:
        if old:
            db.execute(
                "INSERT INTO traffic_history (namespace, function, traffic) VALUES (?,?,?)",
                (namespace, name, _traffic_to_json(old)),
            )
        db.execute(
            "UPDATE functions SET traffic = ? WHERE namespace = ? AND name = ?",
            (_traffic_to_json(new), namespace, name),
        )

    def set_traffic(self, namespace: str, name: str, traffic: dict[int, int]) -> bool:
        with self._tx() as db:
            current = self.get_function(namespace, name)
            if current is None:
                return False
            if current.traffic != traffic:
                self._set_traffic(db, namespace, name, current.traffic, traffic)
        return True

    def rollback(self, namespace: str, name: str) -> dict[int, int] | None:
        """Restore the traffic split before the current one; None when there is none."""
        with self._tx() as db:
            current = self.get_function(namespace, name)
            if current is None:
                return None
            rows = db.execute(
                "SELECT seq, traffic FROM traffic_history WHERE namespace = ? AND function = ? "
                "ORDER BY seq DESC",
                (namespace, name),
            ).fetchall()
            for seq, raw in rows:
                db.execute("DELETE FROM traffic_history WHERE seq = ?", (seq,))
                previous = _traffic_from_json(raw)
                if previous != current.traffic:
                    db.execute(
                        "UPDATE functions SET traffic = ? WHERE namespace = ? AND name = ?",
                        (raw, namespace, name),
                    )
                    return previous
        return None

    def delete_function(self, namespace: str, name: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM functions WHERE namespace = ? AND name = ?", (namespace, name)
            )
            for table in ("versions", "traffic_history", "state"):
                db.execute(
                    f"DELETE FROM {table} WHERE namespace = ? AND function = ?",  # noqa: S608
                    (namespace, name),
                )
        return cur.rowcount > 0

    # ------------------------------------------------------------ state
    def state_get(self, namespace: str, function: str, key: str) -> StateRecord | None:
        row = self.db.execute(
            "SELECT value, version FROM state WHERE namespace = ? AND function = ? AND key = ?",
            (namespace, function, key),
        ).fetchone()
        if row is None:
            return None
        return StateRecord(self._open_value(namespace, "state", (function, key), row[0]), row[1])

    def state_put(
        self,
        namespace: str,
        function: str,
        key: str,
        value: bytes,
        expected_version: int | None,
        now: float,
    ) -> tuple[bool, int]:
        """(written, version): on a version mismatch nothing is written and the current
        version comes back."""
        # Encrypted before the transaction: a data key created inside one could roll back.
        stored = self._seal_value(namespace, "state", (function, key), value)
        with self._tx() as db:
            # The version alone: the old value needs no decrypting to be overwritten.
            version = self._state_version(namespace, function, key) or 0
            if expected_version is not None and expected_version != version:
                return False, version
            db.execute(
                "INSERT INTO state VALUES (?,?,?,?,?,?) ON CONFLICT (namespace, function, key) "
                "DO UPDATE SET value = excluded.value, version = excluded.version, "
                "updated_at = excluded.updated_at",
                (namespace, function, key, stored, version + 1, now),
            )
        return True, version + 1

    def state_delete(
        self, namespace: str, function: str, key: str, expected_version: int | None
    ) -> tuple[bool, int]:
        with self._tx() as db:
            # The version alone: a value that no longer decrypts can still be deleted.
            found = self._state_version(namespace, function, key)
            version = found or 0
            if expected_version is not None and expected_version != version:
                return False, version
            db.execute(
                "DELETE FROM state WHERE namespace = ? AND function = ? AND key = ?",
                (namespace, function, key),
            )
        return found is not None, version

    def _state_version(self, namespace: str, function: str, key: str) -> int | None:
        row = self.db.execute(
            "SELECT version FROM state WHERE namespace = ? AND function = ? AND key = ?",
            (namespace, function, key),
        ).fetchone()
        return int(row[0]) if row else None

    def state_incr(
        self, namespace: str, function: str, key: str, by: int, now: float
    ) -> tuple[int, int]:
        """Atomically add `by` to an integer value; (new value, new version)."""
        if self.encryptor is not None:
            # The data key must exist before the transaction (see state_put).
            self.encryptor.prepare(self, namespace)
        with self._tx() as db:
            current = self.state_get(namespace, function, key)
            value = int(orjson.loads(current.value)) if current else 0
            value += by
            version = (current.version if current else 0) + 1
            stored = self._seal_value(namespace, "state", (function, key), orjson.dumps(value))
            db.execute(
                "INSERT INTO state VALUES (?,?,?,?,?,?) ON CONFLICT (namespace, function, key) "
                "DO UPDATE SET value = excluded.value, version = excluded.version, "
                "updated_at = excluded.updated_at",
                (namespace, function, key, stored, version, now),
            )
        return value, version

    def state_list(self, namespace: str, function: str, prefix: str, limit: int) -> list[str]:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.db.execute(
            "SELECT key FROM state WHERE namespace = ? AND function = ? AND key LIKE ? "
            "ESCAPE '\\' ORDER BY key LIMIT ?",
            (namespace, function, escaped + "%", limit),
        ).fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------ secrets
    def secret_set(self, namespace: str, name: str, value: bytes, now: float) -> None:
        stored = self._seal_value(namespace, "secret", (name,), value)
        self.db.execute(
            "INSERT INTO secrets VALUES (?,?,?,?) ON CONFLICT (namespace, name) "
            "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (namespace, name, stored, now),
        )

    def secret_names(self, namespace: str) -> list[tuple[str, float]]:
        rows = self.db.execute(
            "SELECT name, updated_at FROM secrets WHERE namespace = ? ORDER BY name", (namespace,)
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def secret_values(self, namespace: str, names: Iterable[str]) -> dict[str, bytes]:
        wanted = list(names)
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = self.db.execute(
            f"SELECT name, value FROM secrets WHERE namespace = ? AND name IN ({marks})",  # noqa: S608
            (namespace, *wanted),
        ).fetchall()
        return {r[0]: self._open_value(namespace, "secret", (r[0],), r[1]) for r in rows}

    def secret_delete(self, namespace: str, name: str) -> bool:
        cur = self.db.execute(
            "DELETE FROM secrets WHERE namespace = ? AND name = ?", (namespace, name)
        )
        return cur.rowcount > 0

    # ------------------------------------------------------------ logs and invocations
    def append_logs(self, records: list[LogRecord]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO logs (namespace, function, version, invocation_id, ts, level, "
                "message, fields) VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        r.namespace,
                        r.function,
                        r.version,
                        r.invocation_id,
                        r.ts,
                        r.level,
                        r.message,
                        orjson.dumps(r.fields).decode(),
                    )
                    for r in records
                ],
            )

    def query_logs(
        self, namespace: str, function: str, *, after_seq: int = 0, limit: int = 100
    ) -> list[tuple[int, LogRecord]]:
        """The newest `limit` lines after `after_seq`, oldest first."""
        rows = self.db.execute(
            "SELECT seq, version, invocation_id, ts, level, message, fields FROM logs "
            "WHERE namespace = ? AND function = ? AND seq > ? ORDER BY seq DESC LIMIT ?",
            (namespace, function, after_seq, limit),
        ).fetchall()
        return [
            (r[0], LogRecord(namespace, function, r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6])))
            for r in reversed(rows)
        ]

    def append_invocations(self, records: list[InvocationRecord]) -> None:
        # One JSON parameter that SQLite unpacks itself: binding thousands of rows from
        # Python holds the GIL row by row and stalls the gateway's event loop; json_each
        # runs in C with the GIL released.
        rows = orjson.dumps(
            [
                [
                    r.id,
                    r.namespace,
                    r.function,
                    r.version,
                    r.status,
                    r.code,
                    int(r.cold),
                    r.started_at,
                    r.duration_ms,
                ]
                for r in records
            ]
        )
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO invocations "
                "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, "
                "value ->> 5, value ->> 6, value ->> 7, value ->> 8 FROM json_each(?)",
                (rows,),
            )

    def get_invocation(self, namespace: str, invocation_id: str) -> InvocationRecord | None:
        row = self.db.execute(
            "SELECT function, version, status, code, cold, started_at, duration_ms "
            "FROM invocations WHERE namespace = ? AND id = ?",
            (namespace, invocation_id),
        ).fetchone()
        if row is None:
            return None
        return InvocationRecord(
            invocation_id, namespace, row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6]
        )

    def list_invocations(self, namespace: str, function: str, limit: int) -> list[InvocationRecord]:
        rows = self.db.execute(
            "SELECT id, version, status, code, cold, started_at, duration_ms FROM invocations "
            "WHERE namespace = ? AND function = ? ORDER BY started_at DESC LIMIT ?",
            (namespace, function, limit),
        ).fetchall()
        return [
            InvocationRecord(r[0], namespace, function, r[1], r[2], r[3], bool(r[4]), r[5], r[6])
            for r in rows
        ]

    # ------------------------------------------------------------ encryption at rest
    def _seal_value(
        self, namespace: str, purpose: str, item: tuple[str, ...], data: bytes
    ) -> bytes:
        if self.encryptor is None:
            return data
        return self.encryptor.encrypt(self, namespace, purpose, item, data)

    def _open_value(
        self, namespace: str, purpose: str, item: tuple[str, ...], blob: bytes
    ) -> bytes:
        if self.encryptor is None:
            return blob
        return self.encryptor.decrypt(self, namespace, purpose, item, blob)

    def transaction(self) -> _Transaction:
        """BEGIN IMMEDIATE ... COMMIT for the security modules' multi-statement writes."""
        return self._tx()

    def crypto_meta_get(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM crypto_meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def crypto_meta_set(self, name: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO crypto_meta VALUES (?,?) ON CONFLICT (name) DO UPDATE SET value = "
            "excluded.value",
            (name, value),
        )

    def data_key(self, namespace: str, version: int) -> DataKeyRecord | None:
        row = self.db.execute(
            "SELECT master_id, wrapped, created_at FROM data_keys "
            "WHERE namespace = ? AND version = ?",
            (namespace, version),
        ).fetchone()
        return None if row is None else DataKeyRecord(namespace, version, row[0], row[1], row[2])

    def latest_data_key_version(self, namespace: str) -> int | None:
        row = self.db.execute(
            "SELECT MAX(version) FROM data_keys WHERE namespace = ?", (namespace,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def insert_data_key(
        self, namespace: str, version: int, master_id: str, wrapped: bytes, now: float
    ) -> bool:
        """False when that version exists already (another writer created it first)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO data_keys VALUES (?,?,?,?,?)",
            (namespace, version, master_id, wrapped, now),
        )
        return cur.rowcount > 0

    def all_data_keys(self) -> list[DataKeyRecord]:
        rows = self.db.execute(
            "SELECT namespace, version, master_id, wrapped, created_at FROM data_keys "
            "ORDER BY namespace, version"
        ).fetchall()
        return [DataKeyRecord(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def rewrap_data_key(self, namespace: str, version: int, master_id: str, wrapped: bytes) -> None:
        self.db.execute(
            "UPDATE data_keys SET master_id = ?, wrapped = ? WHERE namespace = ? AND version = ?",
            (master_id, wrapped, namespace, version),
        )

    def encrypted_rows(self) -> list[EncryptedRow]:
        """Every stored value that is encrypted at rest, as stored (tests, migration)."""
        state = self.db.execute("SELECT namespace, function, key, value FROM state").fetchall()
        secrets = self.db.execute("SELECT namespace, name, value FROM secrets").fetchall()
        return [EncryptedRow("state", r[0], (r[1], r[2]), r[3]) for r in state] + [
            EncryptedRow("secrets", r[0], (r[1],), r[2]) for r in secrets
        ]

    def replace_encrypted_value(
        self, table: str, namespace: str, item: tuple[str, ...], value: bytes
    ) -> None:
        if table == "state":
            self.db.execute(
                "UPDATE state SET value = ? WHERE namespace = ? AND function = ? AND key = ?",
                (value, namespace, *item),
            )
        elif table == "secrets":
            self.db.execute(
                "UPDATE secrets SET value = ? WHERE namespace = ? AND name = ?",
                (value, namespace, *item),
            )
        else:
            raise ValueError(f"no encrypted values in table {table!r}")

    # ------------------------------------------------------------ audit log
    def audit_heads(self) -> dict[str, AuditHeadRecord]:
        rows = self.db.execute("SELECT namespace, seq, hash, mac FROM audit_heads").fetchall()
        return {r[0]: AuditHeadRecord(r[0], r[1], r[2], r[3]) for r in rows}

    def audit_write(self, rows: list[AuditRowRecord], heads: list[AuditHeadRecord]) -> None:
        """Append chained rows and move their heads; the caller holds a transaction."""
        self.db.executemany(
            "INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    r.namespace,
                    r.seq,
                    r.ts,
                    r.actor,
                    r.action,
                    r.target,
                    r.result,
                    r.source,
                    r.details,
                    r.prev_hash,
                    r.hash,
                )
                for r in rows
            ],
        )
        self.db.executemany(
            "INSERT INTO audit_heads VALUES (?,?,?,?) ON CONFLICT (namespace) DO UPDATE SET "
            "seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
            [(h.namespace, h.seq, h.hash, h.mac) for h in heads],
        )

    def audit_set_head_mac(self, namespace: str, mac: bytes) -> None:
        self.db.execute("UPDATE audit_heads SET mac = ? WHERE namespace = ?", (mac, namespace))

    def audit_rows(self, namespace: str, after_seq: int, limit: int) -> list[AuditRowRecord]:
        rows = self.db.execute(
            "SELECT seq, ts, actor, action, target, result, source, details, prev_hash, hash "
            "FROM audit_log WHERE namespace = ? AND seq > ? ORDER BY seq LIMIT ?",
            (namespace, after_seq, limit),
        ).fetchall()
        return [AuditRowRecord(namespace, *r) for r in rows]

    def audit_seq_of_hash(self, namespace: str, row_hash: bytes) -> int | None:
        row = self.db.execute(
            "SELECT seq FROM audit_log WHERE namespace = ? AND hash = ? LIMIT 1",
            (namespace, row_hash),
        ).fetchone()
        return None if row is None else int(row[0])

    def audit_namespaces(self) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT namespace FROM audit_log").fetchall()
        return sorted(str(r[0]) for r in rows)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (sqlite3 in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def now() -> float:
    return time.time()


# Records of the security tables (encryption at rest, audit log).
@dataclass(frozen=True, slots=True)
class DataKeyRecord:
    namespace: str
    version: int
    master_id: str
    wrapped: bytes = field(repr=False)
    created_at: float


@dataclass(frozen=True, slots=True)
class EncryptedRow:
    table: str  # "state" or "secrets"
    namespace: str
    item: tuple[str, ...]  # (function, key) or (name,)
    value: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuditRowRecord:
    namespace: str
    seq: int
    ts: float
    actor: str
    action: str
    target: str
    result: str
    source: str
    details: str  # canonical JSON, already redacted
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class AuditHeadRecord:
    namespace: str
    seq: int
    hash: bytes
    mac: bytes
