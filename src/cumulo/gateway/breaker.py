"""Circuit breakers for service calls, one per (namespace, target function).

closed ──N consecutive failures──▶ open ──cool-down──▶ half-open ──probe ok──▶ closed
                                    ▲                        │
                                    └────── probe failed ────┘

Consecutive failures rather than a failure ratio over a window: a function's traffic varies
from a call a day to thousands a second, and a count needs no window length tuned to it. Any
success resets the count. In half-open exactly one call (the probe) goes through; the others
fail fast until its outcome is known.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from cumulo.errors import ConfigError

Clock = Callable[[], float]

ENV_FAILURES = "CUMULO_BREAKER_FAILURES"
ENV_COOL_DOWN = "CUMULO_BREAKER_COOLDOWN_S"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Plain data: how many consecutive failures open a circuit, and for how long."""

    failures: int = 5
    cool_down_s: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.failures, int) or self.failures < 1:
            raise ConfigError("breaker failures must be an integer of at least 1")
        if not self.cool_down_s >= 0:  # also rejects NaN
            raise ConfigError("breaker cool-down must be a number of seconds, at least 0")

    @classmethod
    def from_env(cls) -> BreakerConfig:
        """The defaults, overridden by CUMULO_BREAKER_FAILURES / CUMULO_BREAKER_COOLDOWN_S
        (an operator knob without a CLI flag; tests use it for a short cool-down)."""
        default = cls()
        try:
            failures = int(os.environ.get(ENV_FAILURES, default.failures))
            cool_down = float(os.environ.get(ENV_COOL_DOWN, default.cool_down_s))
        except ValueError as exc:
            raise ConfigError(f"{ENV_FAILURES} / {ENV_COOL_DOWN}: {exc}") from None
        return cls(failures=failures, cool_down_s=cool_down)


class CircuitBreaker:
    """One target's breaker. Not thread-safe: it lives on the gateway's event loop."""

    __slots__ = ("_clock", "_failures", "_opened_at", "_probing", "_state", "config")

    def __init__(self, config: BreakerConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The state as of now: an open circuit past its cool-down reads half-open."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def retry_after(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when it would now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.cool_down_s - self._clock())

    def allow(self) -> bool:
        """May a call go through now? True in half-open makes the caller the probe: it must
        report `success`, `failure` or `abandon` exactly once."""
        if self._state is BreakerState.OPEN:
            if not self._cooled_down():
                return False
            self._state = BreakerState.HALF_OPEN
        if self._state is BreakerState.HALF_OPEN:
            if self._probing:
                return False
            self._probing = True
        return True

    def success(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probing = False

    def failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._state is BreakerState.CLOSED and self._failures >= self.config.failures:
            self._open()

    def abandon(self) -> None:
        """The call ended with no verdict on the target (e.g. it was cancelled): a probe
        slot taken for it goes to the next caller instead of staying taken forever."""
        self._probing = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._probing = False

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self.config.cool_down_s


class Breakers:
    """The breakers of every (namespace, target), created on first call."""

    def __init__(self, config: BreakerConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._by_target: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, namespace: str, name: str) -> CircuitBreaker:
        key = (namespace, name)
        breaker = self._by_target.get(key)
        if breaker is None:
            breaker = self._by_target[key] = CircuitBreaker(self.config, self._clock)
        return breaker

    def state(self, namespace: str, name: str) -> BreakerState:
        breaker = self._by_target.get((namespace, name))
        return BreakerState.CLOSED if breaker is None else breaker.state
