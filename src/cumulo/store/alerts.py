"""The alerts room's storage seam: anomaly alerts raised by cumulo.ai.insights and listed
by `GET /v1/alerts`.

One small async interface, `AlertRepository`, whose contract is written here, and one
implementation per backend, all held to tests/store/test_alerts_conformance.py:

- `cumulo.store.sqlite_alerts.SQLiteAlertRepository`: the embedded default, its own SQLite
  file `<data-dir>/insights.db` (kept apart from cumulo.db on purpose: a flood of anomalies
  never slows the platform's own store, and the file can be deleted to start afresh);
- `cumulo.store.postgres_alerts.PostgresAlertRepository`: the `ai_alerts` table of a
  PostgreSQL database shared by several gateways;
- `cumulo.store.memory_alerts.MemoryAlertRepository`: an in-memory fake for unit tests.

Alerts are derived, append-mostly data; the durable record of each is its audit event
(insights.py). Rows hold metadata only (entity, counts, score), never a body or a
credential.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`
(503 `store_unavailable`) from the driver's error; nothing driver-specific escapes.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

__all__ = ["MAX_ALERTS", "Alert", "AlertRepository"]

MAX_ALERTS = 100_000  # the newest kept; older ones are dropped as new ones arrive


@dataclass(frozen=True, slots=True)
class Alert:
    """One anomaly. Here, not in cumulo.ai, because the store depends on no room."""

    id: str
    ts: float
    namespace: str  # "*": platform-wide (an anonymous source, the admin key)
    kind: str  # "caller" or "function"
    entity: str  # key id, "source:ADDR" or "namespace/function"
    reasons: list[str]  # rate_spike, error_storm, auth_failures, many_functions, latency
    score: float
    window_start: float
    window_s: float
    observed: dict[str, Any]  # the window's counts; JSON-serialisable

    def public(self) -> dict[str, Any]:
        return asdict(self)


class AlertRepository(abc.ABC):
    """Where alerts live.

    Each method is one atomic step: concurrent calls, from one process or from several
    gateways on one database, each see the state before or after another `add`, never part
    of one. Returned alerts are the caller's own (mutating their lists and dicts changes
    nothing stored), and so are stored ones (mutating an alert after `add` changes nothing
    stored). `observed` goes through JSON: it is read back as JSON gives it.
    """

    @abc.abstractmethod
    async def add(self, alerts: list[Alert]) -> None:
        """Store the alerts, all or none; `[]` changes nothing. Then, in the same step,
        drop the oldest alerts (lowest `ts`; among equal ones the earliest added) beyond
        the newest `max_alerts` (the backend's, `MAX_ALERTS` unless it was built with
        another). Raises `cumulo.errors.Conflict` (code `alert_exists`), storing none of
        them, when an alert's id is taken already or appears twice in `alerts`."""

    @abc.abstractmethod
    async def list(
        self, namespace: str | None, since: float | None = None, limit: int = 100
    ) -> list[Alert]:
        """At most `limit` (>= 0) alerts, newest `ts` first, alerts with equal `ts` the
        latest added first. `namespace` None: every namespace ("*" is a namespace like any
        other: the platform-wide alerts); `since`: only alerts with `ts >= since`. A backend
        with nothing stored yet answers [] (the SQLite one without creating its file)."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds (a connection); a no-op when it owns nothing.
        Closing the PostgreSQL one leaves its store (the pool) open."""
        return None

    async def __aenter__(self) -> AlertRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
