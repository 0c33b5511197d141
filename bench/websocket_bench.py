"""WebSocket echo round trips through cumulo vs the same app on bare uvicorn (issue 16: ≥ 0.6×).

Both serve the FastAPI route `/echo` (bench/functions/ws_echo.py). CLIENTS connections
each send a 64-byte text message and wait for its echo, again and again, for a round's
seconds; rounds alternate between the two servers and the ratio is the median of the
per-round ratios. The client (the `websockets` library, asyncio) runs in this process.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from bench.common import FUNCTIONS_DIR, ROOT, BenchError, Platform, Proc, free_port, log, python_exe

CLIENTS = 8
MESSAGE = "m" * 64
TARGET = 0.6


def _bare_uvicorn() -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(
        [
            python_exe(),
            *("-m", "uvicorn", "bench.peers.ws_echo_app:app"),
            *("--port", str(port), "--loop", "uvloop", "--http", "httptools"),
            *("--ws", "websockets-sansio", "--no-access-log", "--log-level", "warning"),
        ],
        name="uvicorn-ws",
        log_path=Path(tempfile.mkstemp(prefix="bench-ws-", suffix=".log")[1]),
        cwd=ROOT,
    )
    url = f"ws://127.0.0.1:{port}/echo"
    deadline = time.monotonic() + 30
    while True:
        try:
            asyncio.run(_round_trips(url, {}, clients=1, duration_s=0.05))
            return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline or not proc.alive():
            proc.stop()
            raise BenchError("bare uvicorn did not start:\n" + proc.log_tail())
        time.sleep(0.1)


async def _round_trips(
    url: str, headers: Mapping[str, str], *, clients: int, duration_s: float
) -> tuple[int, list[float]]:
    """Round trips completed by `clients` connections in `duration_s`, and their latencies."""
    latencies: list[float] = []

    async def one() -> int:
        done = 0
        async with connect(url, additional_headers=dict(headers), open_timeout=30) as ws:
            end = time.perf_counter() + duration_s
            while (now := time.perf_counter()) < end:
                await ws.send(MESSAGE)
                if await ws.recv() != MESSAGE:
                    raise BenchError(f"{url}: the echo differs")
                latencies.append(time.perf_counter() - now)
                done += 1
        return done

    counts = await asyncio.gather(*(one() for _ in range(clients)))
    return sum(counts), latencies


def _measure(url: str, headers: Mapping[str, str], duration_s: float) -> dict[str, float]:
    t0 = time.perf_counter()
    count, latencies = asyncio.run(
        _round_trips(url, headers, clients=CLIENTS, duration_s=duration_s)
    )
    elapsed = time.perf_counter() - t0
    ordered = sorted(latencies)
    return {
        "round_trips_s": count / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
    }


def main(rounds: int = 4, duration_s: float = 5.0) -> dict[str, Any]:
    bare, bare_url = _bare_uvicorn()
    try:
        with Platform(idle_timeout=600, label="cumulo (websocket bench)") as plat:
            plat.deploy(FUNCTIONS_DIR / "ws_echo.py", "wsecho")
            ours = f"ws://127.0.0.1:{plat.port}/fn/default/wsecho/echo"
            sides = {"cumulo": (ours, plat.auth), "bare": (bare_url, {})}
            for url, headers in sides.values():
                _measure(url, headers, 1.0)  # warm-up: the worker started, code paths hot
            runs: dict[str, list[dict[str, float]]] = {"cumulo": [], "bare": []}
            ratios = []
            for r in range(rounds):
                order = ["cumulo", "bare"] if r % 2 == 0 else ["bare", "cumulo"]
                got = {name: _measure(*sides[name], duration_s) for name in order}
                for name in order:
                    runs[name].append(got[name])
                ratios.append(got["cumulo"]["round_trips_s"] / got["bare"]["round_trips_s"])
                log(
                    f"websocket round {r + 1}: cumulo {got['cumulo']['round_trips_s']:,.0f}"
                    f" round trips/s, bare {got['bare']['round_trips_s']:,.0f}"
                )
    finally:
        bare.stop()

    def med(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    ratio = statistics.median(ratios)
    return {
        "cumulo_round_trips_s": med("cumulo", "round_trips_s"),
        "bare_uvicorn_round_trips_s": med("bare", "round_trips_s"),
        "cumulo_p50_ms": med("cumulo", "p50_ms"),
        "bare_p50_ms": med("bare", "p50_ms"),
        "cumulo_p99_ms": med("cumulo", "p99_ms"),
        "bare_p99_ms": med("bare", "p99_ms"),
        "ratio_median_of_rounds": ratio,
        "target": f">= {TARGET:.2f}",
        "pass": ratio >= TARGET,
        "clients": CLIENTS,
        "message_bytes": len(MESSAGE),
        "rounds": rounds,
        "duration_s": duration_s,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
