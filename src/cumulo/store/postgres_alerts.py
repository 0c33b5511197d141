"""`AlertRepository` on PostgreSQL: the `ai_alerts` table (its schema: migration 4 in
cumulo.store.postgres), shared by every gateway on the database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from cumulo.errors import Conflict
from cumulo.store.alerts import MAX_ALERTS, Alert, AlertRepository

if TYPE_CHECKING:
    from cumulo.store.postgres import PostgresStore

_COLUMNS = "id, ts, namespace, kind, entity, reasons, score, window_start, window_s, observed"
# seq (an identity) breaks ties in ts: it grows with each insert.
_NEWEST_FIRST = "ORDER BY ts DESC, seq DESC"
_SELECT = (
    "SELECT id, ts, namespace, kind, entity, reasons, score, window_start, window_s, "
    "observed::text FROM ai_alerts"
)


def _alert(r: tuple[Any, ...]) -> Alert:
    return Alert(
        id=r[0],
        ts=r[1],
        namespace=r[2],
        kind=r[3],
        entity=r[4],
        reasons=list(r[5]),
        score=r[6],
        window_start=r[7],
        window_s=r[8],
        observed=dict(orjson.loads(r[9])),
    )


class PostgresAlertRepository(AlertRepository):
    """Alerts on PostgreSQL. Closing it leaves the store (the pool) open."""

    def __init__(self, store: PostgresStore, *, max_alerts: int = MAX_ALERTS) -> None:
        self.store = store
        self.max_alerts = max_alerts

    async def add(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        rows = [
            (
                a.id,
                a.ts,
                a.namespace,
                a.kind,
                a.entity,
                list(a.reasons),
                a.score,
                a.window_start,
                a.window_s,
                orjson.dumps(a.observed).decode(),
            )
            for a in alerts
        ]
        try:
            async with self.store.connection() as conn, conn.transaction():
                # Adds from several gateways take turns (readers are not blocked): each
                # prune then sees every alert committed before it, so the table never
                # stays above max_alerts and the oldest are the ones dropped.
                await conn.execute("LOCK TABLE ai_alerts IN SHARE ROW EXCLUSIVE MODE")
                async with conn.cursor() as cur:
                    await cur.executemany(
                        f"INSERT INTO ai_alerts ({_COLUMNS}) "  # noqa: S608
                        "VALUES (%s, %s, %s, %s, %s, %s::text[], %s, %s, %s, %s::json)",
                        rows,
                    )
                await conn.execute(
                    f"DELETE FROM ai_alerts WHERE seq IN (SELECT seq FROM ai_alerts "  # noqa: S608
                    f"{_NEWEST_FIRST} OFFSET %s)",
                    (self.max_alerts,),
                )
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict("an alert with that id exists already", code="alert_exists") from exc

    async def list(
        self, namespace: str | None, since: float | None = None, limit: int = 100
    ) -> list[Alert]:
        where: list[str] = []
        args: list[str | float | int] = []
        if namespace is not None:
            where.append("namespace = %s")
            args.append(namespace)
        if since is not None:
            where.append("ts >= %s")
            args.append(since)
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" {_NEWEST_FIRST} LIMIT %s"
        args.append(limit)
        async with self.store.connection() as conn:
            cur = await conn.execute(sql, args)
            return [_alert(r) for r in await cur.fetchall()]
