"""Traffic forecasting and predictive pre-warming (cumulo.ai.forecast, prewarm, windows)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cumulo.ai.forecast import detect_season, forecast
from cumulo.ai.prewarm import FunctionOutlook, PrewarmPlanner
from cumulo.ai.windows import ArrivalWindows
from cumulo.observability.outcomes import Outcome
from tests.conftest import FUNCTIONS, RunningPlatform

PERIOD = 12  # buckets
PEAK = (8, 9)  # phases of the burst inside a period


def periodic(periods: int, noise: int = 0) -> list[float]:
    out = []
    for i in range(periods * PERIOD):
        phase = i % PERIOD
        out.append(40.0 if phase in PEAK else float((i * 7 + noise) % 3))
    return out


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def outcome(t: float, *, duration: float = 0.1, cold: bool = False) -> Outcome:
    return Outcome("i", "default", "fn", 1, 200, "ok", cold, t, duration)


def test_season_is_found_from_the_series() -> None:
    assert detect_season(periodic(4)) == PERIOD
    assert detect_season([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]) is None  # flat: no season


@pytest.mark.parametrize("periods", [3, 5])  # seasonal-naive, then Holt-Winters
def test_forecast_predicts_the_next_peak(periods: int) -> None:
    history = periodic(periods)[:-5]  # stop 5 buckets before the end of a period: phase 7
    result = forecast(history, horizon=4)
    assert result.method == ("seasonal-naive" if periods < 4 else "holt-winters")
    assert result.season == PERIOD
    quiet, peak1, peak2, after = result.values
    assert min(peak1, peak2) > 30, result.values
    assert max(quiet, after) < 10, result.values


def test_arrivals_bucket_by_start_time_with_a_clock() -> None:
    windows = ArrivalWindows(bucket_s=1.0, max_buckets=100)
    clock = FakeClock(1000.0)
    for t in (1000.1, 1000.5, 1001.2, 1003.9):
        windows.observe(outcome(t))
    windows.observe(outcome(1003.95, duration=0.5, cold=True))
    assert windows.close_until(clock.now + 5) == 1005
    series = windows.series[("default", "fn")]
    assert list(series.history) == [2, 1, 0, 2, 0]
    assert series.mean_duration_s == pytest.approx(0.1)
    assert series.cold_s == pytest.approx(0.5)


def test_planner_starts_before_the_predicted_load_and_releases_after() -> None:
    bucket = 2.0
    planner = PrewarmPlanner(bucket_s=bucket, lead_s=0.5, headroom=1.0)
    # Open bucket 500 ([1000, 1002)) is quiet; 501 ([1002, 1004)) expects 80 calls of 0.1 s
    # each: 4 busy workers on average.
    floors = planner.plan(
        FunctionOutlook(
            first_bucket=500,
            predicted=[0.2, 80.0, 0.1],
            mean_duration_s=0.1,
            cold_start_s=0.05,
        )
    )
    assert planner.in_force(floors, 1001.0) is None  # too early: nothing held
    early = planner.in_force(floors, 1002.0 - 0.55 + 0.01)  # lead + cold start before
    assert early is not None
    assert early.workers == 4
    assert early.until == 1004.0
    assert planner.in_force(floors, 1003.9) is not None
    assert planner.in_force(floors, 1004.01) is None  # the predicted load has passed


def test_planner_sizes_by_concurrency_and_headroom() -> None:
    planner = PrewarmPlanner(bucket_s=1.0, lead_s=0.0, headroom=1.5)
    assert planner.workers_for(0.3, 0.1, 1) == 0  # noise is no load
    assert planner.workers_for(1.0, 0.01, 1) == 1  # any predicted call gets a worker
    assert planner.workers_for(40.0, 0.1, 1) == 6  # 4 busy * 1.5
    assert planner.workers_for(40.0, 0.1, 4) == 2


# ------------------------------------------------------------------ on a real platform
BUCKET_S = 0.5
PERIOD_BUCKETS = 6  # a burst every 3 s


def _workers(http: httpx.Client, name: str) -> int:
    data = http.get(f"/v1/namespaces/default/functions/{name}/workers").json()
    return sum(len(z.get("workers", [])) for z in data["zygotes"])


def test_workers_start_before_a_predicted_burst(
    fresh_platform: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CUMULO_FORECAST_BUCKET_S", str(BUCKET_S))
    monkeypatch.setenv("CUMULO_FORECAST_MIN_BUCKETS", str(2 * PERIOD_BUCKETS))
    monkeypatch.setenv("CUMULO_PREWARM_LEAD_S", "0.3")
    monkeypatch.setenv("CUMULO_ANOMALY", "off")
    plat: RunningPlatform = fresh_platform("--idle-timeout", "0.5")
    client = plat.client()
    client.deploy(FUNCTIONS / "kit.py", name="burst", handler="kit.echo")
    period = BUCKET_S * PERIOD_BUCKETS
    starts: list[str] = []
    warm_before: list[int] = []
    with plat.http() as http:
        for _ in range(8):
            # Each burst at the same phase of the period, 0.1 s into a bucket.
            burst_at = (time.time() // period + 1) * period + 0.1
            time.sleep(max(0.0, burst_at - 0.05 - time.time()))
            # Just before the burst (the idle timeout reaped every reactive worker long ago).
            warm_before.append(_workers(http, "burst"))
            time.sleep(max(0.0, burst_at - time.time()))
            replies = [http.post("/fn/default/burst", json={"i": i}) for i in range(3)]
            assert all(r.status_code == 200 for r in replies)
            starts.append(replies[0].headers["x-cumulo-start"])
    assert starts[0] == "cold"
    assert warm_before[0] == 0
    # Once two periods are seen, the sidecar forecasts the burst and workers are up first.
    assert starts[-1] == "warm", (starts, warm_before)
    assert warm_before[-1] >= 1, (starts, warm_before)
    assert starts[-3:].count("warm") >= 2, (starts, warm_before)
