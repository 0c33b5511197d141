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

# The audit records are the audit seam's (store/audit.py), kept importable from here.
from cumulo.store.audit import AuditHeadRecord, AuditRowRecord
from cumulo.store.base import (
    ApiKeyRecord,
    FunctionRecord,
    InvocationRecord,
    LogRecord,
    StateRecord,
    VersionRecord,
)

P = ParamSpec("P")
PAGE_CACHE_KIB = 1024
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
    version INTEGER NOT NULL, updated_at REAL NOT NULL, key_sealed BLOB,
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
    """Encrypts values at rest (security.crypto.Encryptor): state values and key names,
    secrets, log lines, job bodies. `item` names the row and is bound to the ciphertext."""

    def prepare(self, store: SQLiteStore, namespace: str) -> None: ...

    def encrypt(
        self, store: SQLiteStore, namespace: str, purpose: str, item: tuple[str, ...], data: bytes
    ) -> bytes: ...

    def decrypt(
        self, store: SQLiteStore, namespace: str, purpose: str, item: tuple[str, ...], blob: bytes
    ) -> bytes: ...

    def keyed_hash(self, store: SQLiteStore, namespace: str, purpose: str, *parts: str) -> str: ...


class DataKeyQueries:
    """The `data_keys` reads and writes the encryptor needs, on any connection to the
    platform database (the store's own, or another room's: store/sealing.py)."""

    @property
    def db(self) -> sqlite3.Connection:
        raise NotImplementedError

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


class SQLiteStore(DataKeyQueries):
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
        # The page cache is gateway RSS, filled by every invocation and log row until full:
        # at 64 MiB the gateway grew ~1 MB/min in a soak, at 4 MiB it still grew 4.5 MB over
        # 5 minutes at 100 req/s (bench row 15a). The tables are append-mostly, so their hot
        # pages (the right edges of the indexes) fit in 1 MiB, full within the warm-up.
        conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        conn.executescript(SCHEMA)
        columns = {r[1] for r in conn.execute("PRAGMA table_info(state)")}
        if "key_sealed" not in columns:  # a database from before state key names were sealed
            conn.execute("ALTER TABLE state ADD COLUMN key_sealed BLOB")
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

    def function_namespaces(self) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT namespace FROM functions").fetchall()
        return sorted(r[0] for r in rows)

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

    def bundle_shas(self) -> list[str]:
        """Every bundle a version references (what bundle collection keeps)."""
        rows = self.db.execute("SELECT DISTINCT bundle_sha FROM versions").fetchall()
        return [str(r[0]) for r in rows]

    def bundle_in_use(self, sha: str) -> bool:
        row = self.db.execute("SELECT 1 FROM versions WHERE bundle_sha = ? LIMIT 1", (sha,))
        return row.fetchone() is not None

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
    # A row's `key` is a keyed hash of (function, name) under the namespace's index key
    # (plain name without an encryptor); the name itself is sealed in `key_sealed`. The
    # value's AAD binds the plain (function, name), so values cannot be swapped between keys.
    def state_id(self, namespace: str, function: str, key: str) -> str:
        if self.encryptor is None:
            return key
        return self.encryptor.keyed_hash(self, namespace, "state-key", function, key)

    def state_get(self, namespace: str, function: str, key: str) -> StateRecord | None:
        row = self.db.execute(
            "SELECT value, version FROM state WHERE namespace = ? AND function = ? AND key = ?",
            (namespace, function, self.state_id(namespace, function, key)),
        ).fetchone()
        if row is None:
            return None
        return StateRecord(self._open_value(namespace, "state", (function, key), row[0]), row[1])

    def _sealed_name(self, namespace: str, function: str, sid: str, key: str) -> bytes | None:
        if self.encryptor is None:
            return None
        return self._seal_value(namespace, "state-key", (function, sid), key.encode())

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
        sid = self.state_id(namespace, function, key)
        with self._tx() as db:
            # The version alone: the old value needs no decrypting to be overwritten.
            version = self._state_version(namespace, function, sid) or 0
            if expected_version is not None and expected_version != version:
                return False, version
            self._state_write(db, namespace, function, sid, key, stored, version + 1, now)
        return True, version + 1

    def _state_write(
        self,
        db: sqlite3.Connection,
        namespace: str,
        function: str,
        sid: str,
        key: str,
        stored: bytes,
        version: int,
        now: float,
    ) -> None:
        # The sealed name is written with the row only when it is new (rows from before
        # names were sealed are sealed at start: seal_legacy_state_keys).
        db.execute(
            "INSERT INTO state VALUES (?,?,?,?,?,?,?) ON CONFLICT (namespace, function, key) "
            "DO UPDATE SET value = excluded.value, version = excluded.version, "
            "updated_at = excluded.updated_at",
            (
                namespace,
                function,
                sid,
                stored,
                version,
                now,
                self._sealed_name(namespace, function, sid, key) if version == 1 else None,
            ),
        )

    def state_delete(
        self, namespace: str, function: str, key: str, expected_version: int | None
    ) -> tuple[bool, int]:
        sid = self.state_id(namespace, function, key)
        with self._tx() as db:
            # The version alone: a value that no longer decrypts can still be deleted.
            found = self._state_version(namespace, function, sid)
            version = found or 0
            if expected_version is not None and expected_version != version:
                return False, version
            db.execute(
                "DELETE FROM state WHERE namespace = ? AND function = ? AND key = ?",
                (namespace, function, sid),
            )
        return found is not None, version

    def _state_version(self, namespace: str, function: str, sid: str) -> int | None:
        row = self.db.execute(
            "SELECT version FROM state WHERE namespace = ? AND function = ? AND key = ?",
            (namespace, function, sid),
        ).fetchone()
        return int(row[0]) if row else None

    def state_incr(
        self, namespace: str, function: str, key: str, by: int, now: float
    ) -> tuple[int, int]:
        """Atomically add `by` to an integer value; (new value, new version)."""
        if self.encryptor is not None:
            # The data key must exist before the transaction (see state_put).
            self.encryptor.prepare(self, namespace)
        sid = self.state_id(namespace, function, key)
        with self._tx() as db:
            current = self.state_get(namespace, function, key)
            value = int(orjson.loads(current.value)) if current else 0
            value += by
            version = (current.version if current else 0) + 1
            stored = self._seal_value(namespace, "state", (function, key), orjson.dumps(value))
            self._state_write(db, namespace, function, sid, key, stored, version, now)
        return value, version

    def _state_names(self, namespace: str, function: str) -> list[tuple[str, str]]:
        """(name, stored key) of every state row of a function."""
        rows = self.db.execute(
            "SELECT key, key_sealed FROM state WHERE namespace = ? AND function = ?",
            (namespace, function),
        ).fetchall()
        out = []
        for sid, sealed in rows:
            if sealed is None:
                out.append((str(sid), str(sid)))  # no encryptor, or not migrated yet
            else:
                name = self._open_value(namespace, "state-key", (function, sid), sealed)
                out.append((name.decode(), str(sid)))
        return out

    def state_list(self, namespace: str, function: str, prefix: str, limit: int) -> list[str]:
        if self.encryptor is None:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = self.db.execute(
                "SELECT key FROM state WHERE namespace = ? AND function = ? AND key LIKE ? "
                "ESCAPE '\\' ORDER BY key LIMIT ?",
                (namespace, function, escaped + "%", limit),
            ).fetchall()
            return [r[0] for r in rows]
        # Names are sealed: the function's rows are opened and filtered here (a scan of
        # that one function's keys; no index can serve a prefix of a ciphertext).
        names = sorted(n for n, _ in self._state_names(namespace, function) if n.startswith(prefix))
        return names[:limit]

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
    # A line's message and fields are sealed together into `message` (`fields` stays ''),
    # bound to (function, version, invocation id): a row moved to another function or
    # namespace does not open. Rows from before sealing are read as they are.
    def _seal_log(self, r: LogRecord) -> tuple[bytes | str, str]:
        if self.encryptor is None:
            return r.message, orjson.dumps(r.fields).decode()
        data = orjson.dumps([r.message, r.fields])
        item = (r.function, str(r.version), r.invocation_id)
        return self.encryptor.encrypt(self, r.namespace, "log", item, data), ""

    def append_logs(
        self,
        records: list[LogRecord],
        *,
        retain_rows: int | None = None,
        retain_bytes: int | None = None,
    ) -> None:
        """Append lines; then, per function written to, drop its oldest lines past
        `retain_rows` lines or `retain_bytes` stored bytes."""
        if self.encryptor is not None:
            for namespace in {r.namespace for r in records}:
                self.encryptor.prepare(self, namespace)
        rows = []
        for r in records:
            message, fields = self._seal_log(r)
            rows.append(
                (
                    r.namespace,
                    r.function,
                    r.version,
                    r.invocation_id,
                    r.ts,
                    r.level,
                    message,
                    fields,
                )
            )
        with self._tx() as db:
            db.executemany(
                "INSERT INTO logs (namespace, function, version, invocation_id, ts, level, "
                "message, fields) VALUES (?,?,?,?,?,?,?,?)",
                rows,
            )
            for namespace, function in {(r.namespace, r.function) for r in records}:
                self._trim_logs(db, namespace, function, retain_rows, retain_bytes)

    @staticmethod
    def _trim_logs(
        db: sqlite3.Connection,
        namespace: str,
        function: str,
        retain_rows: int | None,
        retain_bytes: int | None,
    ) -> None:
        if retain_rows is not None:
            db.execute(
                "DELETE FROM logs WHERE namespace = ?1 AND function = ?2 AND seq <= ("
                "SELECT seq FROM logs WHERE namespace = ?1 AND function = ?2 "
                "ORDER BY seq DESC LIMIT 1 OFFSET ?3)",
                (namespace, function, retain_rows),
            )
        if retain_bytes is not None:
            # The newest line whose running total (newest first) passes the budget, and
            # everything older, goes.
            db.execute(
                "DELETE FROM logs WHERE namespace = ?1 AND function = ?2 AND seq <= ("
                "SELECT seq FROM (SELECT seq, SUM(length(message) + length(fields) + 64) "
                "OVER (ORDER BY seq DESC) AS total FROM logs "
                "WHERE namespace = ?1 AND function = ?2) WHERE total > ?3 LIMIT 1)",
                (namespace, function, retain_bytes),
            )

    def log_stats(self, namespace: str, function: str) -> tuple[int, int]:
        """(lines, stored bytes) of a function's logs."""
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(message) + length(fields)), 0) FROM logs "
            "WHERE namespace = ? AND function = ?",
            (namespace, function),
        ).fetchone()
        return int(row[0]), int(row[1])

    def _open_log(
        self, namespace: str, function: str, version: int, iid: str, message: Any, fields: str
    ) -> tuple[str, dict[str, Any]]:
        if isinstance(message, bytes) and self.encryptor is not None:
            item = (function, str(version), iid)
            text, data = orjson.loads(self.encryptor.decrypt(self, namespace, "log", item, message))
            return str(text), dict(data)
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        return str(message), orjson.loads(fields) if fields else {}

    def query_logs(
        self, namespace: str, function: str, *, after_seq: int = 0, limit: int = 100
    ) -> list[tuple[int, LogRecord]]:
        """The newest `limit` lines after `after_seq`, oldest first."""
        rows = self.db.execute(
            "SELECT seq, version, invocation_id, ts, level, message, fields FROM logs "
            "WHERE namespace = ? AND function = ? AND seq > ? ORDER BY seq DESC LIMIT ?",
            (namespace, function, after_seq, limit),
        ).fetchall()
        out = []
        for seq, version, iid, ts, level, message, fields in reversed(rows):
            text, data = self._open_log(namespace, function, version, iid, message, fields)
            out.append((seq, LogRecord(namespace, function, version, iid, ts, level, text, data)))
        return out

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

    # ------------------------------------------------------------ rows from older builds
    def seal_legacy_state_keys(self) -> int:
        """Replace plain state key names by their keyed hash, the name sealed beside it.
        Idempotent: only rows without a sealed name are touched. Store thread, at start."""
        if self.encryptor is None:
            return 0
        rows = self.db.execute(
            "SELECT namespace, function, key FROM state WHERE key_sealed IS NULL"
        ).fetchall()
        for namespace in {r[0] for r in rows}:
            self.encryptor.prepare(self, namespace)
        with self._tx() as db:
            for namespace, function, key in rows:
                sid = self.state_id(namespace, function, key)
                db.execute(
                    "UPDATE state SET key = ?, key_sealed = ? WHERE namespace = ? AND "
                    "function = ? AND key = ?",
                    (
                        sid,
                        self._sealed_name(namespace, function, sid, key),
                        namespace,
                        function,
                        key,
                    ),
                )
        return len(rows)

    def seal_legacy_rows(self, batch: int = 5000) -> dict[str, int]:
        """Seal what older builds stored in clear: state key names, log lines, and the
        events queue's job bodies, results and errors. Idempotent (sealed rows are skipped)
        and done in batches; counts per kind."""
        counts = {"state_keys": self.seal_legacy_state_keys(), "logs": 0, "jobs": 0}
        if self.encryptor is None:
            return counts
        while True:
            rows = self.db.execute(
                "SELECT seq, namespace, function, version, invocation_id, ts, level, message, "
                "fields FROM logs WHERE typeof(message) = 'text' LIMIT ?",
                (batch,),
            ).fetchall()
            if not rows:
                break
            records = [
                (r[0], LogRecord(r[1], r[2], r[3], r[4], r[5], r[6], r[7], orjson.loads(r[8])))
                for r in rows
            ]
            for namespace in {r.namespace for _, r in records}:
                self.encryptor.prepare(self, namespace)
            with self._tx() as db:
                for seq, record in records:
                    message, fields = self._seal_log(record)
                    db.execute(
                        "UPDATE logs SET message = ?, fields = ? WHERE seq = ?",
                        (message, fields, seq),
                    )
            counts["logs"] += len(rows)
        counts["jobs"] = self._seal_legacy_jobs(batch)
        return counts

    def _seal_legacy_jobs(self, batch: int) -> int:
        exists = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'event_jobs'"
        ).fetchone()
        if exists is None or self.encryptor is None:
            return 0
        sealed = 0
        # Bodies not yet sealed (nor sealed to a data subject), results likewise, errors text.
        where = (
            "(substr(body, 1, 3) NOT IN (x'ff434d', x'ff434a')) OR (result IS NOT NULL AND "
            "substr(result, 1, 3) NOT IN (x'ff434d', x'ff434a')) OR typeof(error) = 'text'"
        )
        while True:
            rows = self.db.execute(
                f"SELECT id, namespace, function, body, result, error FROM event_jobs "  # noqa: S608
                f"WHERE {where} LIMIT ?",
                (batch,),
            ).fetchall()
            if not rows:
                return sealed
            for namespace in {r[1] for r in rows}:
                self.encryptor.prepare(self, namespace)
            with self._tx() as db:
                for job_id, namespace, function, body, result, error in rows:
                    item = (function, job_id)
                    db.execute(
                        "UPDATE event_jobs SET body = ?, result = ?, error = ? WHERE id = ?",
                        (
                            self._seal_job(namespace, "job-body", item, body),
                            self._seal_job(namespace, "job-result", item, result),
                            self._seal_job(namespace, "job-error", item, error),
                            job_id,
                        ),
                    )
            sealed += len(rows)

    def _seal_job(
        self, namespace: str, purpose: str, item: tuple[str, str], data: bytes | str | None
    ) -> bytes | None:
        if data is None:
            return None
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if raw[:3] in (b"\xffCM", b"\xffCJ") or self.encryptor is None:
            return raw
        return self.encryptor.encrypt(self, namespace, purpose, item, raw)

    def shrink_memory(self) -> None:
        """Give SQLite's page cache back (after a burst of writes)."""
        self.db.execute("PRAGMA shrink_memory")

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
        """Every stored value that is encrypted at rest, as stored (tests, migration); a
        state row's item is (function, its name), the name opened from `key_sealed`."""
        state = []
        for namespace, function in self.db.execute(
            "SELECT DISTINCT namespace, function FROM state"
        ).fetchall():
            for name, sid in self._state_names(namespace, function):
                value = self.db.execute(
                    "SELECT value FROM state WHERE namespace = ? AND function = ? AND key = ?",
                    (namespace, function, sid),
                ).fetchone()[0]
                state.append(EncryptedRow("state", namespace, (function, name), value))
        secrets = self.db.execute("SELECT namespace, name, value FROM secrets").fetchall()
        return state + [EncryptedRow("secrets", r[0], (r[1],), r[2]) for r in secrets]

    def replace_encrypted_value(
        self, table: str, namespace: str, item: tuple[str, ...], value: bytes
    ) -> None:
        if table == "state":
            function, name = item
            self.db.execute(
                "UPDATE state SET value = ? WHERE namespace = ? AND function = ? AND key = ?",
                (value, namespace, function, self.state_id(namespace, function, name)),
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

    def audit_page(self, namespace: str, before: int | None, limit: int) -> list[AuditRowRecord]:
        """At most `limit` of the namespace's rows with seq < `before` (None: from the
        newest), newest first: a page of the dashboard's audit view."""
        rows = self.db.execute(
            "SELECT seq, ts, actor, action, target, result, source, details, prev_hash, hash "
            "FROM audit_log WHERE namespace = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (namespace, before if before is not None else 2**62, limit),
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
