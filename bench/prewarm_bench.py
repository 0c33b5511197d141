"""Predictive pre-warming vs reactive scaling on a periodic trace (time-compressed).

The same trace runs against two `cumulo up` platforms, reactive only (CUMULO_PREWARM=off,
i.e. `--no-prewarm`) and predictive: 1-s arrival buckets, a burst every PERIOD_S seconds
(CLIENTS concurrent clients each calling a 50-ms function back to back for BURST_S), idle
workers reaped after IDLE_S (so between bursts both scale to zero). The first WARMUP
periods teach the forecaster (two periods are needed to see the season); the measured
periods after them count
- cold starts: replies whose `x-cumulo-start` is `cold`;
- worker-seconds: the function's live workers (busy + idle + starting, from the
  `cumulo_workers` gauges of /metrics sampled every 50 ms) integrated over the periods.
Target: >= 80 % fewer cold starts for <= 20 % more worker-seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import HttpConn, Platform, http_request, log

BUCKET_S = 1.0
PERIOD_S = 12.0
BURST_S = 3.0
CLIENTS = 4
IDLE_S = 2.0
WARMUP = 3
MEASURED = 4
SAMPLE_S = 0.05
# Start workers this long before a predicted bucket (plus the measured cold start);
# BENCH_PREWARM_LEAD_S overrides ("" = the platform default, a quarter bucket).
LEAD_S = os.environ.get("BENCH_PREWARM_LEAD_S", "")
FUNCTION = """
import time

import cumulo


@cumulo.function(concurrency=1, max_instances=10)
def work(event: dict, ctx: cumulo.Context) -> dict:
    time.sleep(0.05)
    return {"ok": True}
"""


def _workers(url: str, auth: dict[str, str]) -> int:
    text = http_request("GET", f"{url}/metrics", headers=auth, timeout=5).body.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("cumulo_workers{") and 'function="work"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _burst(plat: Platform, until: float, starts: list[str]) -> None:
    conn = HttpConn(plat.url)
    try:
        while time.time() < until:
            resp = conn.request("POST", "/fn/default/work", b"{}", plat.auth)
            starts.append(resp.headers.get("x-cumulo-start", "?"))
    finally:
        conn.close()


def run_trace(prewarm: bool) -> dict[str, Any]:
    env = {
        "CUMULO_FORECAST_BUCKET_S": str(BUCKET_S),
        "CUMULO_FORECAST_MIN_BUCKETS": str(int(2 * PERIOD_S / BUCKET_S)),
        "CUMULO_PREWARM_LEAD_S": LEAD_S,
        "CUMULO_ANOMALY": "off",
        "CUMULO_PREWARM": "on" if prewarm else "off",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        plat = Platform(
            idle_timeout=IDLE_S, label=f"cumulo ({'predictive' if prewarm else 'reactive'})"
        )
        plat.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        src = Path(tempfile.mkdtemp(prefix="bench-prewarm-")) / "work.py"
        src.write_text(FUNCTION)
        plat.deploy(src, "work")
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.time(), _workers(plat.url, plat.auth)))
                time.sleep(SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        first = (time.time() // PERIOD_S + 1) * PERIOD_S
        per_period: list[dict[str, Any]] = []
        for period in range(WARMUP + MEASURED):
            burst_at = first + period * PERIOD_S + 0.1
            time.sleep(max(0.0, burst_at - time.time()))
            starts: list[str] = []
            threads = [
                threading.Thread(target=_burst, args=(plat, burst_at + BURST_S, starts))
                for _ in range(CLIENTS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            per_period.append({"calls": len(starts), "cold": starts.count("cold")})
            log(f"period {period + 1}: {len(starts)} calls, {starts.count('cold')} cold")
        time.sleep(PERIOD_S - 0.2 - BURST_S)  # the last period's tail (idle reaping)
        stop.set()
        sampler.join()
        begin, end = first + WARMUP * PERIOD_S, first + (WARMUP + MEASURED) * PERIOD_S
        worker_s = sum(
            n * (t2 - t1) for (t1, n), (t2, _) in itertools.pairwise(samples) if begin <= t1 < end
        )
        measured = per_period[WARMUP:]
        return {
            "cold_starts": sum(p["cold"] for p in measured),
            "calls": sum(p["calls"] for p in measured),
            "worker_seconds": round(worker_s, 2),
            "periods": per_period,
        }
    finally:
        plat.stop()


def main() -> dict[str, Any]:
    reactive = run_trace(prewarm=False)
    predictive = run_trace(prewarm=True)
    cold_cut = 1 - predictive["cold_starts"] / max(1, reactive["cold_starts"])
    extra = predictive["worker_seconds"] / max(1e-9, reactive["worker_seconds"]) - 1
    result = {
        "reactive": reactive,
        "predictive": predictive,
        "cold_start_reduction": round(cold_cut, 3),
        "extra_worker_seconds": round(extra, 3),
        "target": ">= 0.80 fewer cold starts, <= 0.20 more worker-seconds",
        "pass": cold_cut >= 0.8 and extra <= 0.2,
        "trace": {
            "bucket_s": BUCKET_S,
            "period_s": PERIOD_S,
            "burst_s": BURST_S,
            "clients": CLIENTS,
            "idle_timeout_s": IDLE_S,
            "warmup_periods": WARMUP,
            "measured_periods": MEASURED,
            "lead_s": LEAD_S or "default (a quarter bucket)",
        },
    }
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
