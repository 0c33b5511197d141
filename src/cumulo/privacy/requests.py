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

from cumulo.store.privacy import RequestRecord

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


def public(row: RequestRecord, now: float) -> dict[str, Any]:
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


def now_s() -> float:
    return time.time()
