"""`LogRepository` on PostgreSQL (the `logs` and `log_heads` tables of migration 8), sealed
as SQLite seals it: a line's [message, fields] JSON sealed into `message` (purpose "log",
item (function, version, invocation id)) under the namespace data key (store/postgres_keys),
so a sealed SQLite row's `message` opens here unchanged. Stored size: `octet_length(message)`,
what SQLite's `length(message) + length(fields)` is for a sealed row.

Several gateways append to one function: `log_heads` holds one row per function, its `seq`
the last seq handed out. An append takes that row's lock first (the upsert that advances
it) and holds it to its commit, so appends to one function run one after the other: seqs
are handed out in commit order (a follower polling with `after_seq` misses nothing), and
each append's trimming sees every line committed before it (the caps hold). Appends lock
their functions in one sorted order, so two of them never deadlock; appends to different
functions do not wait for each other. Lines are sealed before the transaction (the data
key is prepared on its own connection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from psycopg import AsyncConnection

from cumulo.store.base import LogRecord
from cumulo.store.logs import LINE_OVERHEAD, LogRepository
from cumulo.store.postgres_keys import DataKeyCipher, PostgresDataKeys

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore

_WHERE = "WHERE namespace = %(ns)s AND function = %(fn)s"
# Advance the function's head by n and return the last seq of the n claimed (locks the row).
_CLAIM = (
    "INSERT INTO log_heads (namespace, function, seq) VALUES (%s, %s, %s) "
    "ON CONFLICT (namespace, function) DO UPDATE SET seq = log_heads.seq + excluded.seq "
    "RETURNING seq"
)
_INSERT = (
    "INSERT INTO logs (namespace, function, seq, version, invocation_id, ts, level, message) "
    "SELECT %s, %s, * FROM unnest(%s::bigint[], %s::integer[], %s::text[], "
    "%s::double precision[], %s::text[], %s::bytea[])"
)
_TRIM_ROWS = (
    f"DELETE FROM logs {_WHERE} AND seq <= ("  # noqa: S608
    f"SELECT seq FROM logs {_WHERE} ORDER BY seq DESC LIMIT 1 OFFSET %(keep)s)"
)
# The newest line whose running total (newest first) passes the budget, and all older ones.
_TRIM_BYTES = (
    f"DELETE FROM logs {_WHERE} AND seq <= ("  # noqa: S608
    f"SELECT max(seq) FROM (SELECT seq, sum(octet_length(message) + {LINE_OVERHEAD}) "
    f"OVER (ORDER BY seq DESC) AS total FROM logs {_WHERE}) AS running "
    "WHERE total > %(budget)s)"
)
_QUERY = (
    f"SELECT seq, version, invocation_id, ts, level, message FROM logs {_WHERE} "  # noqa: S608
    "AND seq > %(after)s ORDER BY seq DESC LIMIT %(limit)s"
)
_STATS = f"SELECT count(*), coalesce(sum(octet_length(message)), 0) FROM logs {_WHERE}"  # noqa: S608


def _item(function: str, version: int, invocation_id: str) -> tuple[str, ...]:
    """What a sealed line is bound to (SQLiteStore._seal_log binds the same)."""
    return (function, str(version), invocation_id)


class PostgresLogRepository(LogRepository):
    """Function logs on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore, encryptor: DataKeyCipher) -> None:
        self.store = store
        self.keys = PostgresDataKeys(store, encryptor)
        self._enc = encryptor

    def _seal(self, r: LogRecord) -> bytes:
        data = orjson.dumps([r.message, r.fields])
        item = _item(r.function, r.version, r.invocation_id)
        return self._enc.encrypt(self.keys.table, r.namespace, "log", item, data)

    async def append(
        self,
        records: list[LogRecord],
        *,
        retain_rows: int | None = None,
        retain_bytes: int | None = None,
    ) -> None:
        if not records:
            return
        groups: dict[tuple[str, str], list[LogRecord]] = {}
        for r in records:
            groups.setdefault((r.namespace, r.function), []).append(r)
        for namespace in sorted({ns for ns, _ in groups}):
            await self.keys.prepare(namespace)
        sealed = {key: [self._seal(r) for r in lines] for key, lines in groups.items()}
        async with self.store.connection() as conn, conn.transaction():
            for key in sorted(groups):  # one lock order for every gateway: no deadlock
                namespace, function = key
                lines = groups[key]
                cur = await conn.execute(_CLAIM, (namespace, function, len(lines)))
                row = await cur.fetchone()
                assert row is not None  # RETURNING of an upsert always yields its row
                first = int(row[0]) - len(lines) + 1
                await conn.execute(
                    _INSERT,
                    (
                        namespace,
                        function,
                        list(range(first, first + len(lines))),
                        [r.version for r in lines],
                        [r.invocation_id for r in lines],
                        [r.ts for r in lines],
                        [r.level for r in lines],
                        sealed[key],
                    ),
                )
                await self._trim(conn, namespace, function, retain_rows, retain_bytes)

    @staticmethod
    async def _trim(
        conn: AsyncConnection[tuple[Any, ...]],
        namespace: str,
        function: str,
        retain_rows: int | None,
        retain_bytes: int | None,
    ) -> None:
        ids = {"ns": namespace, "fn": function}
        if retain_rows is not None:
            await conn.execute(_TRIM_ROWS, {**ids, "keep": max(retain_rows, 0)})
        if retain_bytes is not None:
            await conn.execute(_TRIM_BYTES, {**ids, "budget": retain_bytes})

    async def query(
        self, namespace: str, function: str, *, after_seq: int = 0, limit: int = 100
    ) -> list[tuple[int, LogRecord]]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                _QUERY, {"ns": namespace, "fn": function, "after": after_seq, "limit": limit}
            )
            rows = await cur.fetchall()
        if not rows:
            return []
        # After the connection went back: prepare may take one of its own.
        await self.keys.prepare(namespace)
        await self.keys.load_for(namespace, (bytes(r[5]) for r in rows))
        out = []
        for seq, version, iid, ts, level, blob in reversed(rows):
            item = _item(function, int(version), str(iid))
            opened = self._enc.decrypt(self.keys.table, namespace, "log", item, bytes(blob))
            text, fields = orjson.loads(opened)
            record = LogRecord(
                namespace,
                function,
                int(version),
                str(iid),
                float(ts),
                str(level),
                str(text),
                dict(fields),
            )
            out.append((int(seq), record))
        return out

    async def stats(self, namespace: str, function: str) -> tuple[int, int]:
        async with self.store.connection() as conn:
            cur = await conn.execute(_STATS, {"ns": namespace, "fn": function})
            row = await cur.fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    async def purge(self, namespace: str, before: float) -> int:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM logs WHERE namespace = %s AND ts < %s", (namespace, before)
            )
            return cur.rowcount
