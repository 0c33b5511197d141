"""Where one invocation's time went inside a pool, for tracing (observability/tracing.py).

The pool fills one in only when the platform passes it (tracing is on); with tracing off the
hot path creates none. Times are epoch nanoseconds (`time.time_ns`), the clock that spans
use and that a worker on the same host can report its own start and end in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Timings:
    wait_start: int = 0  # when the pool was asked for a worker
    wait_end: int = 0  # when the frame could start (a worker was free, or it became the head)
    waited: bool = False  # False: a free slot was there at once, no wait worth a span
    # The worker start that served this invocation (a cold start): start, end, and whether
    # its zygote had to be started as well.
    spawn: tuple[int, int, bool] | None = None
    sent: int = 0  # the frame went to the worker
    replied: int = 0  # its reply (or streamed header) arrived
    # The worker's own start and end of the handler, when it reported them.
    handler: tuple[int, int] | None = None
