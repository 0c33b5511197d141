"""The events room's topic seam: subscriptions (namespace, topic, function) and the dedupe
rows of published events, kept on the same backend as the job queue because a publish
inserts its dedupe row and one job per subscriber in ONE transaction.

Each `JobQueueRepository` gives its companion with `topics()`; the conformance suite is
tests/store/test_jobs_conformance.py (its topic cases run on all three backends).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_MAX_ATTEMPTS", "Published", "Subscription", "TopicRepository"]

# A subscriber the caller did not give attempts for (it subscribed meanwhile): the default
# of cumulo.sdk.spec.FunctionConfig.max_attempts (checked by tests/events/test_topics.py).
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Published:
    id: str
    deliveries: int  # jobs enqueued for this publish: one per subscriber, 0 for a duplicate
    duplicate: bool = False  # (source, id) was published before in the namespace


@dataclass(frozen=True, slots=True)
class Subscription:
    namespace: str
    topic: str
    function: str


class TopicRepository(abc.ABC):
    """Where subscriptions and published event ids live. Every method is one atomic step,
    across gateways on one database. Names arrive validated (events.topics)."""

    @abc.abstractmethod
    async def set_subscriptions(
        self, namespace: str, function: str, topics: Iterable[str], now: float
    ) -> None:
        """Make `topics` the function's subscriptions ([] removes them all); a kept one keeps
        its `since`."""

    @abc.abstractmethod
    async def subscriptions(self, namespace: str | None = None) -> list[Subscription]:
        """Every subscription (of `namespace` when given), ordered by (namespace, topic,
        function)."""

    @abc.abstractmethod
    async def subscribers(self, namespace: str, topic: str) -> list[str]:
        """The functions of `namespace` subscribed to `topic`, by name."""

    @abc.abstractmethod
    async def publish(
        self,
        namespace: str,
        topic: str,
        events: Sequence[dict[str, Any]],
        max_attempts: Mapping[str, int],
        now: float,
    ) -> list[Published]:
        """Record each event (deduplicated by (namespace, source, id)) and enqueue one job per
        subscriber (body: the event as JSON, source `topic`, attempts from `max_attempts` or
        DEFAULT_MAX_ATTEMPTS), ALL in one transaction: a failure commits nothing. The
        subscribers are read inside it: a subscription changing meanwhile is wholly before
        or after. One answer per event, in order; a duplicate enqueues nothing."""

    @abc.abstractmethod
    async def prune(self, before: float, limit: int = 5000) -> int:
        """Forget up to `limit` ids of events published before `before` (a republish after
        that counts as new); how many."""
