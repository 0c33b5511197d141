"""Next-bucket arrival forecasts for one function: seasonal when the history shows a season.

Runs in the sidecar (cumulo.ai.sidecar): numpy and statsmodels are imported inside the
functions, never when the gateway imports this module's names.

1. The season is found from the series itself: the lag (2 .. n/2 buckets) with the highest
   autocorrelation, taking the shortest lag within 90 % of the best so a multiple of the
   period never wins; none when that autocorrelation is under `MIN_SEASONAL_ACF`. A caller
   may pass the season instead (known daily or weekly cycles).
2. With at least `HW_SEASONS` seasons of history: Holt-Winters exponential smoothing
   (statsmodels `ExponentialSmoothing`, additive seasonality, no trend: bursts on a quiet
   base make trend estimates swing), parameters fitted by statsmodels.
3. With less (but a season): seasonal-naive, each future bucket repeats the mean of the same
   phase in the seasons seen.
4. Without a season: the mean of the recent buckets (flat), which is what reactive scaling
   already does; the pre-warmer only acts on predictions above the current load.
Forecasts are clipped at zero.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

MIN_SEASONAL_ACF = 0.5
HW_SEASONS = 3
FLAT_WINDOW = 6


@dataclass(frozen=True, slots=True)
class Forecast:
    values: list[float]  # predicted arrivals for the next buckets, the open one first
    method: str  # "holt-winters", "seasonal-naive", "flat" or "none"
    season: int | None


def detect_season(counts: list[float]) -> int | None:
    import numpy as np

    y = np.asarray(counts, dtype=float)
    n = len(y)
    if n < 6:
        return None
    y = y - y.mean()
    denom = float(np.dot(y, y))
    if denom <= 0:
        return None
    lags = range(2, n // 2 + 1)
    acf = np.array([float(np.dot(y[:-lag], y[lag:])) / denom for lag in lags])
    if not len(acf):
        return None
    best = float(acf.max())
    if best < MIN_SEASONAL_ACF:
        return None
    first = int(np.argmax(acf >= 0.9 * best))
    return first + 2


def forecast(counts: list[float], horizon: int, season: int | None = None) -> Forecast:
    """Predict the next `horizon` buckets after `counts` (closed buckets, oldest first)."""
    import numpy as np

    if not counts or horizon <= 0:
        return Forecast([], "none", None)
    y = np.asarray(counts, dtype=float)
    season = season or detect_season(counts)
    if season is None or len(y) < season:
        level = float(y[-FLAT_WINDOW:].mean())
        return Forecast([max(0.0, level)] * horizon, "flat", None)
    if len(y) >= HW_SEASONS * season:
        values = _holt_winters(y, horizon, season)
        if values is not None:
            return Forecast(values, "holt-winters", season)
    return Forecast(_seasonal_naive(y, horizon, season), "seasonal-naive", season)


def _seasonal_naive(y: Any, horizon: int, season: int) -> list[float]:
    import numpy as np

    n = len(y)
    seasons = n // season
    out = []
    for step in range(horizon):
        # The same phase in each full season seen, most recent first.
        idx = [n - season * k + (step % season) for k in range(1, seasons + 1)]
        out.append(max(0.0, float(np.mean([y[i] for i in idx if 0 <= i < n]))))
    return out


def _holt_winters(y: Any, horizon: int, season: int) -> list[float] | None:
    import numpy as np
    from statsmodels.tsa.holtwinters import ExponentialSmoothing  # type: ignore[import-untyped]

    # Recent seasons only: an old pattern should fade, and the fit stays ~10 ms.
    y = y[-season * 8 :]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on spiky series
            fitted = ExponentialSmoothing(
                y + 1e-3,  # strictly positive keeps the optimiser away from degenerate fits
                trend=None,
                seasonal="add",
                seasonal_periods=season,
                initialization_method="estimated",
            ).fit()
            values = fitted.forecast(horizon)
    except (ValueError, np.linalg.LinAlgError):
        return None
    return [max(0.0, float(v)) for v in values]
