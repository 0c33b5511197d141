"""Anomaly alerts: the record, and where they are kept.

Every alert is recorded in the tamper-evident audit log (insights.py), which is the durable
record; an `AlertRepository` (cumulo.store.alerts) holds what `GET /v1/alerts` lists. The
platform picks the backend (by default its own SQLite file, `<data-dir>/insights.db`);
nothing here knows which.
"""

from __future__ import annotations

import uuid
from typing import Any

from cumulo.store.alerts import Alert, AlertRepository

__all__ = ["Alert", "AlertStore", "new_alert"]

# The name alerts_api.py (and older callers) use for where alerts are kept.
AlertStore = AlertRepository


def new_alert(**fields: Any) -> Alert:
    """An alert with a fresh id ("alr_" and 16 hex digits)."""
    return Alert(id="alr_" + uuid.uuid4().hex[:16], **fields)
