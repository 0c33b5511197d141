"""Settings of traffic forecasting, pre-warming and anomaly detection (cumulo.ai.insights).

Defaults suit production (10-s arrival buckets, 60-s usage windows). Tests and benchmarks
compress time through environment variables, read once when the platform is built:

- CUMULO_FORECAST_BUCKET_S: arrival-count bucket length (default 10)
- CUMULO_FORECAST_MIN_BUCKETS: history a function needs before it is forecast (default 12)
- CUMULO_PREWARM_LEAD_S: how long before a predicted bucket its workers start, on top of
  the function's measured cold start (default: one bucket)
- CUMULO_PREWARM_HEADROOM: predicted concurrency multiplier (default 1.0)
- CUMULO_ANOMALY_WINDOW_S: usage window length (default 60)
- CUMULO_ANOMALY_MIN_TRAIN: windows rows seen before the detector scores (default 50)
- CUMULO_ANOMALY=off: no usage windows, no alerts
- CUMULO_PREWARM=off: like `cumulo up --no-prewarm`
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 else default


TICKS_PER_BUCKET = 4  # pre-warm floors are re-applied this often per bucket


def _on(name: str) -> bool:
    return os.environ.get(name, "on").lower() not in ("off", "0", "false", "no")


@dataclass(frozen=True, slots=True)
class InsightSettings:
    bucket_s: float = 10.0
    max_buckets: int = 720  # arrival history kept per function
    min_buckets: int = 12
    lead_s: float | None = None  # None: one pre-warm tick (a quarter bucket)
    headroom: float = 1.0
    prewarm: bool = True
    window_s: float = 60.0
    min_train: int = 50
    anomaly: bool = True

    @property
    def lead(self) -> float:
        """Seconds before (the measured cold start before) a predicted bucket to start its
        workers. Floors are applied on ticks, a quarter bucket apart, so a start can be late
        by one tick: the default lead is that tick. Being ready at the bucket's start covers
        a burst anywhere inside it, since its workers are held to the bucket's end."""
        return self.bucket_s / TICKS_PER_BUCKET if self.lead_s is None else self.lead_s

    @classmethod
    def from_env(cls, *, prewarm: bool = True) -> InsightSettings:
        lead = os.environ.get("CUMULO_PREWARM_LEAD_S", "")
        try:
            lead_s: float | None = max(0.0, float(lead)) if lead else None
        except ValueError:
            lead_s = None
        return cls(
            bucket_s=_float("CUMULO_FORECAST_BUCKET_S", 10.0),
            min_buckets=int(_float("CUMULO_FORECAST_MIN_BUCKETS", 12)),
            lead_s=lead_s,
            headroom=_float("CUMULO_PREWARM_HEADROOM", 1.0),
            prewarm=prewarm and _on("CUMULO_PREWARM"),
            window_s=_float("CUMULO_ANOMALY_WINDOW_S", 60.0),
            min_train=int(_float("CUMULO_ANOMALY_MIN_TRAIN", 50)),
            anomaly=_on("CUMULO_ANOMALY"),
        )
