"""PostgreSQL backend: one psycopg 3 `AsyncConnectionPool` per process, a versioned schema,
and the repositories over it (so far: `PostgresControlRepository`).

Schema migrations live in `MIGRATIONS`, numbered from 1 and never edited once released (a
change is a new migration). `PostgresStore.migrate()` applies the missing ones in one
transaction under a transaction-scoped advisory lock, recording each in
`schema_migrations`: gateways starting together against one database apply them once, and
a start against a migrated database changes nothing.

Connection failures (server down or restarting, sessions terminated, no pooled connection
within `timeout`) surface as `cumulo.errors.StoreUnavailable`, raised from the driver's
error. Pooled connections are checked before use, so a database that came back is used
again without a restart.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from cumulo.errors import ConfigError, Conflict, StoreUnavailable
from cumulo.store.base import ApiKeyRecord, FunctionRecord, VersionRecord
from cumulo.store.control import ControlRepository
from cumulo.store.postgres_alerts import PostgresAlertRepository
from cumulo.store.postgres_metering import PostgresMeteringRepository
from cumulo.store.postgres_quantum import PostgresQuantumJobRepository

if TYPE_CHECKING:
    from cumulo.store.postgres_audit import PostgresAuditRepository
    from cumulo.store.postgres_bundles import PostgresBundleRepository
    from cumulo.store.postgres_changes import PostgresChangeFeed
    from cumulo.store.postgres_invocations import PostgresInvocationRepository
    from cumulo.store.postgres_jobs import PostgresJobQueueRepository
    from cumulo.store.postgres_keys import DataKeyCipher
    from cumulo.store.postgres_limits import PostgresLimitRepository
    from cumulo.store.postgres_logs import PostgresLogRepository
    from cumulo.store.postgres_privacy import PostgresPrivacyRepository
    from cumulo.store.postgres_secrets import PostgresSecretRepository
    from cumulo.store.postgres_state import PostgresStateRepository
    from cumulo.store.postgres_subject_keys import (
        PostgresNamespaceCipher,
        PostgresNamespaceKeys,
        PostgresSubjectKeyStore,
    )

# After a call finds the database unreachable, calls fail at once for FAIL_FAST_S, then
# the next one tries again waiting at most RETRY_TIMEOUT_S (not the full pool timeout).
FAIL_FAST_S = 1.0
RETRY_TIMEOUT_S = 1.0
# How long the pool keeps retrying one lost connection. Its delay doubles each try with no
# cap, so after a long outage the pool slept up to half the outage past the server's
# return (a gateway served 503s for 10-18 s after a 20-40 s restart); giving up after a
# few seconds lets the next call start a fresh attempt at once.
RECONNECT_GIVE_UP_S = 3.0
# pg_advisory_xact_lock key that serialises migrations: "cumulo" in ASCII.
MIGRATION_LOCK = 0x63756D756C6F


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "control room: API keys, functions, versions, traffic history",
        """
        CREATE TABLE api_keys (
            seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
            id text PRIMARY KEY,
            namespace text NOT NULL,
            name text NOT NULL,
            key_hash bytea NOT NULL UNIQUE,
            scopes text[] NOT NULL,
            created_at double precision NOT NULL,
            expires_at double precision,
            revoked_at double precision);
        CREATE TABLE functions (
            namespace text NOT NULL,
            name text NOT NULL,
            created_at double precision NOT NULL,
            traffic json NOT NULL,
            next_version integer NOT NULL,
            PRIMARY KEY (namespace, name));
        CREATE TABLE versions (
            namespace text NOT NULL,
            function text NOT NULL,
            version integer NOT NULL,
            bundle_sha text NOT NULL,
            module text NOT NULL,
            attr text NOT NULL,
            kind text NOT NULL,
            config json NOT NULL,
            created_at double precision NOT NULL,
            PRIMARY KEY (namespace, function, version));
        CREATE INDEX versions_by_bundle ON versions (bundle_sha);
        CREATE TABLE traffic_history (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            namespace text NOT NULL,
            function text NOT NULL,
            traffic json NOT NULL);
        CREATE INDEX traffic_history_by_function ON traffic_history (namespace, function, seq);
        """,
    ),
    Migration(
        2,
        "metering: hourly usage per function, monthly quotas",
        """
        CREATE TABLE usage_hourly (
            namespace text NOT NULL,
            function text NOT NULL,
            hour bigint NOT NULL,
            invocations bigint NOT NULL,
            errors bigint NOT NULL,
            gb_seconds double precision NOT NULL,
            cpu_seconds double precision NOT NULL,
            wall_seconds double precision NOT NULL,
            bytes_in bigint NOT NULL,
            bytes_out bigint NOT NULL,
            peak_rss_mb double precision NOT NULL,
            PRIMARY KEY (namespace, function, hour));
        CREATE INDEX usage_hourly_by_hour ON usage_hourly (hour);
        CREATE TABLE metering_quotas (
            namespace text PRIMARY KEY,
            gb_seconds double precision,
            invocations bigint,
            updated_at double precision NOT NULL);
        """,
    ),
    Migration(
        3,
        "quantum room: quantum jobs",
        """
        CREATE TABLE quantum_jobs (
            id text PRIMARY KEY,
            namespace text NOT NULL,
            state text NOT NULL,
            created_at double precision NOT NULL,
            started_at double precision,
            finished_at double precision,
            idempotency_key text,
            request_hash text NOT NULL,
            request bytea NOT NULL,
            method text,
            device text,
            estimated_bytes bigint,
            num_pubs integer NOT NULL,
            seed bigint NOT NULL,
            timeout_s double precision NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            events json NOT NULL,
            error json,
            result bytea);
        CREATE UNIQUE INDEX quantum_jobs_idempotency
            ON quantum_jobs (namespace, idempotency_key) WHERE idempotency_key IS NOT NULL;
        CREATE INDEX quantum_jobs_namespace
            ON quantum_jobs (namespace, created_at DESC, id COLLATE "C" DESC);
        CREATE INDEX quantum_jobs_active ON quantum_jobs (created_at, id COLLATE "C")
            WHERE state IN ('queued', 'running', 'cancelling');
        """,
    ),
    Migration(
        4,
        "alerts room: anomaly alerts",
        """
        CREATE TABLE ai_alerts (
            seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
            id text PRIMARY KEY,
            ts double precision NOT NULL,
            namespace text NOT NULL,
            kind text NOT NULL,
            entity text NOT NULL,
            reasons text[] NOT NULL,
            score double precision NOT NULL,
            window_start double precision NOT NULL,
            window_s double precision NOT NULL,
            observed json NOT NULL);
        CREATE INDEX ai_alerts_by_namespace ON ai_alerts (namespace, ts DESC, seq DESC);
        CREATE INDEX ai_alerts_by_ts ON ai_alerts (ts DESC, seq DESC);
        """,
    ),
    Migration(
        5,
        "change feed: the control epoch NOTIFY carries (store/postgres_changes.py)",
        """
        CREATE TABLE control_epoch (
            id boolean PRIMARY KEY DEFAULT true CHECK (id),
            epoch bigint NOT NULL);
        INSERT INTO control_epoch (id, epoch) VALUES (true, 0);
        """,
    ),
    Migration(
        6,
        "events room: the job queue, schedules and their fires, job trace contexts, topics",
        """
        CREATE TABLE event_jobs (
            id text COLLATE "C" PRIMARY KEY,
            namespace text NOT NULL,
            function text NOT NULL,
            source text NOT NULL,
            body bytea NOT NULL,
            idempotency_key text,
            request_hash text NOT NULL,
            status text NOT NULL,
            visible_at double precision NOT NULL,
            lease_owner text,
            deliveries integer NOT NULL DEFAULT 0,
            attempts integer NOT NULL DEFAULT 0,
            max_attempts integer NOT NULL,
            interruptions integer NOT NULL DEFAULT 0,
            replays integer NOT NULL DEFAULT 0,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            finished_at double precision,
            result_status integer,
            result bytea,
            error text);
        CREATE INDEX event_jobs_due ON event_jobs (visible_at, id)
            WHERE status IN ('queued', 'running');
        CREATE INDEX event_jobs_owner ON event_jobs (lease_owner) WHERE status = 'running';
        CREATE INDEX event_jobs_dead ON event_jobs (namespace, id)
            WHERE status IN ('failed', 'dead');
        CREATE INDEX event_jobs_finished ON event_jobs (finished_at)
            WHERE status IN ('succeeded', 'failed');
        CREATE UNIQUE INDEX event_jobs_idempotency ON event_jobs (namespace, idempotency_key)
            WHERE idempotency_key IS NOT NULL;
        CREATE TABLE event_schedules (
            namespace text NOT NULL,
            function text NOT NULL,
            cron text NOT NULL,
            since double precision NOT NULL,
            PRIMARY KEY (namespace, function, cron));
        CREATE TABLE event_schedule_fires (
            namespace text NOT NULL,
            function text NOT NULL,
            cron text NOT NULL,
            slot double precision NOT NULL,
            job_id text NOT NULL,
            fired_at double precision NOT NULL,
            PRIMARY KEY (namespace, function, cron, slot));
        CREATE TABLE event_job_traces (
            id text COLLATE "C" PRIMARY KEY,
            traceparent text NOT NULL,
            tracestate text);
        CREATE TABLE event_subscriptions (
            namespace text NOT NULL,
            topic text NOT NULL,
            function text NOT NULL,
            since double precision NOT NULL,
            PRIMARY KEY (namespace, topic, function));
        CREATE INDEX event_subscriptions_function ON event_subscriptions (namespace, function);
        CREATE TABLE event_published (
            namespace text NOT NULL,
            source text NOT NULL,
            event_id text NOT NULL,
            topic text NOT NULL,
            deliveries integer NOT NULL,
            published_at double precision NOT NULL,
            PRIMARY KEY (namespace, source, event_id));
        CREATE INDEX event_published_at ON event_published (published_at);
        """,
    ),
    Migration(
        7,
        "state and secrets, sealed under namespace data keys (store/postgres_keys.py)",
        """
        CREATE TABLE data_keys (
            namespace text NOT NULL,
            version integer NOT NULL,
            master_id text NOT NULL,
            wrapped bytea NOT NULL,
            created_at double precision NOT NULL,
            PRIMARY KEY (namespace, version));
        CREATE TABLE state (
            namespace text NOT NULL,
            function text NOT NULL,
            key text NOT NULL,
            key_sealed bytea,
            value bytea NOT NULL,
            version bigint NOT NULL,
            updated_at double precision NOT NULL,
            PRIMARY KEY (namespace, function, key));
        CREATE TABLE secrets (
            namespace text NOT NULL,
            name text NOT NULL,
            value bytea NOT NULL,
            updated_at double precision NOT NULL,
            PRIMARY KEY (namespace, name));
        """,
    ),
    Migration(
        8,
        "function logs (sealed, one ordered sequence per function) and invocation records",
        """
        CREATE TABLE log_heads (
            namespace text NOT NULL,
            function text NOT NULL,
            seq bigint NOT NULL,
            PRIMARY KEY (namespace, function));
        CREATE TABLE logs (
            namespace text NOT NULL,
            function text NOT NULL,
            seq bigint NOT NULL,
            version integer NOT NULL,
            invocation_id text NOT NULL,
            ts double precision NOT NULL,
            level text NOT NULL,
            message bytea NOT NULL,
            PRIMARY KEY (namespace, function, seq));
        CREATE TABLE invocations (
            id text PRIMARY KEY,
            namespace text NOT NULL,
            function text NOT NULL,
            version integer NOT NULL,
            status integer NOT NULL,
            code text NOT NULL,
            cold boolean NOT NULL,
            started_at double precision NOT NULL,
            duration_ms double precision NOT NULL);
        CREATE INDEX invocations_by_function ON invocations (namespace, function, started_at);
        """,
    ),
    Migration(
        9,
        "audit log: hash-chained rows per namespace and their heads (store/postgres_audit.py)",
        """
        CREATE TABLE audit_log (
            namespace text NOT NULL,
            seq bigint NOT NULL,
            ts double precision NOT NULL,
            actor text NOT NULL,
            action text NOT NULL,
            target text NOT NULL,
            result text NOT NULL,
            source text NOT NULL,
            details text NOT NULL,
            prev_hash bytea NOT NULL,
            hash bytea NOT NULL,
            PRIMARY KEY (namespace, seq));
        CREATE INDEX audit_log_by_hash ON audit_log (namespace, hash);
        CREATE TABLE audit_heads (
            namespace text PRIMARY KEY,
            seq bigint NOT NULL,
            hash bytea NOT NULL,
            mac bytea NOT NULL);
        """,
    ),
    Migration(
        10,
        "function bundles (content-addressed) and the master key's id (crypto_meta)",
        """
        CREATE TABLE bundles (
            sha text PRIMARY KEY,
            data bytea NOT NULL,
            created_at double precision NOT NULL);
        CREATE TABLE crypto_meta (
            name text PRIMARY KEY,
            value text NOT NULL);
        """,
    ),
    Migration(
        11,
        "privacy room: subject state, logs, invocations, consent, requests, retention "
        "(subject keys live in a database of their own: store/postgres_subject_keys)",
        """
        CREATE TABLE privacy_state (
            namespace text NOT NULL,
            function text NOT NULL,
            pseudonym text NOT NULL,
            key_hash text NOT NULL,
            value bytea NOT NULL,
            version bigint NOT NULL,
            updated_at double precision NOT NULL,
            PRIMARY KEY (namespace, function, pseudonym, key_hash));
        CREATE INDEX privacy_state_by_subject ON privacy_state (namespace, pseudonym);
        CREATE TABLE privacy_logs (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            namespace text NOT NULL,
            function text NOT NULL,
            pseudonym text NOT NULL,
            invocation_id text NOT NULL,
            ts double precision NOT NULL,
            blob bytea NOT NULL);
        CREATE INDEX privacy_logs_by_subject ON privacy_logs (namespace, pseudonym, seq);
        CREATE TABLE privacy_invocations (
            id text PRIMARY KEY,
            namespace text NOT NULL,
            function text NOT NULL,
            pseudonym text NOT NULL,
            started_at double precision NOT NULL,
            blob bytea NOT NULL);
        CREATE INDEX privacy_invocations_by_subject
            ON privacy_invocations (namespace, pseudonym);
        CREATE TABLE privacy_consent (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            namespace text NOT NULL,
            pseudonym text NOT NULL,
            purpose text NOT NULL,
            granted boolean NOT NULL,
            ts double precision NOT NULL,
            blob bytea NOT NULL);
        CREATE INDEX privacy_consent_by_subject
            ON privacy_consent (namespace, pseudonym, purpose, seq);
        CREATE TABLE privacy_requests (
            id text PRIMARY KEY,
            namespace text NOT NULL,
            type text NOT NULL,
            regime text NOT NULL,
            pseudonym text NOT NULL,
            status text NOT NULL,
            received_at double precision NOT NULL,
            due_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            completed_at double precision,
            overdue_alerted boolean NOT NULL DEFAULT false,
            counts text,
            error text,
            result bytea);
        CREATE INDEX privacy_requests_by_subject ON privacy_requests (namespace, pseudonym);
        CREATE TABLE privacy_retention (
            namespace text PRIMARY KEY,
            ttl_s double precision NOT NULL);
        """,
    ),
    Migration(
        12,
        "shared limits: token usage per window and in-flight counts per gateway "
        "(store/postgres_limits.py)",
        """
        CREATE TABLE limit_usage (
            key text NOT NULL,
            win bigint NOT NULL,
            gateway text NOT NULL,
            used bigint NOT NULL,
            PRIMARY KEY (key, win, gateway));
        CREATE INDEX limit_usage_by_win ON limit_usage (win);
        CREATE TABLE limit_inflight (
            gateway text NOT NULL,
            namespace text NOT NULL,
            inflight bigint NOT NULL,
            expires_at double precision NOT NULL,
            PRIMARY KEY (gateway, namespace));
        CREATE INDEX limit_inflight_by_expiry ON limit_inflight (expires_at);
        """,
    ),
    Migration(
        13,
        "quantum room: job leases, so several gateways run each job once",
        """
        ALTER TABLE quantum_jobs ADD COLUMN owner text;
        ALTER TABLE quantum_jobs ADD COLUMN lease_until double precision;
        ALTER TABLE quantum_jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
        CREATE INDEX quantum_jobs_owner ON quantum_jobs (owner)
            WHERE state IN ('queued', 'running', 'cancelling');
        """,
    ),
)


def _unavailable(exc: psycopg.Error) -> StoreUnavailable:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return StoreUnavailable(f"the database is unavailable: {first}")


def _traffic_to_json(traffic: dict[int, int]) -> str:
    return orjson.dumps({str(v): w for v, w in traffic.items()}).decode()


def _traffic_from_json(raw: str) -> dict[int, int]:
    return {int(v): int(w) for v, w in orjson.loads(raw).items()}


class PostgresStore:
    """The pool and the schema. `await open()` connects (and migrates); `await close()`.

    `dsn` is a libpq connection string or `postgresql://` URL. `timeout` bounds how long a
    call waits for a pooled connection before it fails with `StoreUnavailable`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._failed_at: float | None = None  # the last time no connection could be had
        self._failure = ""
        self.pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=RECONNECT_GIVE_UP_S,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout))},
            name="cumulo",
        )

    async def open(self, *, migrate: bool = True) -> None:
        """Connect (StoreUnavailable when the database cannot be reached within `timeout`),
        then apply missing migrations unless `migrate` is false. A store whose open failed
        is closed for good: retry with a new one."""
        try:
            await self.pool.open(wait=True, timeout=self.timeout)
        except psycopg.OperationalError as exc:  # PoolTimeout is one
            await self.pool.close()
            raise _unavailable(await self._why_not(exc)) from exc
        if migrate:
            await self.migrate()

    async def _why_not(self, exc: psycopg.OperationalError) -> psycopg.OperationalError:
        """The pool says only that it timed out: one direct attempt names the cause
        (refused, unknown host, bad password)."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=2)
        except psycopg.OperationalError as cause:
            return cause
        await conn.close()
        return exc

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
        """A pooled connection (autocommit; use `conn.transaction()` for several
        statements). Connection failures inside become StoreUnavailable."""
        timeout = self.timeout
        if self._failed_at is not None:
            # Known down: fail at once for a moment, then let a call through to try again
            # on a short wait, so clients get their 503 fast instead of `timeout` each.
            if time.monotonic() - self._failed_at < FAIL_FAST_S:
                raise StoreUnavailable(self._failure)
            timeout = min(timeout, RETRY_TIMEOUT_S)
        acquired = False
        try:
            async with self.pool.connection(timeout=timeout) as conn:
                acquired, self._failed_at = True, None
                yield conn
        except psycopg.OperationalError as exc:
            # No connection to be had (PoolTimeout), or the one we had broke: down. A
            # query's own failure (a statement timeout) says nothing about the server.
            if not acquired or conn.broken:
                raise self._down(exc) from exc
            raise _unavailable(exc) from exc

    def _down(self, exc: psycopg.Error) -> StoreUnavailable:
        error = _unavailable(exc)
        self._failed_at, self._failure = time.monotonic(), str(error)
        return error

    # ------------------------------------------------------------ migrations
    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks, all in one transaction, under the
        advisory lock; the versions applied ([] when it was up to date). A database with
        a migration newer than this build knows is refused with ConfigError."""
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version integer PRIMARY KEY, description text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {int(r[0]) for r in await cur.fetchall()}
            known = {m.version for m in MIGRATIONS}
            if done - known:
                raise ConfigError(
                    f"the database's schema is at version {max(done)}, newer than this "
                    f"cumulo knows ({max(known)}): upgrade cumulo"
                )
            applied = []
            for migration in MIGRATIONS:
                if migration.version in done:
                    continue
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )
                applied.append(migration.version)
            return applied

    async def schema_version(self) -> int:
        """The newest migration applied (0 for an empty database)."""
        async with self.connection() as conn:
            cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            row = await cur.fetchone()
            if row is None or not row[0]:
                return 0
            cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    @property
    def control(self) -> PostgresControlRepository:
        return PostgresControlRepository(self)

    @property
    def metering(self) -> PostgresMeteringRepository:
        return PostgresMeteringRepository(self)

    @property
    def alerts(self) -> PostgresAlertRepository:
        return PostgresAlertRepository(self)

    def changes(self, *, check_s: float = 2.0) -> PostgresChangeFeed:
        from cumulo.store.postgres_changes import PostgresChangeFeed

        return PostgresChangeFeed(self, check_s=check_s)

    @property
    def quantum(self) -> PostgresQuantumJobRepository:
        return PostgresQuantumJobRepository(self)

    def state(self, encryptor: DataKeyCipher) -> PostgresStateRepository:
        """Function state, sealed by `encryptor` (one per database: store/postgres_keys)."""
        from cumulo.store.postgres_state import PostgresStateRepository

        return PostgresStateRepository(self, encryptor)

    def secrets(self, encryptor: DataKeyCipher) -> PostgresSecretRepository:
        """Secrets, sealed by `encryptor` (one per database: store/postgres_keys)."""
        from cumulo.store.postgres_secrets import PostgresSecretRepository

        return PostgresSecretRepository(self, encryptor)

    def logs(self, encryptor: DataKeyCipher) -> PostgresLogRepository:
        """Function logs, sealed by `encryptor` (one per database: store/postgres_keys)."""
        from cumulo.store.postgres_logs import PostgresLogRepository

        return PostgresLogRepository(self, encryptor)

    @property
    def invocations(self) -> PostgresInvocationRepository:
        from cumulo.store.postgres_invocations import PostgresInvocationRepository

        return PostgresInvocationRepository(self)

    def jobs(self, encryptor: DataKeyCipher | None) -> PostgresJobQueueRepository:
        """The events room's queue, on the database clock, its payloads sealed by
        `encryptor` (the platform passes its own; None stores them as given, for tests)."""
        from cumulo.store.postgres_jobs import PostgresJobQueueRepository

        return PostgresJobQueueRepository(self, encryptor)

    def privacy(self) -> PostgresPrivacyRepository:
        """The privacy room's rows (migration 11), sealed by cumulo.privacy before they
        arrive. Its subject keys are not here: `subject_keys(dsn, encryptor)`."""
        from cumulo.store.postgres_privacy import PostgresPrivacyRepository

        return PostgresPrivacyRepository(self)

    def subject_keys(self, dsn: str) -> PostgresSubjectKeyStore:
        """The subject-key store in the database at `dsn`, which must not be this one
        (its `open()` refuses it with ConfigError): docs/privacy.md."""
        from cumulo.store.postgres_subject_keys import PostgresSubjectKeyStore

        return PostgresSubjectKeyStore(dsn, main=self)

    def namespace_keys(self, encryptor: PostgresNamespaceCipher) -> PostgresNamespaceKeys:
        """The namespace data keys (this database's `data_keys`) that wrap subject keys,
        through `encryptor` (the one this database's other sealed repositories use)."""
        from cumulo.store.postgres_subject_keys import PostgresNamespaceKeys

        return PostgresNamespaceKeys(self, encryptor)

    @property
    def bundles(self) -> PostgresBundleRepository:
        """Function bundles, fetched by gateways that lack one on disk (store/bundles.py)."""
        from cumulo.store.postgres_bundles import PostgresBundleRepository

        return PostgresBundleRepository(self)

    # ------------------------------------------------------------ health and meta
    async def ping(self) -> None:
        """One round trip; StoreUnavailable when the database cannot be reached."""
        async with self.connection() as conn:
            await conn.execute("SELECT 1")

    async def claim_master_id(self, master_id: str) -> str:
        """Record `master_id` as the master key that wraps this database's data keys unless
        one is recorded already; the recorded id either way (the caller compares)."""
        async with self.connection() as conn:
            await conn.execute(
                "INSERT INTO crypto_meta (name, value) VALUES ('master_id', %s) "
                "ON CONFLICT (name) DO NOTHING",
                (master_id,),
            )
            cur = await conn.execute("SELECT value FROM crypto_meta WHERE name = 'master_id'")
            row = await cur.fetchone()
        return str(row[0]) if row else master_id

    @property
    def limits(self) -> PostgresLimitRepository:
        """Shared rate-limit usage and in-flight counts, on the database clock."""
        from cumulo.store.postgres_limits import PostgresLimitRepository

        return PostgresLimitRepository(self)

    @property
    def audit(self) -> PostgresAuditRepository:
        """The audit log's chains, appended to by every gateway (store/postgres_audit.py)."""
        from cumulo.store.postgres_audit import PostgresAuditRepository

        return PostgresAuditRepository(self)


_KEY_COLUMNS = "id, namespace, name, scopes, created_at, expires_at, revoked_at, key_hash"
_VERSION_COLUMNS = "version, bundle_sha, module, attr, kind, config::text, created_at"


def _key(r: tuple[Any, ...]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=r[0],
        namespace=r[1],
        name=r[2],
        scopes=tuple(r[3]),
        created_at=r[4],
        expires_at=r[5],
        revoked_at=r[6],
        key_hash=bytes(r[7]),
    )


def _version(namespace: str, name: str, r: tuple[Any, ...]) -> VersionRecord:
    return VersionRecord(namespace, name, r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5]), r[6])


class PostgresControlRepository(ControlRepository):
    """The control room on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    # ------------------------------------------------------------ API keys
    async def insert_key(self, record: ApiKeyRecord) -> None:
        try:
            async with self.store.connection() as conn:
                await conn.execute(
                    f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",  # noqa: S608
                    (
                        record.id,
                        record.namespace,
                        record.name,
                        list(record.scopes),
                        record.created_at,
                        record.expires_at,
                        record.revoked_at,
                        record.key_hash,
                    ),
                )
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict(f"API key {record.id!r} exists already", code="key_exists") from exc

    async def all_keys(self) -> list[ApiKeyRecord]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, seq"  # noqa: S608
            )
            return [_key(r) for r in await cur.fetchall()]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (now, key_id),
            )
            return cur.rowcount > 0

    # ------------------------------------------------------------ functions
    async def get_function(self, namespace: str, name: str) -> FunctionRecord | None:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT created_at, traffic::text FROM functions "
                "WHERE namespace = %s AND name = %s",
                (namespace, name),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return FunctionRecord(namespace, name, row[0], _traffic_from_json(row[1]))

    async def list_functions(self, namespace: str) -> list[FunctionRecord]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT name, created_at, traffic::text FROM functions WHERE namespace = %s "
                'ORDER BY name COLLATE "C"',
                (namespace,),
            )
            rows = await cur.fetchall()
        return [FunctionRecord(namespace, r[0], r[1], _traffic_from_json(r[2])) for r in rows]

    async def namespaces(self) -> list[str]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                'SELECT namespace FROM functions GROUP BY namespace ORDER BY namespace COLLATE "C"'
            )
            return [str(r[0]) for r in await cur.fetchall()]

    async def delete_function(self, namespace: str, name: str) -> bool:
        async with self.store.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM functions WHERE namespace = %s AND name = %s", (namespace, name)
            )
            deleted = cur.rowcount > 0
            for table in ("versions", "traffic_history"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE namespace = %s AND function = %s",  # noqa: S608
                    (namespace, name),
                )
        return deleted

    # ------------------------------------------------------------ versions
    async def add_version(
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
        config_json = orjson.dumps(config).decode()
        async with self.store.connection() as conn, conn.transaction():
            # Creates the function or takes the next number; either way the row stays
            # locked until commit, so concurrent deploys are numbered one after another.
            cur = await conn.execute(
                "INSERT INTO functions AS f (namespace, name, created_at, traffic, next_version) "
                "VALUES (%s, %s, %s, '{}', 2) ON CONFLICT (namespace, name) "
                "DO UPDATE SET next_version = f.next_version + 1 "
                "RETURNING f.next_version - 1, f.traffic::text",
                (namespace, name, now),
            )
            row = await cur.fetchone()
            assert row is not None
            version, traffic = int(row[0]), _traffic_from_json(row[1])
            await conn.execute(
                "INSERT INTO versions (namespace, function, version, bundle_sha, module, attr, "
                "kind, config, created_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s::json,%s)",
                (namespace, name, version, bundle_sha, module, attr, kind, config_json, now),
            )
            if promote or not traffic:
                await self._move(conn, namespace, name, traffic, {version: 100})
        return VersionRecord(
            namespace, name, version, bundle_sha, module, attr, kind, orjson.loads(config_json), now
        )

    async def get_version(self, namespace: str, name: str, version: int) -> VersionRecord | None:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions "  # noqa: S608
                "WHERE namespace = %s AND function = %s AND version = %s",
                (namespace, name, version),
            )
            row = await cur.fetchone()
        return None if row is None else _version(namespace, name, row)

    async def list_versions(self, namespace: str, name: str) -> list[VersionRecord]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions "  # noqa: S608
                "WHERE namespace = %s AND function = %s ORDER BY version",
                (namespace, name),
            )
            rows = await cur.fetchall()
        return [_version(namespace, name, r) for r in rows]

    async def bundle_shas(self) -> list[str]:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT DISTINCT bundle_sha FROM versions")
            return [str(r[0]) for r in await cur.fetchall()]

    async def bundle_in_use(self, sha: str) -> bool:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM versions WHERE bundle_sha = %s LIMIT 1", (sha,))
            return await cur.fetchone() is not None

    # ------------------------------------------------------------ traffic
    @staticmethod
    async def _move(
        conn: AsyncConnection[tuple[Any, ...]],
        namespace: str,
        name: str,
        old: dict[int, int],
        new: dict[int, int],
    ) -> None:
        if old:
            await conn.execute(
                "INSERT INTO traffic_history (namespace, function, traffic) VALUES (%s,%s,%s)",
                (namespace, name, _traffic_to_json(old)),
            )
        await conn.execute(
            "UPDATE functions SET traffic = %s WHERE namespace = %s AND name = %s",
            (_traffic_to_json(new), namespace, name),
        )

    async def _locked_traffic(
        self, conn: AsyncConnection[tuple[Any, ...]], namespace: str, name: str
    ) -> dict[int, int] | None:
        cur = await conn.execute(
            "SELECT traffic::text FROM functions WHERE namespace = %s AND name = %s FOR UPDATE",
            (namespace, name),
        )
        row = await cur.fetchone()
        return None if row is None else _traffic_from_json(row[0])

    async def set_traffic(self, namespace: str, name: str, traffic: dict[int, int]) -> bool:
        async with self.store.connection() as conn, conn.transaction():
            current = await self._locked_traffic(conn, namespace, name)
            if current is None:
                return False
            if current != traffic:
                await self._move(conn, namespace, name, current, traffic)
        return True

    async def rollback(self, namespace: str, name: str) -> dict[int, int] | None:
        async with self.store.connection() as conn, conn.transaction():
            current = await self._locked_traffic(conn, namespace, name)
            if current is None:
                return None
            cur = await conn.execute(
                "SELECT seq, traffic::text FROM traffic_history "
                "WHERE namespace = %s AND function = %s ORDER BY seq DESC",
                (namespace, name),
            )
            for seq, raw in await cur.fetchall():
                await conn.execute("DELETE FROM traffic_history WHERE seq = %s", (seq,))
                previous = _traffic_from_json(raw)
                if previous != current:
                    await conn.execute(
                        "UPDATE functions SET traffic = %s WHERE namespace = %s AND name = %s",
                        (raw, namespace, name),
                    )
                    return previous
        return None
