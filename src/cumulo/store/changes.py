"""The change feed: how one gateway tells every other gateway on the same database that
control data moved, so each drops what it cached (routes, keys, secrets, quotas, consent
and retention).

The feed carries signals, never data: a `Change` names what moved, and a subscriber reloads
it from its repository. Changes are published after the write they describe has committed,
never per invocation (PostgreSQL's NOTIFY takes a global lock at commit).

Backends, one conformance suite (tests/store/test_change_feed.py):

- `cumulo.store.sqlite_changes.SQLiteChangeFeed`: a `control_changes` table in the
  platform's database, read by each subscriber every `poll_s` on its own connection (one
  indexed query; gateways on one machine share the file);
- `cumulo.store.postgres_changes.PostgresChangeFeed`: `NOTIFY` on commit, one `LISTEN`
  connection per subscriber, and a control epoch compared every `check_s` and on every
  reconnect, because notifications sent while a listener is disconnected are lost;
- `MemoryChangeFeed` (here): in-process queues, for unit tests.

Contract for every backend:

- every subscription open when `publish` returns receives the change (its own gateway's
  included) within about a second while the database is reachable, in publish order per
  publisher;
- when a subscription cannot be sure it saw everything (its connection dropped, it fell
  behind what the store keeps), it yields `RESYNC` once it can read again: the subscriber
  must then drop every cache, as after a restart;
- a subscriber subscribes *before* it loads its caches, so no change falls between the two.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

__all__ = ["RESYNC", "Change", "ChangeFeed", "MemoryChangeFeed", "Subscription"]

# What a change is about. Subscribers match on these; unknown topics are ignored.
TOPICS = frozenset({"function", "keys", "secrets", "quota", "privacy", "resync"})
MAX_FIELD = 200  # namespaces and function names are far shorter (sdk.spec validates them)


@dataclass(frozen=True, slots=True)
class Change:
    """`topic`: one of TOPICS. `namespace` and `name` narrow it ("": all of them), e.g.
    Change("function", "team", "hello") or Change("keys")."""

    topic: str
    namespace: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if self.topic not in TOPICS:
            raise ValueError(f"unknown change topic {self.topic!r}")
        if len(self.namespace) > MAX_FIELD or len(self.name) > MAX_FIELD:
            raise ValueError("change fields are limited to 200 characters")


RESYNC = Change("resync")


class Subscription(abc.ABC):
    """An open subscription: `await next()` or `async for change in subscription`."""

    @abc.abstractmethod
    async def next(self) -> Change:
        """The next change, waiting for one (RESYNC when some may have been missed)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop receiving; release the connection. Idempotent."""

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def __anext__(self) -> Change:
        return await self.next()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()


class ChangeFeed(abc.ABC):
    @abc.abstractmethod
    async def publish(self, change: Change) -> None:
        """Tell every open subscription, on every gateway. Raises StoreUnavailable when the
        database is out of reach (the change itself committed: the caller answers 503 and
        the other gateways catch up through their periodic epoch check or a RESYNC)."""

    @abc.abstractmethod
    async def subscribe(self) -> Subscription:
        """Open a subscription; changes published after this returns reach it."""


class MemoryChangeFeed(ChangeFeed):
    """One process's fake: every subscription of this instance gets every change."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Change]] = set()

    async def publish(self, change: Change) -> None:
        for queue in list(self._queues):
            queue.put_nowait(change)

    async def subscribe(self) -> Subscription:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._queues.add(queue)
        return _MemorySubscription(self._queues, queue)


class _MemorySubscription(Subscription):
    def __init__(self, queues: set[asyncio.Queue[Change]], queue: asyncio.Queue[Change]) -> None:
        self._queues = queues
        self._queue = queue

    async def next(self) -> Change:
        return await self._queue.get()

    async def aclose(self) -> None:
        self._queues.discard(self._queue)
