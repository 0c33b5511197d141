"""What every finished invocation and every auth denial tells the rest of the platform.

`Platform.invoke` builds one `Outcome` per invocation (HTTP, async, scheduled, ctx.call)
and hands it to each registered observer: metering, traffic forecasting and anomaly
detection read the same record instead of each hooking the hot path. Observers run on the
event loop inside the request: they must be cheap and never raise (buffer, then work
elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Outcome:
    id: str
    namespace: str
    function: str
    version: int
    status: int
    code: str  # "ok" or the error code the client saw
    cold: bool
    started_at: float  # wall clock, seconds since the epoch
    duration_s: float  # wall time in the gateway, queueing included
    key_id: str | None = None  # the API key (or JWT subject key) that invoked; None: internal
    subject: str | None = None  # the data subject the invocation acted for (privacy)
    # Metering: what the invocation used (0 where the runtime cannot measure it).
    cpu_s: float = 0.0  # the handler's CPU time, as its worker measured it
    peak_rss_mb: float = 0.0  # the worker's peak resident memory so far
    memory_mb: int = 0  # reserved: the function's configured memory_mb
    bytes_in: int = 0  # request body
    bytes_out: int = 0  # response body (0 for a streamed response)


@dataclass(slots=True)
class Denial:
    """A 401 or 403 at the edge: who tried (when known), from where, on which path."""

    key_id: str | None
    source: str | None
    path: str
    status: int
    at: float


OutcomeObserver = Callable[[Outcome], None]
DenialObserver = Callable[[Denial], None]
