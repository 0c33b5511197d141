"""Copy a platform's SQLite data dir into an empty PostgreSQL database (`cumulo migrate`).

Every table the PostgreSQL migrations define is either copied (`COPIED`: one `Table` entry
naming its SQLite source and how each column is carried over), built from copied rows
(`DERIVED`), filled from data-dir files (`bundles`), or excused with a reason
(`NOT_COPIED`). A PostgreSQL table in none of them refuses the copy, so a table a future
migration adds cannot be dropped silently; likewise a SQLite table that is neither a source
nor on `SOURCE_NOT_COPIED`. Adding a table is one entry.

Values are carried exactly as the `postgres_*` repositories write them: sealed blobs
byte for byte (SQLite and PostgreSQL seal alike, and the `data_keys` rows are copied
verbatim, so the same master key opens every blob and keyed hashes such as state ids stay
the same), REAL → double precision, INTEGER flags → boolean, JSON text → json, comma scopes
and JSON reason lists → text[], a sealed job error → "\\x" + hex in its text column.

Subject keys (`subject-keys.db`) and the keystore's pseudonym secret go verbatim into the
subject-key database (`--subject-keys-to`, one of their own, docs/privacy.md), so the
privacy rows sealed under them open there and their pseudonyms stay the same.

The SQLite files are opened read-only (`mode=ro`), each in one read transaction, so a
running platform is not disturbed and the copy is one consistent snapshot per file. The
destination is written in one PostgreSQL transaction, under the migrations' advisory lock:
a failure leaves it as it was.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict

from cumulo.errors import ConfigError, StoreUnavailable
from cumulo.store.audit import AuditHeadRecord
from cumulo.store.postgres import MIGRATION_LOCK, PostgresStore
from cumulo.store.postgres_subject_keys import PostgresSubjectKeyStore
from cumulo.store.sealing import is_sealed

Conn = AsyncConnection[tuple[Any, ...]]
Convert = Callable[[Any], Any]

PLATFORM_DB = "cumulo.db"
INSIGHTS_DB = "insights.db"
QUANTUM_DB = "quantum/quantum.db"
BATCH = 1000
# What makes a directory a cumulo data dir: cumulo.db with the control room's tables.
PLATFORM_TABLES = ("api_keys", "functions", "versions")
EMPTY_REFUSAL = "the destination already holds a platform"


# ---------------------------------------------------------------- column conversions
def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _scopes(value: str) -> list[str]:
    # SQLite keeps scopes comma-joined (SQLiteStore.insert_key); PostgreSQL as text[].
    return [s for s in value.split(",") if s]


def _json_list(value: str) -> list[str]:
    return [str(v) for v in orjson.loads(value)]


def _json_text(value: bytes | str | None) -> str | None:
    # The quantum room keeps its JSON as BLOB on SQLite, as json on PostgreSQL.
    return value.decode() if isinstance(value, bytes) else value


def _job_error(value: bytes | str | None) -> str | None:
    # A sealed error is a BLOB in SQLite's TEXT column; PostgreSQL's text column holds it as
    # "\x" + hex (postgres_jobs._error_text), a JSON error as it is.
    return "\\x" + value.hex() if isinstance(value, bytes) else value


def _sealed(what: str) -> Convert:
    """A column PostgreSQL's repository always opens (postgres_logs, _state, _secrets): a
    value from before sealing would be unreadable there. A platform start seals them
    (Encryptor.open, seal_legacy_rows), so the way out is one start."""

    def check(value: bytes | str) -> bytes:
        if not is_sealed(value):
            raise ConfigError(
                f"cumulo.db holds {what} from before sealing: start the platform once with "
                "this cumulo (it seals them), stop it, then migrate"
            )
        assert isinstance(value, bytes)
        return value

    return check


# ---------------------------------------------------------------- the mapping
@dataclass(frozen=True, slots=True)
class Table:
    """One PostgreSQL table copied from one SQLite table, each column in `columns`
    read from the SQLite column of the same name; `convert` maps a column to its converter."""

    dest: str
    source_file: str
    source: str
    columns: tuple[str, ...]
    rowid_as: str | None = None  # the column that takes SQLite's rowid (its insert order)
    convert: dict[str, Convert] = field(default_factory=dict)
    identity: str | None = None  # a sequence-backed column to advance past the copied ids
    order: str = "rowid"

    def source_sql(self) -> str:
        exprs = ", ".join("rowid" if c == self.rowid_as else c for c in self.columns)
        return f"SELECT {exprs} FROM {self.source} ORDER BY {self.order}"  # noqa: S608


def _t(dest: str, columns: str, **kw: Any) -> Table:
    kw.setdefault("source_file", PLATFORM_DB)
    kw.setdefault("source", dest)
    return Table(dest=dest, columns=tuple(columns.split()), **kw)


COPIED: tuple[Table, ...] = (
    # migration 1: the control room
    _t(
        "api_keys",
        "seq id namespace name key_hash scopes created_at expires_at revoked_at",
        rowid_as="seq",
        convert={"scopes": _scopes},
        identity="seq",
    ),
    _t("functions", "namespace name created_at traffic next_version"),
    _t("versions", "namespace function version bundle_sha module attr kind config created_at"),
    _t("traffic_history", "seq namespace function traffic", identity="seq", order="seq"),
    # migration 2: metering
    _t(
        "usage_hourly",
        "namespace function hour invocations errors gb_seconds cpu_seconds wall_seconds "
        "bytes_in bytes_out peak_rss_mb",
    ),
    _t("metering_quotas", "namespace gb_seconds invocations updated_at", source="quotas"),
    # migration 3: quantum jobs, in their own file
    _t(
        "quantum_jobs",
        "id namespace state created_at started_at finished_at idempotency_key request_hash "
        "request method device estimated_bytes num_pubs seed timeout_s attempts events error "
        "result",
        source_file=QUANTUM_DB,
        convert={"events": _json_text, "error": _json_text},
    ),
    # migration 4: alerts, in their own file (seq: SQLite's rowid, their tie-break order)
    _t(
        "ai_alerts",
        "seq id ts namespace kind entity reasons score window_start window_s observed",
        source_file=INSIGHTS_DB,
        source="alerts",
        rowid_as="seq",
        convert={"reasons": _json_list},
        identity="seq",
    ),
    # migration 6: the events room (in cumulo.db)
    _t(
        "event_jobs",
        "id namespace function source body idempotency_key request_hash status visible_at "
        "lease_owner deliveries attempts max_attempts interruptions replays created_at "
        "updated_at finished_at result_status result error",
        convert={"error": _job_error},
    ),
    _t("event_schedules", "namespace function cron since"),
    _t("event_schedule_fires", "namespace function cron slot job_id fired_at"),
    _t("event_job_traces", "id traceparent tracestate"),
    _t("event_subscriptions", "namespace topic function since"),
    _t("event_published", "namespace source event_id topic deliveries published_at"),
    # migration 7: data keys (verbatim: the same master opens everything), state, secrets
    _t("data_keys", "namespace version master_id wrapped created_at"),
    _t(
        "state",
        "namespace function key key_sealed value version updated_at",
        convert={"value": _sealed("state values")},
    ),
    _t("secrets", "namespace name value updated_at", convert={"value": _sealed("secrets")}),
    # migration 8: logs (seqs kept: unique per function, as log_heads hands them out)
    _t(
        "logs",
        "namespace function seq version invocation_id ts level message",
        convert={"message": _sealed("log lines")},
        order="seq",
    ),
    _t(
        "invocations",
        "id namespace function version status code cold started_at duration_ms",
        convert={"cold": _flag},
    ),
    # migration 9: the audit chains, rows and heads verbatim (their hashes cover them)
    _t(
        "audit_log",
        "namespace seq ts actor action target result source details prev_hash hash",
        order="namespace, seq",
    ),
    _t("audit_heads", "namespace seq hash mac", order="namespace"),
    # migration 10: the master key's id (and the encryptor's other marks)
    _t("crypto_meta", "name value", order="name"),
    # migration 11: the privacy room, sealed under subject keys (copied verbatim with the
    # keystore into the subject-key database, so every blob opens there as here)
    _t("privacy_state", "namespace function pseudonym key_hash value version updated_at"),
    _t(
        "privacy_logs",
        "seq namespace function pseudonym invocation_id ts blob",
        identity="seq",
        order="seq",
    ),
    _t("privacy_invocations", "id namespace function pseudonym started_at blob"),
    _t(
        "privacy_consent",
        "seq namespace pseudonym purpose granted ts blob",
        convert={"granted": _flag},
        identity="seq",
        order="seq",
    ),
    _t(
        "privacy_requests",
        "id namespace type regime pseudonym status received_at due_at updated_at "
        "completed_at overdue_alerted counts error result",
        convert={"overdue_alerted": _flag},
    ),
    _t("privacy_retention", "namespace ttl_s", order="namespace"),
)


@dataclass(frozen=True, slots=True)
class Derived:
    """A PostgreSQL table built from copied rows; `source_count` counts what it should hold
    in the SQLite source."""

    dest: str
    fill: str
    source_file: str
    source_count: str


DERIVED: tuple[Derived, ...] = (
    # Each function's head: the last seq handed out (postgres_logs claims from it).
    Derived(
        "log_heads",
        "INSERT INTO log_heads (namespace, function, seq) "
        "SELECT namespace, function, max(seq) FROM logs GROUP BY namespace, function",
        PLATFORM_DB,
        "SELECT count(*) FROM (SELECT DISTINCT namespace, function FROM logs)",
    ),
)

BUNDLES = "bundles"  # <data-dir>/bundles/<sha>.tar.gz → the bundles table

NOT_COPIED: dict[str, str] = {
    "schema_migrations": "written by the migrations themselves",
    "control_epoch": "the change feed's counter, PostgreSQL's own (started by migration 5)",
    "limit_usage": "rate-limit usage of the last seconds, exchanged live by the gateways",
    "limit_inflight": "in-flight counts of running gateways, expiring within seconds",
}

# Data not copied yet: the migrate command names those that hold rows (none today).
NOT_YET: dict[str, str] = {}
# The subject-key file's tables: into the subject-key database (`--subject-keys-to`).
KEYS_DB = "subject-keys.db"
KEYS_TABLES = ("subject_keys", "keystore_meta")
SUBJECT_KEYS = "subject_keys"  # its row in the report (counted in the other database)
# SQLite tables that are not copied, and why.
SOURCE_NOT_COPIED: dict[str, str] = {
    "control_changes": "change-feed signals, not data (PostgreSQL notifies instead)",
    "sqlite_sequence": "SQLite's own AUTOINCREMENT counters (sequences are advanced instead)",
    "sqlite_stat1": "SQLite's planner statistics",
    **NOT_YET,
}


def covered_tables() -> set[str]:
    """Every PostgreSQL table this copy accounts for (copied, derived, files, excused)."""
    copied = {t.dest for t in COPIED} | {d.dest for d in DERIVED} | {BUNDLES}
    return copied | set(NOT_COPIED) | set(NOT_YET)


# ---------------------------------------------------------------- the report
@dataclass(slots=True)
class TableCount:
    table: str
    source: int
    destination: int = -1

    @property
    def ok(self) -> bool:
        return self.source == self.destination


@dataclass(slots=True)
class CopyReport:
    counts: list[TableCount]
    # The source's audit heads: namespace → (seq, hash), to compare with the destination's.
    audit_heads: dict[str, tuple[int, bytes]]
    not_copied: dict[str, int]  # SQLite tables left behind that hold rows → their row count

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.counts)


# ---------------------------------------------------------------- the source
def parse_dsn(dsn: str, option: str = "--to") -> None:
    """ConfigError, one line, for a destination that is not a PostgreSQL URL."""
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{option} takes a postgresql:// URL")
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        first = (str(exc).strip().splitlines() or ["malformed"])[0]
        raise ConfigError(f"{option} is not a valid PostgreSQL URL: {first}") from None


def check_source(data_dir: Path) -> None:
    """ConfigError, one line, unless `data_dir` holds a readable cumulo platform."""
    Source(data_dir).close()


class Source:
    """The data dir's SQLite files, read-only, each in one read transaction."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        platform = data_dir / PLATFORM_DB
        if not data_dir.is_dir() or not platform.is_file():
            raise ConfigError(f"{data_dir} is not a cumulo data dir (no {PLATFORM_DB})")
        self._conns: dict[str, sqlite3.Connection] = {}
        self._tables: dict[str, set[str]] = {}
        try:
            for name in (PLATFORM_DB, INSIGHTS_DB, QUANTUM_DB, KEYS_DB):
                if (data_dir / name).is_file():
                    self._open(name)
            if not set(PLATFORM_TABLES) <= self._tables[PLATFORM_DB]:
                raise ConfigError(
                    f"{data_dir} is not a cumulo data dir ({PLATFORM_DB} has no platform)"
                )
        except BaseException:
            self.close()
            raise

    def _open(self, name: str) -> None:
        uri = (self.data_dir / name).resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            self._conns[name] = conn  # closed by close(), whatever fails next
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("BEGIN")  # one snapshot: a running platform's later writes unseen
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            self._tables[name] = {str(r[0]) for r in rows}
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read {self.data_dir / name}: {exc}") from None

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def has(self, file: str, table: str) -> bool:
        return table in self._tables.get(file, set())

    def unknown_tables(self) -> list[str]:
        """SQLite tables neither copied nor excused (a table this copy would lose)."""
        sources = {(t.source_file, t.source) for t in COPIED}
        return sorted(
            f"{file}:{table}"
            for file, tables in self._tables.items()
            for table in tables
            if (file, table) not in sources
            and table not in SOURCE_NOT_COPIED
            and not (file == KEYS_DB and table in KEYS_TABLES)
            and not table.startswith("sqlite_")  # SQLite's own (sequences, statistics)
        )

    def count(self, file: str, sql: str) -> int:
        row = self._conns[file].execute(sql).fetchone()
        return int(row[0]) if row else 0

    def rows(self, table: Table) -> Iterator[list[tuple[Any, ...]]]:
        converters = [table.convert.get(c) for c in table.columns]
        cur = self._conns[table.source_file].execute(table.source_sql())
        while batch := cur.fetchmany(BATCH):
            yield [
                tuple(v if f is None else f(v) for f, v in zip(converters, row, strict=True))
                for row in batch
            ]

    def bundles(self) -> Iterator[tuple[str, bytes, float]]:
        directory = self.data_dir / BUNDLES
        for path in sorted(directory.glob("*.tar.gz")) if directory.is_dir() else ():
            sha = path.name.removesuffix(".tar.gz")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != sha:  # control/bundle.py's address
                raise ConfigError(f"bundle {path} does not match its SHA-256: not copied")
            yield sha, data, path.stat().st_mtime

    def bundle_count(self) -> int:
        directory = self.data_dir / BUNDLES
        return len(list(directory.glob("*.tar.gz"))) if directory.is_dir() else 0

    def subject_keys(self) -> list[tuple[str, str, int, bytes, float]]:
        if not self.has(KEYS_DB, SUBJECT_KEYS):
            return []
        rows = self._conns[KEYS_DB].execute(
            "SELECT namespace, pseudonym, ns_key_version, wrapped, created_at FROM subject_keys"
            " ORDER BY namespace, pseudonym"
        )
        return [(str(r[0]), str(r[1]), int(r[2]), bytes(r[3]), float(r[4])) for r in rows]

    def pseudonym_secret(self) -> bytes | None:
        """The keystore's pseudonym secret: every pseudonym in the privacy rows is keyed
        by it, so it moves with them."""
        if not self.has(KEYS_DB, "keystore_meta"):
            return None
        row = (
            self._conns[KEYS_DB]
            .execute("SELECT value FROM keystore_meta WHERE name = 'pseudonym'")
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def audit_heads(self) -> dict[str, tuple[int, bytes]]:
        if not self.has(PLATFORM_DB, "audit_heads"):
            return {}
        rows = self._conns[PLATFORM_DB].execute("SELECT namespace, seq, hash FROM audit_heads")
        return {str(r[0]): (int(r[1]), bytes(r[2])) for r in rows}

    def left_behind(self) -> dict[str, int]:
        out = {}
        for table in sorted(self._tables.get(PLATFORM_DB, set()) & set(NOT_YET)):
            n = self.count(PLATFORM_DB, f'SELECT count(*) FROM "{table}"')  # noqa: S608
            if n:
                out[table] = n
        return out


# ---------------------------------------------------------------- the copy
async def _pg_tables(conn: Conn) -> set[str]:
    cur = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {str(r[0]) for r in await cur.fetchall()}


async def _check_destination(conn: Conn) -> None:
    unmapped = sorted((await _pg_tables(conn)) - covered_tables())
    if unmapped:
        raise ConfigError(
            f"PostgreSQL table {unmapped[0]} has no mapping in cumulo migrate "
            "(store/copy_to_postgres.py): nothing was copied"
        )
    # The control room first: a platform always has API keys.
    for table in [*(t.dest for t in COPIED), *(d.dest for d in DERIVED), BUNDLES]:
        cur = await conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")  # noqa: S608
        row = await cur.fetchone()
        if row is not None and row[0]:
            raise ConfigError(f"{EMPTY_REFUSAL} ({table} has rows): migrate into an empty database")


async def _copy_table(conn: Conn, source: Source, table: Table) -> None:
    columns = ", ".join(table.columns)
    # COPY writes identity columns as given (like OVERRIDING SYSTEM VALUE).
    statement = f"COPY {table.dest} ({columns}) FROM STDIN"
    async with conn.cursor() as cur, cur.copy(statement) as copy:
        for batch in source.rows(table):
            for row in batch:
                await copy.write_row(row)
    if table.identity is not None:
        # The next id PostgreSQL hands out follows the copied ones.
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table.dest}', '{table.identity}'), "  # noqa: S608
            f"max({table.identity})) FROM {table.dest} HAVING max({table.identity}) IS NOT NULL"
        )


async def _copy_bundles(conn: Conn, source: Source) -> None:
    for sha, data, created_at in source.bundles():
        await conn.execute(
            "INSERT INTO bundles (sha, data, created_at) VALUES (%s, %s, %s)",
            (sha, data, created_at),
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


async def copy_data_dir(
    data_dir: Path, store: PostgresStore, keys: PostgresSubjectKeyStore | None = None
) -> CopyReport:
    """Copy the data dir's platform into `store` (opened, so migrated), and its subject
    keys with their pseudonym secret into `keys` (a database of its own, committed just
    before the main copy commits), then count each table on both sides. ConfigError
    (nothing written) for a source that is not a data dir, subject keys and no `keys`, a
    destination that holds a platform or has an unmapped table, or a row that cannot be
    carried; StoreUnavailable when a database goes away."""
    source = Source(data_dir)
    try:
        subject_keys = source.subject_keys()
        secret = source.pseudonym_secret()
        if subject_keys and keys is None:
            raise ConfigError(
                f"the data dir holds {len(subject_keys)} subject keys: pass "
                "--subject-keys-to postgresql://… (a database of their own, docs/privacy.md)"
            )
        unknown = source.unknown_tables()
        if unknown:
            raise ConfigError(
                f"SQLite table {unknown[0]} has no mapping in cumulo migrate "
                "(store/copy_to_postgres.py): nothing was copied"
            )
        counts = [
            TableCount(t.dest, source.count(t.source_file, f"SELECT count(*) FROM {t.source}"))  # noqa: S608
            if source.has(t.source_file, t.source)
            else TableCount(t.dest, 0)
            for t in COPIED
        ]
        counts += [TableCount(d.dest, source.count(d.source_file, d.source_count)) for d in DERIVED]
        counts.append(TableCount(BUNDLES, source.bundle_count()))
        keys_count = TableCount(SUBJECT_KEYS, len(subject_keys))
        if keys is not None:
            counts.append(keys_count)
        report = CopyReport(counts, source.audit_heads(), source.left_behind())
        try:
            async with store.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                await _check_destination(conn)
                for table in COPIED:
                    if source.has(table.source_file, table.source):
                        await _copy_table(conn, source, table)
                for derived in DERIVED:
                    await conn.execute(derived.fill)
                await _copy_bundles(conn, source)
                if keys is not None and secret is not None:
                    # Last, inside the main transaction: a refused key copy writes neither.
                    keys_count.destination = await keys.adopt(secret, subject_keys)
                elif keys is not None:
                    keys_count.destination = 0
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the database is unavailable: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise ConfigError(f"the copy failed, nothing was written: {_first_line(exc)}") from exc
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read {data_dir}: {exc}; nothing was written") from exc
    finally:
        source.close()
    await _count_destination(store, report)
    return report


async def _count_destination(store: PostgresStore, report: CopyReport) -> None:
    async with store.connection() as conn:
        for c in report.counts:
            if c.table == SUBJECT_KEYS:
                continue  # counted in its own database by the copy
            cur = await conn.execute(f"SELECT count(*) FROM {c.table}")  # noqa: S608
            row = await cur.fetchone()
            c.destination = int(row[0]) if row else 0


async def destination_heads(store: PostgresStore) -> dict[str, tuple[int, bytes]]:
    """The destination's audit heads, as `CopyReport.audit_heads` holds the source's."""
    async with store.audit.snapshot() as view:
        heads: dict[str, AuditHeadRecord] = await view.heads()
    return {ns: (h.seq, h.hash) for ns, h in heads.items()}


def masked(dsn: str) -> str:
    """The DSN with its password replaced by ***, for anything printed."""
    dsn = re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", dsn)
    return re.sub(r"(password=)[^&\s]*", r"\1***", dsn)


def password_of(dsn: str) -> str | None:
    """The password in a DSN parse_dsn accepted (to scrub it from any message)."""
    value = conninfo_to_dict(dsn).get("password")
    return None if value is None else str(value)
