"""`PrivacyRepository` on SQLite: the `privacy_*` tables of cumulo.db (formerly created by
cumulo.privacy.tables; same schema, so existing data dirs keep working), each call on the
store's database thread (`store.call`)."""

from __future__ import annotations

import sqlite3
from typing import Any

from cumulo.store.privacy import (
    ConsentRow,
    PrivacyRepository,
    RequestRecord,
    SealedInvocation,
    SealedLog,
    StateRow,
    StateUpdate,
)
from cumulo.store.sqlite import SQLiteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_state (
    namespace TEXT NOT NULL, function TEXT NOT NULL, pseudonym TEXT NOT NULL,
    key_hash TEXT NOT NULL, value BLOB NOT NULL, version INTEGER NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (namespace, function, pseudonym, key_hash));
CREATE INDEX IF NOT EXISTS privacy_state_by_subject ON privacy_state (namespace, pseudonym);
CREATE TABLE IF NOT EXISTS privacy_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, function TEXT NOT NULL,
    pseudonym TEXT NOT NULL, invocation_id TEXT NOT NULL, ts REAL NOT NULL, blob BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS privacy_logs_by_subject ON privacy_logs (namespace, pseudonym);
CREATE TABLE IF NOT EXISTS privacy_invocations (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, function TEXT NOT NULL,
    pseudonym TEXT NOT NULL, started_at REAL NOT NULL, blob BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS privacy_invocations_by_subject
    ON privacy_invocations (namespace, pseudonym);
CREATE TABLE IF NOT EXISTS privacy_consent (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, pseudonym TEXT NOT NULL,
    purpose TEXT NOT NULL, granted INTEGER NOT NULL, ts REAL NOT NULL, blob BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS privacy_consent_by_subject
    ON privacy_consent (namespace, pseudonym, purpose, seq);
CREATE TABLE IF NOT EXISTS privacy_requests (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, type TEXT NOT NULL, regime TEXT NOT NULL,
    pseudonym TEXT NOT NULL, status TEXT NOT NULL, received_at REAL NOT NULL,
    due_at REAL NOT NULL, updated_at REAL NOT NULL, completed_at REAL,
    overdue_alerted INTEGER NOT NULL DEFAULT 0, counts TEXT, error TEXT, result BLOB);
CREATE TABLE IF NOT EXISTS privacy_retention (namespace TEXT PRIMARY KEY, ttl_s REAL NOT NULL);
"""

# Tables with subject rows, in the order an erasure deletes them.
SUBJECT_TABLES = ("privacy_state", "privacy_logs", "privacy_invocations", "privacy_consent")

REQUEST_COLUMNS = (
    "id, namespace, type, regime, pseudonym, status, received_at, due_at, updated_at, "
    "completed_at, overdue_alerted, counts, error, result IS NOT NULL"
)
_UNFINISHED = "status NOT IN ('completed', 'failed') AND due_at < ? AND overdue_alerted = 0"


def request_record(row: tuple[Any, ...]) -> RequestRecord:
    return RequestRecord(
        id=str(row[0]),
        namespace=str(row[1]),
        type=str(row[2]),
        regime=str(row[3]),
        pseudonym=str(row[4]),
        status=str(row[5]),
        received_at=float(row[6]),
        due_at=float(row[7]),
        updated_at=float(row[8]),
        completed_at=None if row[9] is None else float(row[9]),
        overdue_alerted=bool(row[10]),
        counts=None if row[11] is None else str(row[11]),
        error=None if row[12] is None else str(row[12]),
        has_result=bool(row[13]),
    )


class _Tables:
    """The blocking half: every method runs on the store thread."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    @property
    def db(self) -> sqlite3.Connection:
        return self.store.db

    def open(self) -> None:
        self.db.executescript(SCHEMA)

    def _state_row(self, ns: str, fn: str, p: str, kh: str) -> tuple[bytes, int] | None:
        row = self.db.execute(
            "SELECT value, version FROM privacy_state WHERE namespace = ? AND function = ? "
            "AND pseudonym = ? AND key_hash = ?",
            (ns, fn, p, kh),
        ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]))

    def state_update(
        self, ns: str, fn: str, p: str, kh: str, update: StateUpdate, now: float
    ) -> tuple[int, bool]:
        with self.store.transaction() as db:
            found = self._state_row(ns, fn, p, kh)
            version = found[1] if found else 0
            value = update(found[0] if found else None, version)
            if value is None:
                return version, False
            db.execute(
                "INSERT INTO privacy_state VALUES (?,?,?,?,?,?,?) ON CONFLICT "
                "(namespace, function, pseudonym, key_hash) DO UPDATE SET value = excluded.value,"
                " version = excluded.version, updated_at = excluded.updated_at",
                (ns, fn, p, kh, value, version + 1, now),
            )
        return version + 1, True

    def state_delete(self, ns: str, fn: str, p: str, kh: str) -> bool:
        cur = self.db.execute(
            "DELETE FROM privacy_state WHERE namespace = ? AND function = ? AND pseudonym = ? "
            "AND key_hash = ?",
            (ns, fn, p, kh),
        )
        return cur.rowcount > 0

    def subject_state(self, ns: str, p: str) -> list[StateRow]:
        rows = self.db.execute(
            "SELECT function, key_hash, value, version, updated_at FROM privacy_state "
            "WHERE namespace = ? AND pseudonym = ? ORDER BY function, updated_at",
            (ns, p),
        ).fetchall()
        return [StateRow(str(r[0]), str(r[1]), bytes(r[2]), int(r[3]), float(r[4])) for r in rows]

    def append(self, logs: list[SealedLog], invocations: list[SealedInvocation]) -> None:
        with self.store.transaction() as db:
            for r in logs:
                db.execute(
                    "INSERT INTO privacy_logs (namespace, function, pseudonym, invocation_id, ts,"
                    " blob) VALUES (?,?,?,?,?,?)",
                    (r.namespace, r.function, r.pseudonym, r.invocation_id, r.ts, r.blob),
                )
            for i in invocations:
                db.execute(
                    "INSERT OR REPLACE INTO privacy_invocations VALUES (?,?,?,?,?,?)",
                    (i.id, i.namespace, i.function, i.pseudonym, i.started_at, i.blob),
                )

    def subject_logs(self, ns: str, p: str) -> list[SealedLog]:
        rows = self.db.execute(
            "SELECT function, invocation_id, ts, blob FROM privacy_logs "
            "WHERE namespace = ? AND pseudonym = ? ORDER BY seq",
            (ns, p),
        ).fetchall()
        return [SealedLog(ns, str(r[0]), p, str(r[1]), float(r[2]), bytes(r[3])) for r in rows]

    def subject_invocations(self, ns: str, p: str) -> list[SealedInvocation]:
        rows = self.db.execute(
            "SELECT id, function, started_at, blob FROM privacy_invocations "
            "WHERE namespace = ? AND pseudonym = ? ORDER BY started_at",
            (ns, p),
        ).fetchall()
        return [
            SealedInvocation(str(r[0]), ns, str(r[1]), p, float(r[2]), bytes(r[3])) for r in rows
        ]

    def consent_append(
        self, ns: str, p: str, purpose: str, granted: bool, blob: bytes, now: float
    ) -> None:
        self.db.execute(
            "INSERT INTO privacy_consent (namespace, pseudonym, purpose, granted, ts, blob) "
            "VALUES (?,?,?,?,?,?)",
            (ns, p, purpose, int(granted), now, blob),
        )

    def consent_current(self) -> dict[tuple[str, str, str], bool]:
        rows = self.db.execute(
            "SELECT namespace, pseudonym, purpose, granted FROM privacy_consent "
            "WHERE seq IN (SELECT MAX(seq) FROM privacy_consent "
            "GROUP BY namespace, pseudonym, purpose)"
        ).fetchall()
        return {(str(r[0]), str(r[1]), str(r[2])): bool(r[3]) for r in rows}

    def consent_of(self, ns: str, p: str) -> list[ConsentRow]:
        rows = self.db.execute(
            "SELECT seq, purpose, blob FROM privacy_consent WHERE namespace = ? AND pseudonym = ?"
            " ORDER BY seq",
            (ns, p),
        ).fetchall()
        return [ConsentRow(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def erase_subject(self, ns: str, p: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self.store.transaction() as db:
            for table in SUBJECT_TABLES:
                cur = db.execute(
                    f"DELETE FROM {table} WHERE namespace = ? AND pseudonym = ?",  # noqa: S608
                    (ns, p),
                )
                counts[table.removeprefix("privacy_")] = cur.rowcount
            db.execute(
                "UPDATE privacy_requests SET result = NULL WHERE namespace = ? AND pseudonym = ?",
                (ns, p),
            )
        return counts

    def scrub(self) -> None:
        # Fold the WAL back so freed ciphertext leaves the -wal file as well.
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def purge(self, ns: str, before: float) -> dict[str, int]:
        statements = {
            "subject_invocations": "DELETE FROM privacy_invocations WHERE namespace = ? "
            "AND started_at < ?",
            "subject_logs": "DELETE FROM privacy_logs WHERE namespace = ? AND ts < ?",
            "subject_state": "DELETE FROM privacy_state WHERE namespace = ? AND updated_at < ?",
        }
        with self.store.transaction() as db:
            return {
                name: db.execute(sql, (ns, before)).rowcount for name, sql in statements.items()
            }

    def namespaces(self) -> list[str]:
        rows = self.db.execute(
            "SELECT namespace FROM privacy_retention UNION SELECT namespace FROM privacy_state"
        ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def retention(self) -> dict[str, float]:
        rows = self.db.execute("SELECT namespace, ttl_s FROM privacy_retention").fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    def set_retention(self, ns: str, ttl_s: float | None) -> None:
        if ttl_s is None:
            self.db.execute("DELETE FROM privacy_retention WHERE namespace = ?", (ns,))
        else:
            self.db.execute(
                "INSERT INTO privacy_retention VALUES (?, ?) ON CONFLICT (namespace) "
                "DO UPDATE SET ttl_s = excluded.ttl_s",
                (ns, ttl_s),
            )

    def create_request(
        self, rid: str, ns: str, kind: str, regime: str, p: str, status: str, now: float, due: float
    ) -> RequestRecord:
        self.db.execute(
            "INSERT INTO privacy_requests (id, namespace, type, regime, pseudonym, status, "
            "received_at, due_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (rid, ns, kind, regime, p, status, now, due, now),
        )
        found = self.get_request(rid)
        assert found is not None
        return found

    def get_request(self, rid: str) -> RequestRecord | None:
        row = self.db.execute(
            f"SELECT {REQUEST_COLUMNS} FROM privacy_requests WHERE id = ?",  # noqa: S608
            (rid,),
        ).fetchone()
        return None if row is None else request_record(row)

    def request_result(self, rid: str) -> bytes | None:
        row = self.db.execute("SELECT result FROM privacy_requests WHERE id = ?", (rid,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def list_requests(self, ns: str | None, limit: int) -> list[RequestRecord]:
        where, args = ("WHERE namespace = ?", (ns,)) if ns is not None else ("", ())
        rows = self.db.execute(
            f"SELECT {REQUEST_COLUMNS} FROM privacy_requests {where} "  # noqa: S608
            "ORDER BY received_at DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [request_record(r) for r in rows]

    def set_request_status(
        self,
        rid: str,
        status: str,
        now: float,
        finished: bool,
        counts: str | None,
        error: str | None,
        result: bytes | None,
    ) -> None:
        self.db.execute(
            "UPDATE privacy_requests SET status = ?, updated_at = ?, completed_at = ?, "
            "counts = COALESCE(?, counts), error = ?, result = COALESCE(?, result) WHERE id = ?",
            (status, now, now if finished else None, counts, error, result, rid),
        )

    def newly_overdue(self, now: float) -> list[RequestRecord]:
        with self.store.transaction() as db:
            rows = db.execute(
                f"SELECT {REQUEST_COLUMNS} FROM privacy_requests WHERE {_UNFINISHED}",  # noqa: S608
                (now,),
            ).fetchall()
            db.execute(
                f"UPDATE privacy_requests SET overdue_alerted = 1 WHERE {_UNFINISHED}",  # noqa: S608
                (now,),
            )
        return [request_record(r) for r in rows]


class SQLitePrivacyRepository(PrivacyRepository):
    """The embedded backend. The store is opened and closed by its owner, not here."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._t = _Tables(store)

    async def open(self) -> None:
        await self.store.call(self._t.open)

    async def state_get(
        self, namespace: str, function: str, pseudonym: str, key_hash: str
    ) -> tuple[bytes, int] | None:
        return await self.store.call(self._t._state_row, namespace, function, pseudonym, key_hash)

    async def state_update(
        self,
        namespace: str,
        function: str,
        pseudonym: str,
        key_hash: str,
        update: StateUpdate,
        now: float,
    ) -> tuple[int, bool]:
        return await self.store.call(
            self._t.state_update, namespace, function, pseudonym, key_hash, update, now
        )

    async def state_delete(
        self, namespace: str, function: str, pseudonym: str, key_hash: str
    ) -> bool:
        return await self.store.call(self._t.state_delete, namespace, function, pseudonym, key_hash)

    async def subject_state(self, namespace: str, pseudonym: str) -> list[StateRow]:
        return await self.store.call(self._t.subject_state, namespace, pseudonym)

    async def append(self, logs: list[SealedLog], invocations: list[SealedInvocation]) -> None:
        if logs or invocations:
            await self.store.call(self._t.append, list(logs), list(invocations))

    async def subject_logs(self, namespace: str, pseudonym: str) -> list[SealedLog]:
        return await self.store.call(self._t.subject_logs, namespace, pseudonym)

    async def subject_invocations(self, namespace: str, pseudonym: str) -> list[SealedInvocation]:
        return await self.store.call(self._t.subject_invocations, namespace, pseudonym)

    async def consent_append(
        self, namespace: str, pseudonym: str, purpose: str, granted: bool, blob: bytes, now: float
    ) -> None:
        await self.store.call(
            self._t.consent_append, namespace, pseudonym, purpose, granted, blob, now
        )

    async def consent_current(self) -> dict[tuple[str, str, str], bool]:
        return await self.store.call(self._t.consent_current)

    async def consent_of(self, namespace: str, pseudonym: str) -> list[ConsentRow]:
        return await self.store.call(self._t.consent_of, namespace, pseudonym)

    async def erase_subject(self, namespace: str, pseudonym: str) -> dict[str, int]:
        return await self.store.call(self._t.erase_subject, namespace, pseudonym)

    async def scrub(self) -> None:
        await self.store.call(self._t.scrub)

    async def purge(self, namespace: str, before: float) -> dict[str, int]:
        return await self.store.call(self._t.purge, namespace, before)

    async def namespaces(self) -> list[str]:
        return await self.store.call(self._t.namespaces)

    async def retention(self) -> dict[str, float]:
        return await self.store.call(self._t.retention)

    async def set_retention(self, namespace: str, ttl_s: float | None) -> None:
        await self.store.call(self._t.set_retention, namespace, ttl_s)

    async def create_request(
        self,
        rid: str,
        namespace: str,
        kind: str,
        regime: str,
        pseudonym: str,
        status: str,
        now: float,
        due_at: float,
    ) -> RequestRecord:
        return await self.store.call(
            self._t.create_request, rid, namespace, kind, regime, pseudonym, status, now, due_at
        )

    async def get_request(self, rid: str) -> RequestRecord | None:
        return await self.store.call(self._t.get_request, rid)

    async def request_result(self, rid: str) -> bytes | None:
        return await self.store.call(self._t.request_result, rid)

    async def list_requests(self, namespace: str | None, limit: int = 500) -> list[RequestRecord]:
        return await self.store.call(self._t.list_requests, namespace, limit)

    async def set_request_status(
        self,
        rid: str,
        status: str,
        now: float,
        *,
        finished: bool,
        counts: str | None = None,
        error: str | None = None,
        result: bytes | None = None,
    ) -> None:
        await self.store.call(
            self._t.set_request_status, rid, status, now, finished, counts, error, result
        )

    async def newly_overdue(self, now: float) -> list[RequestRecord]:
        return await self.store.call(self._t.newly_overdue, now)
