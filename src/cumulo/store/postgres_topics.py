"""`TopicRepository` on PostgreSQL (tables of migration 6). A publish takes the dedupe row
with `ON CONFLICT DO NOTHING` under its primary key, so one event published through two
gateways at once is delivered once: the second insert waits for the first's commit, then
inserts nothing. Subscribers are read inside the same transaction. The event's jobs go
through the queue's `insert`, so their bodies are sealed as the queue seals them; the
dedupe rows hold ids only."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from cumulo.store.jobs import SOURCE_TOPIC, NewJob, new_job_id
from cumulo.store.postgres_jobs import PostgresJobQueueRepository
from cumulo.store.topics import DEFAULT_MAX_ATTEMPTS, Published, Subscription, TopicRepository

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore


class PostgresTopicRepository(TopicRepository):
    """Topics beside `jobs`' queue, on its store and its clock."""

    def __init__(self, jobs: PostgresJobQueueRepository) -> None:
        self.jobs = jobs
        self.store: PostgresStore = jobs.store

    async def set_subscriptions(
        self, namespace: str, function: str, topics: Iterable[str], now: float
    ) -> None:
        wanted = sorted(set(topics))
        async with self.store.connection() as conn, conn.transaction():
            now = await self.jobs.db_now(conn, now)
            await conn.execute(
                "DELETE FROM event_subscriptions WHERE namespace = %s AND function = %s"
                " AND NOT (topic = ANY(%s))",
                (namespace, function, wanted),
            )
            for topic in wanted:
                await conn.execute(
                    "INSERT INTO event_subscriptions (namespace, topic, function, since)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (namespace, topic, function, now),
                )

    async def subscriptions(self, namespace: str | None = None) -> list[Subscription]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT namespace, topic, function FROM event_subscriptions"
                " WHERE %s::text IS NULL OR namespace = %s"
                ' ORDER BY namespace COLLATE "C", topic COLLATE "C", function COLLATE "C"',
                (namespace, namespace),
            )
            return [Subscription(*row) for row in await cur.fetchall()]

    async def subscribers(self, namespace: str, topic: str) -> list[str]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT function FROM event_subscriptions WHERE namespace = %s AND topic = %s"
                ' ORDER BY function COLLATE "C"',
                (namespace, topic),
            )
            return [str(r[0]) for r in await cur.fetchall()]

    async def publish(
        self,
        namespace: str,
        topic: str,
        events: Sequence[dict[str, Any]],
        max_attempts: Mapping[str, int],
        now: float,
    ) -> list[Published]:
        results: list[Published | None] = [None] * len(events)
        # Dedupe rows are taken in one global order, (source, id), so two publishes racing
        # over the same events wait for each other instead of deadlocking; the sort is
        # stable, so of two equal events in one batch the first is the one delivered.
        order = sorted(range(len(events)), key=lambda i: (events[i]["source"], events[i]["id"]))
        await self.jobs.prepare([namespace])  # the jobs' bodies are sealed in the transaction
        async with self.store.connection() as conn, conn.transaction():
            now = await self.jobs.db_now(conn, now)
            cur = await conn.execute(
                "SELECT function FROM event_subscriptions WHERE namespace = %s AND topic = %s"
                ' ORDER BY function COLLATE "C"',
                (namespace, topic),
            )
            subscribers = [str(r[0]) for r in await cur.fetchall()]
            for i in order:
                event = events[i]
                cur = await conn.execute(
                    "INSERT INTO event_published (namespace, source, event_id, topic,"
                    " deliveries, published_at) VALUES (%s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (namespace, event["source"], event["id"], topic, len(subscribers), now),
                )
                if cur.rowcount != 1:
                    results[i] = Published(event["id"], 0, duplicate=True)
                    continue
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
                if jobs:
                    await self.jobs.insert(conn, jobs, now)
                results[i] = Published(event["id"], len(subscribers))
        return [r for r in results if r is not None]

    async def prune(self, before: float, limit: int = 5000) -> int:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM event_published WHERE ctid = ANY(ARRAY(SELECT ctid FROM"
                " event_published WHERE published_at < %s LIMIT %s))",
                (before, limit),
            )
            return cur.rowcount
