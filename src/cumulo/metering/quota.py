"""Monthly quotas per namespace (GB-seconds, invocations) and the calendar they reset on."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from cumulo.errors import BadRequest, TooManyRequests
from cumulo.store.metering import Quota

__all__ = ["Quota", "exceeded", "iso", "month_bounds", "parse_quota"]

MAX_INVOCATIONS = 2**63 - 1  # what every store's integer column holds


def parse_quota(gb_seconds: Any, invocations: Any) -> Quota:
    """Validate a quota from the API (numbers >= 0, or null for no limit)."""
    if gb_seconds is not None and (
        isinstance(gb_seconds, bool)
        or not isinstance(gb_seconds, int | float)
        or not math.isfinite(gb_seconds)
        or gb_seconds < 0
    ):
        raise BadRequest("gb_seconds must be a number >= 0 or null", code="invalid_quota")
    if invocations is not None and (
        isinstance(invocations, bool)
        or not isinstance(invocations, int)
        or not 0 <= invocations <= MAX_INVOCATIONS
    ):
        raise BadRequest(
            f"invocations must be a whole number from 0 to {MAX_INVOCATIONS} or null",
            code="invalid_quota",
        )
    return Quota(
        gb_seconds=float(gb_seconds) if gb_seconds is not None else None,
        invocations=invocations,
    )


def month_bounds(now: float) -> tuple[float, float]:
    """[start, end) of the UTC calendar month holding `now`, as epoch seconds."""
    day = dt.datetime.fromtimestamp(now, dt.UTC)
    start = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start.timestamp(), end.timestamp()


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exceeded(namespace: str, what: str, limit: float, resets_at: float, now: float) -> Exception:
    """The 429 a namespace gets once it used up a monthly quota."""
    amount = f"{limit:g} GB-seconds" if what == "gb_seconds" else f"{int(limit)} invocations"
    return TooManyRequests(
        f"namespace {namespace!r} used its monthly quota of {amount}; "
        f"it resets at {iso(resets_at)}",
        code="quota_exceeded",
        retry_after=max(1.0, resets_at - now),
    )
