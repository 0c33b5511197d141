"""`AlertRepository` in memory: a fake for unit tests (no database, no thread), held to the
same conformance suite as the real backends."""

from __future__ import annotations

import dataclasses

import orjson

from cumulo.errors import Conflict
from cumulo.store.alerts import MAX_ALERTS, Alert, AlertRepository


def _copy(alert: Alert) -> Alert:
    # Through JSON, as on a real backend; numbers become floats as a REAL column makes them.
    return dataclasses.replace(
        alert,
        ts=float(alert.ts),
        reasons=[str(r) for r in alert.reasons],
        score=float(alert.score),
        window_start=float(alert.window_start),
        window_s=float(alert.window_s),
        observed=dict(orjson.loads(orjson.dumps(alert.observed))),
    )


class MemoryAlertRepository(AlertRepository):
    """A list in insertion order. Each method runs without awaiting, so it is atomic on its
    event loop, as the contract asks."""

    def __init__(self, *, max_alerts: int = MAX_ALERTS) -> None:
        self.max_alerts = max_alerts
        self._alerts: list[Alert] = []  # oldest added first

    async def add(self, alerts: list[Alert]) -> None:
        ids = [a.id for a in alerts]
        if len(set(ids)) != len(ids) or not {a.id for a in self._alerts}.isdisjoint(ids):
            raise Conflict("an alert with that id exists already", code="alert_exists")
        self._alerts.extend(_copy(a) for a in alerts)
        if len(self._alerts) > self.max_alerts:
            # Stable sort: among equal ts the earlier added stays earlier, and goes first.
            self._alerts.sort(key=lambda a: a.ts)
            del self._alerts[: len(self._alerts) - self.max_alerts]

    async def list(
        self, namespace: str | None, since: float | None = None, limit: int = 100
    ) -> list[Alert]:
        found = [
            a
            for a in reversed(self._alerts)  # latest added first among equal ts
            if (namespace is None or a.namespace == namespace) and (since is None or a.ts >= since)
        ]
        found.sort(key=lambda a: a.ts, reverse=True)  # stable: keeps that tie order
        return [_copy(a) for a in found[:limit]]
