"""Data subject requests: access, portability and erasure, with their legal deadlines.

States: received → processing → completed | failed. A request is *overdue* while it is not
finished after its deadline (GDPR art. 12(3): one month; CCPA §1798.130: 45 days); the
first time that is seen, an alert goes to the audit log."""

from __future__ import annotations

import calendar
import os
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from cumulo.privacy.tables import REQUEST_COLUMNS, RequestRow, request_row
from cumulo.store.sqlite import SQLiteStore

TYPES = ("access", "portability", "erasure")
REGIMES = ("gdpr", "ccpa")
RECEIVED, PROCESSING, COMPLETED, FAILED = "received", "processing", "completed", "failed"
FINISHED = (COMPLETED, FAILED)
CCPA_DAYS = 45


def deadline(regime: str, received_at: float) -> float:
    """GDPR: the same day of the next month (clamped to its last day); CCPA: 45 days."""
    if regime == "ccpa":
        return received_at + CCPA_DAYS * 86400.0
    when = datetime.fromtimestamp(received_at, UTC)
    year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day).timestamp()


def new_request_id(now: float) -> str:
    return f"dsr_{int(now * 1000):x}{os.urandom(4).hex()}"


def public(row: RequestRow, now: float) -> dict[str, Any]:
    overdue = row.status not in FINISHED and now > row.due_at
    return {
        "id": row.id,
        "namespace": row.namespace,
        "type": row.type,
        "regime": row.regime,
        "pseudonym": row.pseudonym,
        "status": row.status,
        "received_at": row.received_at,
        "due_at": row.due_at,
        "completed_at": row.completed_at,
        "overdue": overdue,
        "counts": orjson.loads(row.counts) if row.counts else None,
        "error": row.error,
        "export_ready": row.has_result,
    }


class RequestTable:
    """privacy_requests on the store thread."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def create(self, ns: str, kind: str, regime: str, pseudonym: str, now: float) -> RequestRow:
        rid = new_request_id(now)
        self.store.db.execute(
            "INSERT INTO privacy_requests (id, namespace, type, regime, pseudonym, status, "
            "received_at, due_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (rid, ns, kind, regime, pseudonym, RECEIVED, now, deadline(regime, now), now),
        )
        found = self.get(rid)
        assert found is not None
        return found

    def get(self, rid: str) -> RequestRow | None:
        row = self.store.db.execute(
            f"SELECT {REQUEST_COLUMNS} FROM privacy_requests WHERE id = ?",  # noqa: S608
            (rid,),
        ).fetchone()
        return None if row is None else request_row(row)

    def result(self, rid: str) -> bytes | None:
        row = self.store.db.execute(
            "SELECT result FROM privacy_requests WHERE id = ?", (rid,)
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def all(self, ns: str | None, limit: int = 500) -> list[RequestRow]:
        where, args = ("WHERE namespace = ?", (ns,)) if ns is not None else ("", ())
        rows = self.store.db.execute(
            f"SELECT {REQUEST_COLUMNS} FROM privacy_requests {where} "  # noqa: S608
            "ORDER BY received_at DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [request_row(r) for r in rows]

    def set_status(
        self,
        rid: str,
        status: str,
        now: float,
        *,
        counts: dict[str, int] | None = None,
        error: str | None = None,
        result: bytes | None = None,
    ) -> None:
        self.store.db.execute(
            "UPDATE privacy_requests SET status = ?, updated_at = ?, completed_at = ?, "
            "counts = COALESCE(?, counts), error = ?, result = COALESCE(?, result) WHERE id = ?",
            (
                status,
                now,
                now if status in FINISHED else None,
                orjson.dumps(counts).decode() if counts is not None else None,
                error,
                result,
                rid,
            ),
        )

    def newly_overdue(self, now: float) -> list[RequestRow]:
        """Unfinished requests past their deadline not alerted yet; marks them alerted."""
        with self.store.transaction() as db:
            rows = db.execute(
                f"SELECT {REQUEST_COLUMNS} FROM privacy_requests WHERE status NOT IN "  # noqa: S608
                "('completed', 'failed') AND due_at < ? AND overdue_alerted = 0",
                (now,),
            ).fetchall()
            db.execute(
                "UPDATE privacy_requests SET overdue_alerted = 1 WHERE status NOT IN "
                "('completed', 'failed') AND due_at < ? AND overdue_alerted = 0",
                (now,),
            )
        return [request_row(r) for r in rows]


def now_s() -> float:
    return time.time()
