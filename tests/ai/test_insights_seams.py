"""Insights reaches its alerts and the API keys only through what it is given (the store
seams of cumulo.store.alerts and cumulo.store.control), here their in-memory backends."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from cumulo.ai.insight_settings import InsightSettings
from cumulo.ai.insights import Insights
from cumulo.observability.outcomes import Denial, DenialObserver, OutcomeObserver
from cumulo.store.base import ApiKeyRecord
from cumulo.store.memory_alerts import MemoryAlertRepository
from cumulo.store.memory_control import MemoryControlRepository


@dataclass
class Host:
    outcome_observers: list[OutcomeObserver] = field(default_factory=list)
    denial_observers: list[DenialObserver] = field(default_factory=list)
    audit: Any = None  # no alert is raised here: nothing is audited
    control: Any = None
    executor: Any = None


class CountingRepository(MemoryAlertRepository):
    closed = 0

    async def aclose(self) -> None:
        self.closed += 1


def test_key_namespaces_come_from_the_injected_key_lister_and_stop_closes_alerts() -> None:
    async def main() -> None:
        control = MemoryControlRepository()
        await control.insert_key(
            ApiKeyRecord("key_beta1", "beta", "k", ("read",), 1.0, None, None, b"h1")
        )
        calls = 0

        async def all_keys() -> list[ApiKeyRecord]:
            nonlocal calls
            calls += 1
            return await control.all_keys()

        alerts = CountingRepository()
        host = Host()
        # A large min_train: the window is only backlogged, no sidecar is started.
        settings = InsightSettings(prewarm=False, min_train=10_000)
        insights = Insights(host, settings, alerts=alerts, all_keys=all_keys)
        assert insights.alerts is alerts
        assert host.denial_observers == [insights.usage.deny]
        for key_id in ("key_beta1", "key_beta1", "key_gone"):
            host.denial_observers[0](Denial(key_id, "10.0.0.1", "/v1/keys", 403, 5.0))
        assert await insights.close_window(0.0) == []
        assert calls == 1
        rows = {r["entity"]: r for r in insights._backlog}
        assert rows["key_beta1"]["namespace"] == "beta"
        assert rows["key_beta1"]["denials"] == 2
        assert rows["key_gone"]["namespace"] == "*"  # an unknown key: the platform's alert
        # A window of known ids asks nothing; one with an id not seen before asks again.
        host.denial_observers[0](Denial("key_beta1", None, "/v1/keys", 403, 65.0))
        await insights.close_window(60.0)
        assert calls == 1
        host.denial_observers[0](Denial("key_gone", None, "/v1/keys", 403, 125.0))
        await insights.close_window(120.0)
        assert calls == 2
        await insights.stop()
        assert alerts.closed == 1
        assert await alerts.list(None) == []

    asyncio.run(main())
