"""The privacy room's tables in cumulo.db. Every readable subject id and every subject
value is ciphertext under that subject's key (keystore.SubjectKeys); rows are found by the
subject's pseudonym. Functions here run on the store thread (`store.call`)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class RequestRow:
    id: str
    namespace: str
    type: str
    regime: str
    pseudonym: str
    status: str
    received_at: float
    due_at: float
    updated_at: float
    completed_at: float | None
    overdue_alerted: bool
    counts: str | None
    error: str | None
    has_result: bool


REQUEST_COLUMNS = (
    "id, namespace, type, regime, pseudonym, status, received_at, due_at, updated_at, "
    "completed_at, overdue_alerted, counts, error, result IS NOT NULL"
)


def request_row(row: tuple[object, ...]) -> RequestRow:
    return RequestRow(
        id=str(row[0]),
        namespace=str(row[1]),
        type=str(row[2]),
        regime=str(row[3]),
        pseudonym=str(row[4]),
        status=str(row[5]),
        received_at=float(row[6]),  # type: ignore[arg-type]
        due_at=float(row[7]),  # type: ignore[arg-type]
        updated_at=float(row[8]),  # type: ignore[arg-type]
        completed_at=None if row[9] is None else float(row[9]),  # type: ignore[arg-type]
        overdue_alerted=bool(row[10]),
        counts=None if row[11] is None else str(row[11]),
        error=None if row[12] is None else str(row[12]),
        has_result=bool(row[13]),
    )
