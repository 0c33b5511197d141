"""The metering room's storage seam: hourly usage per function, and monthly quotas.

One small async interface, `MeteringRepository`, whose contract is written here, and
several implementations held to one conformance suite
(tests/store/test_metering_conformance.py):

- `cumulo.store.sqlite_metering.SQLiteMeteringRepository`: the embedded default, in the
  platform's SQLite database (tables `usage_hourly` and `quotas`; its behaviour is the
  reference);
- `cumulo.store.postgres_metering.PostgresMeteringRepository`: PostgreSQL, shared by
  several gateways (`PostgresStore.metering`);
- `cumulo.store.memory_metering.MemoryMeteringRepository`: an in-memory fake for tests.

The rows are what the flusher of `cumulo.metering.service` writes: one per (namespace,
function, hour), an hour being the epoch second it starts at (a multiple of 3600 as the
meter makes them; a repository stores whatever integer it is given). Records are the plain
frozen dataclasses below; the metering room re-exports `Quota`.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`
(503 `store_unavailable`) from the driver's error; nothing driver-specific escapes. Integer
counts and limits are stored as signed 64-bit integers: a call given one out of that range
raises `ValueError` and writes nothing.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["INT64_MAX", "MeteringRepository", "MonthUsage", "Quota", "UsageDelta", "UsageRow"]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """Usage of one (namespace, function, hour) to add to what is stored."""

    namespace: str
    function: str
    hour: int
    invocations: int
    errors: int
    gb_seconds: float
    cpu_seconds: float
    wall_seconds: float
    bytes_in: int
    bytes_out: int
    peak_rss_mb: float


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Stored usage of one function: of one hour, or summed over a range (`hour` None)."""

    namespace: str
    function: str
    hour: int | None  # None: summed over the whole range
    invocations: int
    errors: int
    gb_seconds: float
    cpu_seconds: float
    bytes_in: int
    bytes_out: int
    wall_seconds: float
    peak_rss_mb: float  # over a range: the highest hour's


@dataclass(frozen=True, slots=True)
class MonthUsage:
    """What a namespace used from the month's start on: what its quotas are checked on."""

    invocations: int
    gb_seconds: float


@dataclass(frozen=True, slots=True)
class Quota:
    """A namespace's monthly limits; None: no limit on that measure."""

    gb_seconds: float | None = None
    invocations: int | None = None

    @property
    def empty(self) -> bool:
        return self.gb_seconds is None and self.invocations is None

    def public(self) -> dict[str, Any]:
        return {"gb_seconds": self.gb_seconds, "invocations": self.invocations}


def int64_error(cause: object) -> ValueError:
    """The contract's `ValueError` for a count or limit out of range, from any backend."""
    return ValueError(f"a count or limit does not fit a signed 64-bit integer ({cause})")


def check_int64(*values: int | None) -> None:
    """Raise `int64_error` for backends whose storage would take any integer."""
    for value in values:
        if value is not None and not INT64_MIN <= value <= INT64_MAX:
            raise int64_error(value)


class MeteringRepository(abc.ABC):
    """Where metered usage and quotas live.

    Every method is one atomic step: concurrent calls, from one process or from several
    gateways on one database, each see the state before or after another, never half of
    it. Returned records and dicts are the caller's own.
    """

    # ------------------------------------------------------------ usage
    @abc.abstractmethod
    async def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        """Add each delta to its (namespace, function, hour) row, creating the row when
        there is none: counts and seconds are added, `peak_rss_mb` becomes the larger of
        the two. Several deltas of one row in one call all add up.

        The whole call is one transaction: when it raises, nothing of it was written, so
        the caller may retry the same deltas without counting any of them twice. Calls
        racing into the same rows (from several gateways too) all add up; none is lost.
        An empty sequence writes nothing."""

    @abc.abstractmethod
    async def month_to_date(self, month_start: int) -> dict[str, MonthUsage]:
        """Invocations and GB-seconds per namespace, summed over every row whose hour is
        `month_start` or later (no upper bound). Namespaces with no such row are absent."""

    @abc.abstractmethod
    async def usage_by_function(
        self, since: int, until: int, namespace: str | None = None
    ) -> list[UsageRow]:
        """One row per (namespace, function) with rows whose hour h is since <= h < until,
        summed (`hour` None; `peak_rss_mb` the largest), ordered by namespace then
        function (code points, not a locale's order). `namespace` None: every namespace.
        `since` and `until` are signed 64-bit integers, as hours are."""

    @abc.abstractmethod
    async def usage_by_hour(
        self, since: int, until: int, namespace: str | None = None
    ) -> list[UsageRow]:
        """The stored rows whose hour h is since <= h < until, as they are, ordered by hour,
        then namespace, then function (code points). `namespace` None: every namespace."""

    # ------------------------------------------------------------ quotas
    @abc.abstractmethod
    async def set_quota(self, namespace: str, quota: Quota, now: float) -> None:
        """Replace the namespace's quota (`now`: when, kept with it). An empty quota (no
        limit at all) removes it; removing one that is not there is not an error."""

    @abc.abstractmethod
    async def all_quotas(self) -> dict[str, Quota]:
        """Every namespace's quota, by namespace (none empty)."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds (a pool); a no-op when it owns nothing."""
        return None

    async def __aenter__(self) -> MeteringRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
