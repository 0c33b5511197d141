"""`TopicRepository` in memory, beside a `MemoryJobQueueRepository` (a unit-test fake held to
the conformance suite). Each method runs without awaiting: atomic on its event loop."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from cumulo.store.jobs import SOURCE_TOPIC, NewJob, new_job_id
from cumulo.store.memory_jobs import MemoryJobQueueRepository
from cumulo.store.topics import DEFAULT_MAX_ATTEMPTS, Published, Subscription, TopicRepository


class MemoryTopicRepository(TopicRepository):
    def __init__(self, jobs: MemoryJobQueueRepository) -> None:
        self.jobs = jobs
        self._subscriptions: dict[tuple[str, str, str], float] = {}  # (ns, topic, fn) → since
        self._published: dict[tuple[str, str, str], float] = {}  # (ns, source, id) → at

    async def set_subscriptions(
        self, namespace: str, function: str, topics: Iterable[str], now: float
    ) -> None:
        wanted = set(topics)
        for key in list(self._subscriptions):
            if key[0] == namespace and key[2] == function and key[1] not in wanted:
                del self._subscriptions[key]
        for topic in wanted:
            self._subscriptions.setdefault((namespace, topic, function), now)

    async def subscriptions(self, namespace: str | None = None) -> list[Subscription]:
        return [
            Subscription(*key)
            for key in sorted(self._subscriptions)
            if namespace is None or key[0] == namespace
        ]

    def _subscribers(self, namespace: str, topic: str) -> list[str]:
        return sorted(fn for ns, t, fn in self._subscriptions if (ns, t) == (namespace, topic))

    async def subscribers(self, namespace: str, topic: str) -> list[str]:
        return self._subscribers(namespace, topic)

    async def publish(
        self,
        namespace: str,
        topic: str,
        events: Sequence[dict[str, Any]],
        max_attempts: Mapping[str, int],
        now: float,
    ) -> list[Published]:
        subscribers = self._subscribers(namespace, topic)
        # Build every job first: a failure (an event JSON cannot encode) commits nothing.
        plan: list[tuple[tuple[str, str, str], list[NewJob]]] = []
        results = []
        seen = set(self._published)
        for event in events:
            key = (namespace, str(event["source"]), str(event["id"]))
            if key in seen:
                results.append(Published(event["id"], 0, duplicate=True))
                continue
            seen.add(key)
            body = orjson.dumps(event)
            jobs = [
                NewJob(
                    id=new_job_id(now),
                    namespace=namespace,
                    function=function,
                    body=body,
                    max_attempts=max_attempts.get(function, DEFAULT_MAX_ATTEMPTS),
                    source=SOURCE_TOPIC,
                )
                for function in subscribers
            ]
            plan.append((key, jobs))
            results.append(Published(event["id"], len(subscribers)))
        for key, jobs in plan:
            self._published[key] = now
            for job in jobs:
                self.jobs.insert(job, now)
        return results

    async def prune(self, before: float, limit: int = 5000) -> int:
        old = [key for key, at in self._published.items() if at < before][: max(limit, 0)]
        for key in old:
            del self._published[key]
        return len(old)
