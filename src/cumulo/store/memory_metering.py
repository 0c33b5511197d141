"""`MeteringRepository` in memory: a fake for tests (no database, no thread), held to the
same conformance suite as the real backends."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from cumulo.store.metering import (
    MeteringRepository,
    MonthUsage,
    Quota,
    UsageDelta,
    UsageRow,
    check_int64,
)

_Key = tuple[str, str, int]  # namespace, function, hour


class MemoryMeteringRepository(MeteringRepository):
    """Rows in a dict. Each method runs without awaiting, so it is atomic on its event loop,
    as the contract asks; a failing call checks everything before it changes anything."""

    def __init__(self) -> None:
        self._rows: dict[_Key, UsageRow] = {}
        self._quotas: dict[str, Quota] = {}

    # ------------------------------------------------------------ usage
    async def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        for d in deltas:
            check_int64(d.hour, d.invocations, d.errors, d.bytes_in, d.bytes_out)
        for d in deltas:
            key = (d.namespace, d.function, d.hour)
            row = self._rows.get(key)
            if row is None:
                row = UsageRow(d.namespace, d.function, d.hour, 0, 0, 0.0, 0.0, 0, 0, 0.0, 0.0)
                peak = d.peak_rss_mb
            else:
                peak = max(row.peak_rss_mb, d.peak_rss_mb)
            self._rows[key] = dataclasses.replace(
                row,
                invocations=row.invocations + d.invocations,
                errors=row.errors + d.errors,
                gb_seconds=row.gb_seconds + d.gb_seconds,
                cpu_seconds=row.cpu_seconds + d.cpu_seconds,
                wall_seconds=row.wall_seconds + d.wall_seconds,
                bytes_in=row.bytes_in + d.bytes_in,
                bytes_out=row.bytes_out + d.bytes_out,
                peak_rss_mb=peak,
            )

    async def month_to_date(self, month_start: int) -> dict[str, MonthUsage]:
        sums: dict[str, tuple[int, float]] = {}
        for (ns, _, hour), row in self._rows.items():
            if hour >= month_start:
                inv, gbs = sums.get(ns, (0, 0.0))
                sums[ns] = (inv + row.invocations, gbs + row.gb_seconds)
        return {ns: MonthUsage(inv, gbs) for ns, (inv, gbs) in sums.items()}

    def _in_range(self, since: int, until: int, namespace: str | None) -> list[UsageRow]:
        return [
            row
            for (ns, _, hour), row in self._rows.items()
            if since <= hour < until and (namespace is None or ns == namespace)
        ]

    async def usage_by_function(
        self, since: int, until: int, namespace: str | None = None
    ) -> list[UsageRow]:
        summed: dict[tuple[str, str], UsageRow] = {}
        for row in sorted(self._in_range(since, until, namespace), key=_by_hour):
            key = (row.namespace, row.function)
            total = summed.get(key)
            if total is None:
                summed[key] = dataclasses.replace(row, hour=None)
                continue
            summed[key] = dataclasses.replace(
                total,
                invocations=total.invocations + row.invocations,
                errors=total.errors + row.errors,
                gb_seconds=total.gb_seconds + row.gb_seconds,
                cpu_seconds=total.cpu_seconds + row.cpu_seconds,
                wall_seconds=total.wall_seconds + row.wall_seconds,
                bytes_in=total.bytes_in + row.bytes_in,
                bytes_out=total.bytes_out + row.bytes_out,
                peak_rss_mb=max(total.peak_rss_mb, row.peak_rss_mb),
            )
        return [summed[key] for key in sorted(summed)]

    async def usage_by_hour(
        self, since: int, until: int, namespace: str | None = None
    ) -> list[UsageRow]:
        return sorted(self._in_range(since, until, namespace), key=_by_hour)

    # ------------------------------------------------------------ quotas
    async def set_quota(self, namespace: str, quota: Quota, now: float) -> None:
        check_int64(quota.invocations)
        if quota.empty:
            self._quotas.pop(namespace, None)
            return
        # As a REAL column would: a limit given as an int reads back as a float.
        gb_seconds = None if quota.gb_seconds is None else float(quota.gb_seconds)
        self._quotas[namespace] = Quota(gb_seconds, quota.invocations)

    async def all_quotas(self) -> dict[str, Quota]:
        return dict(self._quotas)


def _by_hour(row: UsageRow) -> tuple[int, str, str]:
    return (row.hour or 0, row.namespace, row.function)
