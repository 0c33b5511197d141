"""Which backend holds the platform's data: every room's repository, built for one store.

`cumulo up` without `--db` (or with `--db sqlite:///…`, which names the data dir's own
database) keeps the embedded default: SQLite files in the data dir, unchanged. `--db
postgresql://…` puts every room on one PostgreSQL database that several gateways share
(docs/storage.md); the data dir then holds what each gateway keeps for itself: the master
key file (or `CUMULO_MASTER_KEY`), `keyhash.secret`, unpacked code and worker sandboxes.

This module is the composition root's half that knows backends: rooms take the repositories
it builds and never import a backend themselves (the import-linter contracts in
pyproject.toml).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cumulo.errors import ConfigError, StoreUnavailable
from cumulo.store.alerts import AlertRepository
from cumulo.store.audit import AuditRepository
from cumulo.store.bundles import BundleRepository
from cumulo.store.changes import ChangeFeed
from cumulo.store.control import ControlRepository
from cumulo.store.invocations import InvocationRepository
from cumulo.store.jobs import JobQueueRepository
from cumulo.store.limits import LimitRepository
from cumulo.store.logs import LogRepository
from cumulo.store.metering import MeteringRepository
from cumulo.store.privacy import PrivacyRepository
from cumulo.store.secrets import SecretRepository
from cumulo.store.state import StateRepository
from cumulo.store.subject_keys import NamespaceKeys, SubjectKeyStore

if TYPE_CHECKING:
    from cumulo.security.crypto import Encryptor, MasterKey
    from cumulo.store.postgres import PostgresStore
    from cumulo.store.quantum import QuantumJobRepository
    from cumulo.store.sqlite import SQLiteStore

SCHEMES = ("sqlite", "postgresql", "postgres")
# /readyz asks the database at most this often (a load balancer polls it every second).
PING_TTL_S = 1.0
PING_TIMEOUT_S = 2.0


def parse_db_url(url: str | None, data_dir: Path) -> str | None:
    """The PostgreSQL DSN `--db` names, or None for the embedded SQLite default. A
    `sqlite:` URL must name the data dir's own database (the platform keeps several files
    there). ConfigError, one line, for anything else."""
    if url is None or not url.strip():
        return None
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unsupported --db {redact_dsn(url)!r}: use postgresql://USER@HOST/DB "
            "or sqlite:///PATH/TO/DATA-DIR/cumulo.db"
        )
    if scheme == "sqlite":
        path = Path(url.split(":", 1)[1].removeprefix("//") or ".")
        wanted = (data_dir / "cumulo.db").resolve()
        if path.resolve() not in (wanted, data_dir.resolve()):
            raise ConfigError(
                f"--db {url!r}: SQLite data lives in the data dir; use --data-dir "
                f"{path.parent if path.suffix else path} instead"
            )
        return None
    return url


def redact_dsn(dsn: str) -> str:
    """`dsn` with its password masked, for messages and logs (URLs and key=value strings)."""
    dsn = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn, flags=re.IGNORECASE)
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return dsn
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@dataclass
class Storage:
    """Every room's repository on one backend; `open()` before use, `close()` after."""

    kind: str  # "sqlite" or "postgresql"
    control: ControlRepository
    state: StateRepository
    secrets: SecretRepository
    audit: AuditRepository
    logs: LogRepository
    invocations: InvocationRepository
    jobs: JobQueueRepository
    alerts: AlertRepository
    metering: MeteringRepository
    changes: ChangeFeed
    limits: LimitRepository  # rate-limit usage and in-flight counts shared by gateways
    privacy: PrivacyRepository
    subject_keys: SubjectKeyStore  # where no backup of the main database reaches
    namespace_keys: NamespaceKeys  # the data keys that wrap subject keys
    sqlite: SQLiteStore | None = None  # the embedded default's store (privacy still uses it)
    postgres: PostgresStore | None = None
    bundles: BundleRepository | None = None  # None: bundles are files in the data dir
    quantum_path: Path | None = None  # SQLite: quantum/quantum.db
    closers: list[Callable[[], None]] = field(default_factory=list)  # run by close()
    _pinged_at: float = 0.0

    @property
    def shared(self) -> bool:
        """Whether other gateways may write this store (their changes must be followed)."""
        return self.postgres is not None

    def describe(self) -> str:
        if self.postgres is not None:
            return f"PostgreSQL {redact_dsn(self.postgres.dsn)}"
        assert self.sqlite is not None
        return f"SQLite {self.sqlite.path}"

    async def open(self, encryptor: Encryptor) -> None:
        """Connect (and migrate). ConfigError when the master key is not the one this
        database's data keys are wrapped with; StoreUnavailable when it cannot be reached."""
        if self.sqlite is not None:
            self.sqlite.open()
            # Finishes an interrupted master rotation; seals values from before encryption.
            await self.sqlite.call(encryptor.open, self.sqlite)
        if self.postgres is not None:
            await self.postgres.open()
            await check_postgres_master(self.postgres, encryptor.master)

    async def close(self) -> None:
        for close in self.closers:
            close()
        if self.sqlite is not None:
            self.sqlite.close()
        if self.postgres is not None:
            await self.postgres.close()

    async def ping(self) -> None:
        """StoreUnavailable when the shared database is unreachable (cached for a second);
        the embedded default's files are always there."""
        if self.postgres is None:
            return
        now = time.monotonic()
        if now - self._pinged_at < PING_TTL_S:
            return
        try:
            await asyncio.wait_for(self.postgres.ping(), timeout=PING_TIMEOUT_S)
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"the database did not answer within {PING_TIMEOUT_S:g} s"
            ) from exc
        self._pinged_at = now

    def quantum(self) -> QuantumJobRepository:
        """The quantum room's jobs (built on first use: the room loads Qiskit)."""
        if self.postgres is not None:
            return self.postgres.quantum
        from cumulo.store.sqlite_quantum import SQLiteQuantumJobRepository

        assert self.quantum_path is not None
        self.quantum_path.parent.mkdir(parents=True, exist_ok=True)
        return SQLiteQuantumJobRepository(self.quantum_path)

    async def has_quantum_jobs(self) -> bool:
        """Whether quantum jobs from before a restart may need resuming."""
        if self.postgres is None:
            return self.quantum_path is not None and self.quantum_path.exists()
        return bool(await self.postgres.quantum.active())


async def check_postgres_master(store: PostgresStore, master: MasterKey) -> None:
    recorded = await store.claim_master_id(master.key_id)
    if recorded != master.key_id:
        raise ConfigError(
            f"the master key ({master.describe()}, id {master.key_id}) is not the one this "
            f"database's data keys are wrapped with (id {recorded}): give this gateway the key the "
            "others use (CUMULO_MASTER_KEY, or their data dir's master.key)"
        )


def sqlite_storage(data_dir: Path, encryptor: Encryptor) -> Storage:
    """The embedded default: cumulo.db, insights.db and quantum/quantum.db in `data_dir`."""
    from cumulo.store.sqlite import SQLiteStore
    from cumulo.store.sqlite_alerts import SQLiteAlertRepository
    from cumulo.store.sqlite_audit import SQLiteAuditRepository
    from cumulo.store.sqlite_changes import SQLiteChangeFeed
    from cumulo.store.sqlite_control import SQLiteControlRepository
    from cumulo.store.sqlite_invocations import SQLiteInvocationRepository
    from cumulo.store.sqlite_jobs import SQLiteJobQueueRepository
    from cumulo.store.sqlite_limits import SQLiteLimitRepository
    from cumulo.store.sqlite_logs import SQLiteLogRepository
    from cumulo.store.sqlite_metering import SQLiteMeteringRepository
    from cumulo.store.sqlite_privacy import SQLitePrivacyRepository
    from cumulo.store.sqlite_secrets import SQLiteSecretRepository
    from cumulo.store.sqlite_state import SQLiteStateRepository
    from cumulo.store.sqlite_subject_keys import (
        KEYSTORE_FILE,
        SQLiteNamespaceKeys,
        SQLiteSubjectKeyStore,
    )

    db_path = data_dir / "cumulo.db"
    store = SQLiteStore(db_path, encryptor=encryptor)
    changes = SQLiteChangeFeed(db_path)
    return Storage(
        kind="sqlite",
        control=SQLiteControlRepository(store),
        state=SQLiteStateRepository(store),
        secrets=SQLiteSecretRepository(store),
        audit=SQLiteAuditRepository(store),
        logs=SQLiteLogRepository(store),
        invocations=SQLiteInvocationRepository(store),
        jobs=SQLiteJobQueueRepository(db_path, encryptor),
        # insights.db apart on purpose: a flood of anomalies never slows cumulo.db.
        alerts=SQLiteAlertRepository(data_dir / "insights.db"),
        metering=SQLiteMeteringRepository(store),
        changes=changes,
        # Its own file: a limit exchange never waits on cumulo.db's write lock.
        limits=SQLiteLimitRepository(data_dir / "limits.db"),
        privacy=SQLitePrivacyRepository(store),
        # A file of its own, never in cumulo.db: a backup of cumulo.db holds no subject key.
        subject_keys=SQLiteSubjectKeyStore(data_dir / KEYSTORE_FILE, store),
        namespace_keys=SQLiteNamespaceKeys(store, encryptor),
        sqlite=store,
        closers=[changes.close],
        quantum_path=data_dir / "quantum" / "quantum.db",
    )


def postgres_storage(
    dsn: str, subject_keys_dsn: str, encryptor: Encryptor, *, pool_size: int = 8
) -> Storage:
    """Every room on the PostgreSQL database `dsn`, sealed by `encryptor` (this store's
    own: one Encryptor per database, cumulo.store.postgres_keys); subject keys in the
    database `subject_keys_dsn` (another one: docs/privacy.md)."""
    from cumulo.store.postgres import PostgresStore

    store = PostgresStore(dsn, max_size=pool_size)
    return Storage(
        kind="postgresql",
        control=store.control,
        state=store.state(encryptor),
        secrets=store.secrets(encryptor),
        audit=store.audit,
        logs=store.logs(encryptor),
        invocations=store.invocations,
        jobs=store.jobs(encryptor),
        alerts=store.alerts,
        metering=store.metering,
        changes=store.changes(),
        limits=store.limits,
        privacy=store.privacy(),
        subject_keys=store.subject_keys(subject_keys_dsn),
        namespace_keys=store.namespace_keys(encryptor),
        postgres=store,
        bundles=store.bundles,
    )


def require_subject_keys_db(dsn: str | None, keys_dsn: str | None) -> str | None:
    """The subject-key database's DSN for `--db postgresql://…` (None on SQLite).
    ConfigError, one line, when it is missing or not PostgreSQL."""
    if dsn is None:
        if keys_dsn:
            raise ConfigError("--subject-keys-db goes with --db postgresql://… only")
        return None
    if not keys_dsn:
        raise ConfigError(
            "--db postgresql://… needs --subject-keys-db postgresql://…: a database of its "
            "own for the subject keys, so a backup of the main one never holds one "
            "(docs/privacy.md)"
        )
    if urlsplit(keys_dsn).scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(
            f"unsupported --subject-keys-db {redact_dsn(keys_dsn)!r}: use postgresql://…"
        )
    return keys_dsn


async def check_database(dsn: str, master: MasterKey) -> None:
    """Connect to and migrate `dsn`, check that `master` wraps its data keys, disconnect:
    `cumulo up` calls it before serving, so a wrong URL, an unreachable server, a bad
    password or the wrong master key is one line and exit 1."""
    from cumulo.store.postgres import PostgresStore

    # The pool logs each failed attempt; the caller prints the one line that matters.
    pool_log = logging.getLogger("psycopg.pool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    store = PostgresStore(dsn, min_size=1, max_size=1)
    try:
        await store.open()
        await check_postgres_master(store, master)
    finally:
        await store.close()
        pool_log.setLevel(level)
