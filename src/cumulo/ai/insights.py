"""Traffic forecasting, pre-warming and anomaly alerts, wired to the platform.

The gateway side of cumulo.ai's insights: observers that count (windows.py), the
pre-warmer loop (prewarm.py), the usage-window loop that has the sidecar score each closed
window and turns anomalies into alerts (alerts.py) and audit events. Nothing heavy is
imported here; the sidecar process starts only once some function has enough history to
forecast or enough usage windows were seen to train on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from cumulo.ai.alerts import Alert, new_alert
from cumulo.ai.insight_settings import InsightSettings
from cumulo.ai.prewarm import Clock, Prewarmer, WallClock
from cumulo.ai.sidecar_client import SidecarClient, SidecarError
from cumulo.ai.windows import ArrivalWindows, UsageRow, UsageWindows
from cumulo.observability.outcomes import DenialObserver, OutcomeObserver
from cumulo.security.audit import AuditLog
from cumulo.store.alerts import AlertRepository
from cumulo.store.base import ApiKeyRecord
from cumulo.tasks import cancel_and_wait

log = logging.getLogger("cumulo.insights")

MAX_BACKLOG = 5000  # usage rows kept while the detector has not trained yet

# Every API key, revoked ones included: ControlRepository.all_keys (cumulo.store.control).
KeyLister = Callable[[], Awaitable[Sequence[ApiKeyRecord]]]


class Host(Protocol):
    """What insights needs of the platform (gateway.platform.Platform)."""

    @property
    def outcome_observers(self) -> list[OutcomeObserver]: ...

    @property
    def denial_observers(self) -> list[DenialObserver]: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def control(self) -> Any: ...  # control.service.ControlPlane: routes.get(ns, name)

    @property
    def executor(self) -> Any: ...  # runtime.executor.LocalExecutor: prewarm_floor()


class Insights:
    """`alerts` is where alerts are kept; `stop()` closes it. `all_keys` maps key ids seen
    in usage windows to their namespaces."""

    def __init__(
        self,
        host: Host,
        settings: InsightSettings,
        *,
        alerts: AlertRepository,
        all_keys: KeyLister,
        clock: Clock | None = None,
    ) -> None:
        self.host = host
        self.settings = settings
        self.clock: Clock = clock or WallClock()
        self.sidecar = SidecarClient(settings.min_train)
        self.alerts = alerts
        self._all_keys = all_keys
        self.arrivals = ArrivalWindows(settings.bucket_s, settings.max_buckets)
        self.usage = UsageWindows()
        self.prewarmer: Prewarmer | None = None
        if settings.prewarm:
            host.outcome_observers.append(self.arrivals.observe)
            self.prewarmer = Prewarmer(
                settings,
                self.arrivals,
                self.sidecar,
                self.apply_floor,
                self.concurrency_of,
                self.clock,
            )
        if settings.anomaly:
            host.outcome_observers.append(self.usage.observe)
            host.denial_observers.append(self.usage.deny)
        self._watcher: asyncio.Task[None] | None = None
        self._backlog: deque[dict[str, Any]] = deque(maxlen=MAX_BACKLOG)
        self._trained = False
        self._key_namespaces: dict[str, str] = {}
        self._warming: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.prewarmer is not None:
            self.prewarmer.start()
        if self.settings.anomaly:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self.prewarmer is not None:
            await self.prewarmer.stop()
        await cancel_and_wait(self._watcher)
        await cancel_and_wait(self._warming)
        await self.sidecar.stop()
        await self.alerts.aclose()

    # ------------------------------------------------------------ pre-warming
    async def _spec(self, namespace: str, function: str) -> Any:
        route = await self.host.control.routes.get(namespace, function)
        if route is None or not route.specs:
            return None
        # The live version carrying the most traffic (cumulative weights -> weights).
        weights = [b - a for a, b in zip((0, *route.cumulative), route.cumulative, strict=False)]
        return route.specs[max(range(len(weights)), key=weights.__getitem__)]

    async def apply_floor(self, namespace: str, function: str, workers: int, hold_s: float) -> int:
        spec = await self._spec(namespace, function)
        if spec is None:
            return 0
        return int(self.host.executor.prewarm_floor(spec, workers, hold_s))

    async def concurrency_of(self, namespace: str, function: str) -> int | None:
        spec = await self._spec(namespace, function)
        return None if spec is None else int(spec.config.concurrency)

    # ------------------------------------------------------------ anomalies
    async def _watch(self) -> None:
        window = self.settings.window_s
        while True:
            now = self.clock.time()
            await self.clock.sleep(window - (now % window) + 1e-3)
            try:
                await self.close_window(self.clock.time() - window)
            except Exception:
                log.exception("anomaly window failed")

    async def close_window(self, window_start: float) -> list[Alert]:
        unknown = [e for e in self.usage.callers if e.startswith("key_")]
        if any(e not in self._key_namespaces for e in unknown):
            keys = await self._all_keys()
            self._key_namespaces = {k.id: k.namespace for k in keys}
        rows = self.usage.close(self._key_namespaces)
        if not rows:
            return []
        wire = [r.to_wire() for r in rows]
        if not self._trained:
            self._backlog.extend(wire)
            if len(self._backlog) < self.settings.min_train:
                if 2 * len(self._backlog) >= self.settings.min_train:
                    self._warm_sidecar()
                return []
            try:
                await self.sidecar.call("observe", {"rows": list(self._backlog)})
            except SidecarError as exc:
                log.warning("anomaly detector not trained yet: %s", exc)
                return []
            self._backlog.clear()
            self._trained = True
            return []
        try:
            verdicts = await self.sidecar.call("score", {"rows": wire})
        except SidecarError as exc:
            log.warning("usage window not scored: %s", exc)
            if self.sidecar.starts and not self.sidecar.running:
                self._trained = False  # a restarted sidecar relearns from a new backlog
            return []
        alerts = [
            self._alert(row, verdict, window_start)
            for row, verdict in zip(rows, verdicts, strict=True)
            if verdict.get("anomalous")
        ]
        if alerts:
            await self.alerts.add(alerts)
            for alert in alerts:
                self.host.audit.record(
                    alert.namespace,
                    "cumulo",
                    "alert.anomaly",
                    alert.entity,
                    "raised",
                    None,
                    {
                        "alert_id": alert.id,
                        "kind": alert.kind,
                        "reasons": alert.reasons,
                        "anomaly_score": round(alert.score, 4),
                        **alert.observed,
                    },
                )
                log.warning(
                    "anomaly: %s %s in %s (%s)",
                    alert.kind,
                    alert.entity,
                    alert.namespace,
                    ", ".join(alert.reasons),
                )
        return alerts

    def _warm_sidecar(self) -> None:
        """Start the sidecar and load its libraries while the backlog fills (once)."""
        if self._warming is None:
            self._warming = asyncio.get_running_loop().create_task(self._warm())

    async def _warm(self) -> None:
        try:
            await self.sidecar.call("warm", {})
        except SidecarError as exc:
            log.warning("insights sidecar did not start: %s", exc)

    def _alert(self, row: UsageRow, verdict: dict[str, Any], window_start: float) -> Alert:
        return new_alert(
            ts=time.time(),
            namespace=row.namespace,
            kind=row.kind,
            entity=row.entity,
            reasons=[str(r) for r in verdict.get("reasons", [])],
            score=float(verdict.get("score", 0.0)),
            window_start=window_start,
            window_s=self.settings.window_s,
            observed={
                "requests": row.requests,
                "errors": row.errors,
                "denials": row.denials,
                "distinct": row.distinct,
                "latency_ms": row.latency_ms,
            },
        )
