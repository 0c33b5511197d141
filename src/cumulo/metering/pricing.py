"""The price table: per million invocations, per GB-second, per CPU-second (a TOML file)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cumulo.errors import ConfigError

# AWS Lambda's public x86 prices (us-east-1, first tier): $0.20 per million requests and
# $0.0000166667 per GB-second; Lambda does not bill CPU time separately.
LAMBDA_PER_MILLION = 0.20
LAMBDA_PER_GB_SECOND = 0.0000166667


@dataclass(frozen=True, slots=True)
class Prices:
    per_million_invocations: float = LAMBDA_PER_MILLION
    per_gb_second: float = LAMBDA_PER_GB_SECOND
    per_cpu_second: float = 0.0
    currency: str = "USD"

    def cost(self, invocations: float, gb_seconds: float, cpu_seconds: float) -> float:
        return (
            invocations * self.per_million_invocations / 1_000_000
            + gb_seconds * self.per_gb_second
            + cpu_seconds * self.per_cpu_second
        )

    def public(self) -> dict[str, float]:
        return {
            "per_million_invocations": self.per_million_invocations,
            "per_gb_second": self.per_gb_second,
            "per_cpu_second": self.per_cpu_second,
        }


PRICE_KEYS = ("per_million_invocations", "per_gb_second", "per_cpu_second")


def load_prices(path: Path | None) -> Prices:
    """Read a pricing file; keys left out keep their default. ConfigError on anything odd."""
    if path is None:
        return Prices()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read pricing file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"pricing file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {*PRICE_KEYS, "currency"})
    if unknown:
        raise ConfigError(
            f"pricing file {path}: unknown key(s) {', '.join(unknown)}; "
            f"use {', '.join(PRICE_KEYS)} and currency"
        )
    values: dict[str, float] = {}
    for key in PRICE_KEYS:
        if key in data:
            value = data[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(f"pricing file {path}: {key} must be a number >= 0")
            values[key] = float(value)
    currency = data.get("currency", "USD")
    if not isinstance(currency, str) or not currency.isalpha() or len(currency) != 3:
        raise ConfigError(f"pricing file {path}: currency must be a 3-letter code like USD")
    return Prices(**values, currency=currency.upper())
