"""`PrivacyRepository` on PostgreSQL (migration 11). Values arrive sealed to their subject
(cumulo.privacy.keystore) and are stored as given. State updates lock the row
(`SELECT … FOR UPDATE`, or win the insert of a new one); overdue requests are marked by one
`UPDATE … RETURNING`, so each is reported by one gateway only."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cumulo.store.privacy import (
    ConsentRow,
    PrivacyRepository,
    RequestRecord,
    SealedInvocation,
    SealedLog,
    StateRow,
    StateUpdate,
)

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore

_REQUEST_COLUMNS = (
    "id, namespace, type, regime, pseudonym, status, received_at, due_at, updated_at, "
    "completed_at, overdue_alerted, counts, error, result IS NOT NULL"
)
_OVERDUE = "status NOT IN ('completed', 'failed') AND due_at < %s AND NOT overdue_alerted"


def _request(r: tuple[Any, ...]) -> RequestRecord:
    return RequestRecord(
        str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), float(r[6]),
        float(r[7]), float(r[8]), None if r[9] is None else float(r[9]), bool(r[10]),
        r[11], r[12], bool(r[13]),
    )  # fmt: skip


class PostgresPrivacyRepository(PrivacyRepository):
    """Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    # ------------------------------------------------------------ state
    async def state_get(
        self, namespace: str, function: str, pseudonym: str, key_hash: str
    ) -> tuple[bytes, int] | None:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT value, version FROM privacy_state WHERE namespace = %s AND function = %s"
                " AND pseudonym = %s AND key_hash = %s",
                (namespace, function, pseudonym, key_hash),
            )
            row = await cur.fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]))

    async def state_update(
        self,
        namespace: str,
        function: str,
        pseudonym: str,
        key_hash: str,
        update: StateUpdate,
        now: float,
    ) -> tuple[int, bool]:
        key = (namespace, function, pseudonym, key_hash)
        where = "namespace = %s AND function = %s AND pseudonym = %s AND key_hash = %s"
        async with self.store.connection() as conn:
            while True:  # at most twice: a new row's insert lost to another gateway's
                async with conn.transaction():
                    cur = await conn.execute(
                        f"SELECT value, version FROM privacy_state WHERE {where} FOR UPDATE",  # noqa: S608
                        key,
                    )
                    row = await cur.fetchone()
                    version = int(row[1]) if row else 0
                    value = update(bytes(row[0]) if row else None, version)
                    if value is None:
                        return version, False
                    if row is not None:
                        await conn.execute(
                            "UPDATE privacy_state SET value = %s, version = %s, updated_at = %s"  # noqa: S608
                            f" WHERE {where}",
                            (value, version + 1, now, *key),
                        )
                        return version + 1, True
                    cur = await conn.execute(
                        "INSERT INTO privacy_state VALUES (%s,%s,%s,%s,%s,1,%s)"
                        " ON CONFLICT DO NOTHING RETURNING version",
                        (*key, value, now),
                    )
                    if await cur.fetchone() is not None:
                        return 1, True

    async def state_delete(
        self, namespace: str, function: str, pseudonym: str, key_hash: str
    ) -> bool:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM privacy_state WHERE namespace = %s AND function = %s"
                " AND pseudonym = %s AND key_hash = %s",
                (namespace, function, pseudonym, key_hash),
            )
            return cur.rowcount > 0

    async def subject_state(self, namespace: str, pseudonym: str) -> list[StateRow]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT function, key_hash, value, version, updated_at FROM privacy_state"
                ' WHERE namespace = %s AND pseudonym = %s ORDER BY function COLLATE "C",'
                " updated_at",
                (namespace, pseudonym),
            )
            rows = await cur.fetchall()
        return [StateRow(str(r[0]), str(r[1]), bytes(r[2]), int(r[3]), float(r[4])) for r in rows]

    # ------------------------------------------------------------ logs and invocations
    async def append(self, logs: list[SealedLog], invocations: list[SealedInvocation]) -> None:
        if not logs and not invocations:
            return
        async with self.store.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if logs:
                await cur.executemany(
                    "INSERT INTO privacy_logs (namespace, function, pseudonym, invocation_id,"
                    " ts, blob) VALUES (%s,%s,%s,%s,%s,%s)",
                    [
                        (r.namespace, r.function, r.pseudonym, r.invocation_id, r.ts, r.blob)
                        for r in logs
                    ],
                )
            for i in invocations:  # one by one: a later duplicate id replaces an earlier
                await cur.execute(
                    "INSERT INTO privacy_invocations VALUES (%s,%s,%s,%s,%s,%s)"
                    " ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace,"
                    " function = excluded.function, pseudonym = excluded.pseudonym,"
                    " started_at = excluded.started_at, blob = excluded.blob",
                    (i.id, i.namespace, i.function, i.pseudonym, i.started_at, i.blob),
                )

    async def subject_logs(self, namespace: str, pseudonym: str) -> list[SealedLog]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT function, invocation_id, ts, blob FROM privacy_logs"
                " WHERE namespace = %s AND pseudonym = %s ORDER BY seq",
                (namespace, pseudonym),
            )
            rows = await cur.fetchall()
        return [
            SealedLog(namespace, str(r[0]), pseudonym, str(r[1]), float(r[2]), bytes(r[3]))
            for r in rows
        ]

    async def subject_invocations(self, namespace: str, pseudonym: str) -> list[SealedInvocation]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT id, function, started_at, blob FROM privacy_invocations"
                " WHERE namespace = %s AND pseudonym = %s ORDER BY started_at",
                (namespace, pseudonym),
            )
            rows = await cur.fetchall()
        return [
            SealedInvocation(str(r[0]), namespace, str(r[1]), pseudonym, float(r[2]), bytes(r[3]))
            for r in rows
        ]

    # ------------------------------------------------------------ consent
    async def consent_append(
        self, namespace: str, pseudonym: str, purpose: str, granted: bool, blob: bytes, now: float
    ) -> None:
        async with self.store.connection() as conn:
            await conn.execute(
                "INSERT INTO privacy_consent (namespace, pseudonym, purpose, granted, ts, blob)"
                " VALUES (%s,%s,%s,%s,%s,%s)",
                (namespace, pseudonym, purpose, granted, now, blob),
            )

    async def consent_current(self) -> dict[tuple[str, str, str], bool]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT ON (namespace, pseudonym, purpose) namespace, pseudonym,"
                " purpose, granted FROM privacy_consent"
                " ORDER BY namespace, pseudonym, purpose, seq DESC"
            )
            rows = await cur.fetchall()
        return {(str(r[0]), str(r[1]), str(r[2])): bool(r[3]) for r in rows}

    async def consent_of(self, namespace: str, pseudonym: str) -> list[ConsentRow]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT seq, purpose, blob FROM privacy_consent"
                " WHERE namespace = %s AND pseudonym = %s ORDER BY seq",
                (namespace, pseudonym),
            )
            rows = await cur.fetchall()
        return [ConsentRow(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    # ------------------------------------------------------------ erasure and retention
    async def erase_subject(self, namespace: str, pseudonym: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        async with self.store.connection() as conn, conn.transaction():
            for table in ("state", "logs", "invocations", "consent"):
                cur = await conn.execute(
                    f"DELETE FROM privacy_{table} WHERE namespace = %s AND pseudonym = %s",  # noqa: S608
                    (namespace, pseudonym),
                )
                counts[table] = cur.rowcount
            await conn.execute(
                "UPDATE privacy_requests SET result = NULL WHERE namespace = %s AND pseudonym = %s",
                (namespace, pseudonym),
            )
        return counts

    async def purge(self, namespace: str, before: float) -> dict[str, int]:
        statements = {
            "subject_invocations": "DELETE FROM privacy_invocations WHERE namespace = %s"
            " AND started_at < %s",
            "subject_logs": "DELETE FROM privacy_logs WHERE namespace = %s AND ts < %s",
            "subject_state": "DELETE FROM privacy_state WHERE namespace = %s AND updated_at < %s",
        }
        counts = {}
        async with self.store.connection() as conn, conn.transaction():
            for name, sql in statements.items():
                counts[name] = (await conn.execute(sql, (namespace, before))).rowcount
        return counts

    async def namespaces(self) -> list[str]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT namespace FROM privacy_retention UNION SELECT namespace FROM privacy_state"
            )
            rows = await cur.fetchall()
        return sorted(str(r[0]) for r in rows)

    async def retention(self) -> dict[str, float]:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT namespace, ttl_s FROM privacy_retention")
            rows = await cur.fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    async def set_retention(self, namespace: str, ttl_s: float | None) -> None:
        async with self.store.connection() as conn:
            if ttl_s is None:
                await conn.execute(
                    "DELETE FROM privacy_retention WHERE namespace = %s", (namespace,)
                )
            else:
                await conn.execute(
                    "INSERT INTO privacy_retention VALUES (%s, %s) ON CONFLICT (namespace)"
                    " DO UPDATE SET ttl_s = excluded.ttl_s",
                    (namespace, ttl_s),
                )

    # ------------------------------------------------------------ requests
    async def create_request(
        self,
        rid: str,
        namespace: str,
        kind: str,
        regime: str,
        pseudonym: str,
        status: str,
        now: float,
        due_at: float,
    ) -> RequestRecord:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO privacy_requests (id, namespace, type, regime, pseudonym, status,"  # noqa: S608
                " received_at, due_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                f" RETURNING {_REQUEST_COLUMNS}",
                (rid, namespace, kind, regime, pseudonym, status, now, due_at, now),
            )
            row = await cur.fetchone()
        assert row is not None
        return _request(row)

    async def get_request(self, rid: str) -> RequestRecord | None:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM privacy_requests WHERE id = %s",  # noqa: S608
                (rid,),
            )
            row = await cur.fetchone()
        return None if row is None else _request(row)

    async def request_result(self, rid: str) -> bytes | None:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT result FROM privacy_requests WHERE id = %s", (rid,))
            row = await cur.fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    async def list_requests(self, namespace: str | None, limit: int = 500) -> list[RequestRecord]:
        where, args = ("WHERE namespace = %s", (namespace,)) if namespace is not None else ("", ())
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM privacy_requests {where}"  # noqa: S608
                " ORDER BY received_at DESC LIMIT %s",
                (*args, limit),
            )
            rows = await cur.fetchall()
        return [_request(r) for r in rows]

    async def set_request_status(
        self,
        rid: str,
        status: str,
        now: float,
        *,
        finished: bool,
        counts: str | None = None,
        error: str | None = None,
        result: bytes | None = None,
    ) -> None:
        async with self.store.connection() as conn:
            await conn.execute(
                "UPDATE privacy_requests SET status = %s, updated_at = %s, completed_at = %s,"
                " counts = COALESCE(%s, counts), error = %s, result = COALESCE(%s, result)"
                " WHERE id = %s",
                (status, now, now if finished else None, counts, error, result, rid),
            )

    async def newly_overdue(self, now: float) -> list[RequestRecord]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                f"UPDATE privacy_requests SET overdue_alerted = true WHERE {_OVERDUE}"  # noqa: S608
                f" RETURNING {_REQUEST_COLUMNS}",
                (now,),
            )
            rows = await cur.fetchall()
        # As the other backends return them: as they were before being marked.
        return [replace(_request(r), overdue_alerted=False) for r in rows]
