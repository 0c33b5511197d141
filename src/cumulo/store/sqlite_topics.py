"""`TopicRepository` in the platform's SQLite file, on the job queue's connection and thread
(`SQLiteJobQueueRepository.parts`): a publish's dedupe row and its jobs share one
`BEGIN IMMEDIATE` transaction. The tables and statements are the events service's, moved."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from cumulo.store.jobs import SOURCE_TOPIC, NewJob, new_job_id
from cumulo.store.sqlite_jobs import SQLiteJobQueue, SQLiteJobQueueRepository
from cumulo.store.topics import DEFAULT_MAX_ATTEMPTS, Published, Subscription, TopicRepository

T = TypeVar("T")

SUBSCRIPTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_subscriptions (
    namespace TEXT NOT NULL,
    topic TEXT NOT NULL,
    function TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (namespace, topic, function)
);
CREATE INDEX IF NOT EXISTS event_subscriptions_function
    ON event_subscriptions (namespace, function);
CREATE TABLE IF NOT EXISTS event_published (
    namespace TEXT NOT NULL,
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    published_at REAL NOT NULL,
    PRIMARY KEY (namespace, source, event_id)
);
CREATE INDEX IF NOT EXISTS event_published_at ON event_published (published_at);
"""


class SQLiteTopicStore:
    """Blocking, on the queue's connection and thread (see `SQLiteJobQueue.transaction`)."""

    def __init__(self, queue: SQLiteJobQueue) -> None:
        self.queue = queue
        self._db = queue.connection
        with queue.transaction():
            for statement in SUBSCRIPTIONS_SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)

    def set_subscriptions(
        self, namespace: str, function: str, topics: Iterable[str], now: float
    ) -> None:
        wanted = set(topics)
        with self.queue.transaction():
            for (topic,) in self._db.execute(
                "SELECT topic FROM event_subscriptions WHERE namespace = ? AND function = ?",
                (namespace, function),
            ).fetchall():
                if topic not in wanted:
                    self._db.execute(
                        "DELETE FROM event_subscriptions WHERE namespace = ? AND topic = ?"
                        " AND function = ?",
                        (namespace, topic, function),
                    )
            for topic in wanted:
                self._db.execute(
                    "INSERT INTO event_subscriptions (namespace, topic, function, since)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (namespace, topic, function, now),
                )

    def subscriptions(self, namespace: str | None = None) -> list[Subscription]:
        rows = self._db.execute(
            "SELECT namespace, topic, function FROM event_subscriptions"
            " WHERE ? IS NULL OR namespace = ? ORDER BY namespace, topic, function",
            (namespace, namespace),
        ).fetchall()
        return [Subscription(*row) for row in rows]

    def subscribers(self, namespace: str, topic: str) -> list[str]:
        rows = self._db.execute(
            "SELECT function FROM event_subscriptions WHERE namespace = ? AND topic = ?"
            " ORDER BY function",
            (namespace, topic),
        ).fetchall()
        return [row[0] for row in rows]

    def publish(
        self,
        namespace: str,
        topic: str,
        events: Sequence[dict[str, Any]],
        max_attempts: Mapping[str, int],
        now: float,
    ) -> list[Published]:
        results = []
        self.queue.prepare([namespace])  # its data key, before the transaction
        with self.queue.transaction():
            subscribers = self.subscribers(namespace, topic)
            for event in events:
                # The primary key (namespace, source, event_id) is the dedupe: a republished
                # event (a client retrying after a lost answer) inserts nothing here.
                inserted = self._db.execute(
                    "INSERT INTO event_published (namespace, source, event_id, topic,"
                    " deliveries, published_at) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (namespace, event["source"], event["id"], topic, len(subscribers), now),
                ).rowcount
                if inserted != 1:
                    results.append(Published(event["id"], 0, duplicate=True))
                    continue
                body = orjson.dumps(event)
                for function in subscribers:
                    self.queue.insert(
                        NewJob(
                            id=new_job_id(now),
                            namespace=namespace,
                            function=function,
                            body=body,
                            max_attempts=max_attempts.get(function, DEFAULT_MAX_ATTEMPTS),
                            source=SOURCE_TOPIC,
                        ),
                        now,
                    )
                results.append(Published(event["id"], len(subscribers)))
        return results

    def prune(self, before: float, limit: int = 5000) -> int:
        with self.queue.transaction():
            return self._db.execute(
                "DELETE FROM event_published WHERE rowid IN (SELECT rowid FROM event_published"
                " WHERE published_at < ? LIMIT ?)",
                (before, limit),
            ).rowcount


class SQLiteTopicRepository(TopicRepository):
    """Topics beside `jobs`' queue; its tables are created on first use."""

    def __init__(self, jobs: SQLiteJobQueueRepository) -> None:
        self.jobs = jobs
        self._store: SQLiteTopicStore | None = None
        self._queue: SQLiteJobQueue | None = None

    async def _run(self, step: Callable[[SQLiteTopicStore], T]) -> T:
        thread, queue = await self.jobs.parts()
        if self._store is None or self._queue is not queue:  # the queue was reopened
            self._store = await thread.call(SQLiteTopicStore, queue)
            self._queue = queue
        return await thread.call(step, self._store)

    async def set_subscriptions(
        self, namespace: str, function: str, topics: Iterable[str], now: float
    ) -> None:
        wanted = list(topics)
        await self._run(lambda s: s.set_subscriptions(namespace, function, wanted, now))

    async def subscriptions(self, namespace: str | None = None) -> list[Subscription]:
        return await self._run(lambda s: s.subscriptions(namespace))

    async def subscribers(self, namespace: str, topic: str) -> list[str]:
        return await self._run(lambda s: s.subscribers(namespace, topic))

    async def publish(
        self,
        namespace: str,
        topic: str,
        events: Sequence[dict[str, Any]],
        max_attempts: Mapping[str, int],
        now: float,
    ) -> list[Published]:
        return await self._run(lambda s: s.publish(namespace, topic, events, max_attempts, now))

    async def prune(self, before: float, limit: int = 5000) -> int:
        return await self._run(lambda s: s.prune(before, limit))
