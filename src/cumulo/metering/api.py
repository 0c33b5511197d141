"""`GET /v1/usage` (usage and cost) and `PUT/GET /v1/namespaces/{ns}/quota`."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from cumulo.errors import BadRequest, Forbidden, Unavailable
from cumulo.metering.meter import HOUR
from cumulo.metering.quota import parse_quota
from cumulo.metering.service import Metering
from cumulo.sdk.spec import validate_name
from cumulo.security.auth import ALL_NAMESPACES, principal_of
from cumulo.store.metering import INT64_MAX, UsageRow

MeteringOf = Callable[[], Metering | None]

DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_SINCE = "7d"
ROUND = 9  # decimals of GB-seconds and CPU-seconds in answers
COST_ROUND = 12  # decimals of money: a few invocations cost micro-dollars


class QuotaBody(BaseModel):
    gb_seconds: float | None = Field(None, description="GB-seconds per month; null: no limit")
    invocations: int | None = Field(None, description="invocations per month; null: no limit")


def parse_time(text: str, now: float, what: str) -> float:
    """`7d` / `12h` / `30m` / `90s` / `2w` ago, epoch seconds, or an ISO-8601 date/time
    (UTC unless it names a zone)."""
    text = text.strip()
    match = DURATION_RE.match(text)
    if match:
        return now - float(match.group(1)) * UNITS[match.group(2)]
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value) and value >= 0:
            return value
        raise BadRequest(f"{what} must not be negative", code="invalid_query")
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"invalid {what} {text!r}: use a duration like 7d, 12h or 30m, epoch seconds, "
            "or an ISO-8601 date",
            code="invalid_query",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _usage_namespace(request: Request, namespace: str | None) -> str | None:
    """The namespace to report (None: all); `read` in it, or a platform admin key for all."""
    principal = principal_of(request.scope)
    if namespace is None:
        namespace = principal.namespace
    if namespace == ALL_NAMESPACES:
        principal.require("admin")
        if principal.namespace != ALL_NAMESPACES:
            raise Forbidden(
                "only a platform admin key may read every namespace's usage",
                code="missing_scope",
            )
        return None
    validate_name(namespace, "namespace")
    principal.require("read", namespace)
    return namespace


def _numbers(row: UsageRow, metering: Metering) -> dict[str, Any]:
    cost = metering.prices.cost(row.invocations, row.gb_seconds, row.cpu_seconds)
    return {
        "invocations": row.invocations,
        "errors": row.errors,
        "gb_seconds": round(row.gb_seconds, ROUND),
        "cpu_seconds": round(row.cpu_seconds, ROUND),
        "bytes_in": row.bytes_in,
        "bytes_out": row.bytes_out,
        "cost": round(cost, COST_ROUND),
    }


def build_router(metering_of: MeteringOf) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["metering"])

    def metering() -> Metering:
        found = metering_of()
        if found is None:
            raise Unavailable(
                "metering is off on this platform (started with --no-metering)",
                code="metering_disabled",
            )
        return found

    @router.get("/usage")
    async def usage(
        request: Request,
        namespace: str | None = None,
        since: str = DEFAULT_SINCE,
        until: str | None = None,
        by: str = "function",
    ) -> dict[str, Any]:
        """Usage and cost per function (or per function and hour) over [since, until)."""
        scope = _usage_namespace(request, namespace)
        m = metering()
        if by not in ("function", "hour"):
            raise BadRequest(f"by must be function or hour, not {by!r}", code="invalid_query")
        now = m.clock()
        start = parse_time(since, now, "since")
        end = parse_time(until, now, "until") if until is not None else now
        if start >= end:
            raise BadRequest("since must be before until", code="invalid_query")
        first_hour = int(start // HOUR) * HOUR  # hours are the unit: since rounds down
        await m.flush()  # what was invoked before this request is in the answer
        repository = m.repository
        query = repository.usage_by_hour if by == "hour" else repository.usage_by_function
        # Hours are whole seconds: h < end exactly when h < ceil(end); an `until` past what
        # a 64-bit hour can hold means no upper bound.
        rows = await query(first_hour, min(math.ceil(end), INT64_MAX), scope)
        total = UsageRow(
            "*",
            "*",
            None,
            sum(r.invocations for r in rows),
            sum(r.errors for r in rows),
            sum(r.gb_seconds for r in rows),
            sum(r.cpu_seconds for r in rows),
            sum(r.bytes_in for r in rows),
            sum(r.bytes_out for r in rows),
            sum(r.wall_seconds for r in rows),
            max((r.peak_rss_mb for r in rows), default=0.0),
        )
        out_rows = []
        for row in rows:
            item: dict[str, Any] = {"namespace": row.namespace, "function": row.function}
            if by == "hour":
                item["hour"] = row.hour
            item.update(_numbers(row, m))
            out_rows.append(item)
        return {
            "namespace": scope if scope is not None else ALL_NAMESPACES,
            "since": first_hour,
            "until": math.floor(end),
            "by": by,
            "currency": m.prices.currency,
            "prices": m.prices.public(),
            "rows": out_rows,
            "total": _numbers(total, m),
        }

    @router.get("/namespaces/{namespace}/quota")
    async def get_quota(namespace: str, request: Request) -> dict[str, Any]:
        """The namespace's monthly quota and what it used this month."""
        validate_name(namespace, "namespace")
        principal_of(request.scope).require("admin", namespace)
        return metering().quota_view(namespace)

    @router.put("/namespaces/{namespace}/quota")
    async def put_quota(namespace: str, body: QuotaBody, request: Request) -> dict[str, Any]:
        """Set (or, with both null, remove) a monthly quota: platform admin keys only, so a
        tenant cannot lift its own limit."""
        validate_name(namespace, "namespace")
        principal = principal_of(request.scope)
        principal.require("admin", namespace)
        if principal.namespace != ALL_NAMESPACES:
            raise Forbidden("only a platform admin key may set quotas", code="missing_scope")
        m = metering()
        await m.set_quota(namespace, parse_quota(body.gb_seconds, body.invocations))
        return m.quota_view(namespace)

    return router
