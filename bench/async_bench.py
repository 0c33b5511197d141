"""Async invocations end to end on SQLite: jobs/s from the first `POST /async` until the last
job's result is recorded, for a trivial function (JSON echo). Peer, in the same run and on the
same platform: the same number of synchronous calls through `/fn/`.

python -m bench.async_bench [--jobs 5000] [--connections 32] [--rounds 2]

Target (issue 4): ≥ 1,000 async jobs/s. The client is a small asyncio HTTP/1.1 client on
keep-alive connections (httpx would cost more CPU per request than the server does).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import Sequence
from typing import Any

from bench.common import FUNCTIONS_DIR, HOST, Platform, log, median

TARGET_JOBS_PER_S = 1000.0
TERMINAL = {"succeeded", "failed", "dead"}


class Conn:
    """One keep-alive HTTP/1.1 connection; requests one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes, auth: str) -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: {HOST}\r\nauthorization: {auth}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _fan_out(
    port: int, auth: str, requests: Sequence[tuple[str, str, bytes]], connections: int
) -> list[tuple[int, bytes]]:
    """Send `requests` over `connections` keep-alive connections; answers in request order."""
    answers: list[tuple[int, bytes]] = [(0, b"")] * len(requests)
    indexes = iter(range(len(requests)))  # shared: each connection takes the next request

    async def run() -> None:
        conn = await Conn.open(port)
        try:
            for i in indexes:
                method, path, body = requests[i]
                answers[i] = await conn.request(method, path, body, auth)
        finally:
            conn.close()

    await asyncio.gather(*(run() for _ in range(connections)))
    return answers


def _check(answers: list[tuple[int, bytes]], status: int, what: str) -> None:
    bad = [a for a in answers if a[0] != status]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} answers were not {status}, e.g. {bad[0]!r}")


async def sync_round(port: int, auth: str, n: int, connections: int) -> dict[str, float]:
    body = json.dumps({"hello": "world", "n": 1}).encode()
    requests = [("POST", "/fn/default/echo", body)] * n
    t0 = time.perf_counter()
    answers = await _fan_out(port, auth, requests, connections)
    elapsed = time.perf_counter() - t0
    _check(answers, 200, "sync /fn/")
    return {"calls": n, "seconds": elapsed, "per_s": n / elapsed}


async def async_round(
    port: int, auth: str, n: int, connections: int, limit_s: float
) -> dict[str, float]:
    requests = [
        ("POST", "/async/default/echo", json.dumps({"hello": "world", "n": i}).encode())
        for i in range(n)
    ]
    start_wall = time.time()
    t0 = time.perf_counter()
    answers = await _fan_out(port, auth, requests, connections)
    enqueue_s = time.perf_counter() - t0
    _check(answers, 202, "POST /async")
    ids = [json.loads(body)["id"] for _, body in answers]
    views = await _wait_all(port, auth, ids, connections, limit_s)
    failed = [v for v in views if v["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} async jobs did not succeed, e.g. {failed[0]}")
    last = max(float(v["finished_at"]) for v in views)
    latencies = sorted(float(v["finished_at"]) - float(v["created_at"]) for v in views)
    elapsed = last - start_wall
    return {
        "jobs": n,
        "seconds": elapsed,
        "per_s": n / elapsed,
        "enqueue_per_s": n / enqueue_s,
        "queue_latency_p50_ms": latencies[len(latencies) // 2] * 1000,
        "queue_latency_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


async def _wait_all(
    port: int, auth: str, ids: list[str], connections: int, limit_s: float
) -> list[dict[str, Any]]:
    """Poll the newest job until it is done (cheap), then read every job once; any still
    running are read again, until `limit_s`."""
    deadline = time.monotonic() + limit_s
    conn = await Conn.open(port)
    try:
        for delay in itertools.chain([0.05] * 20, itertools.repeat(0.2)):
            status, body = await conn.request("GET", f"/v1/invocations/{ids[-1]}", b"", auth)
            if status == 200 and json.loads(body)["status"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"async jobs not done after {limit_s:.0f}s")
            await asyncio.sleep(delay)  # a poll interval, not synchronisation
    finally:
        conn.close()
    views: dict[str, dict[str, Any]] = {}
    pending = ids
    while pending:
        answers = await _fan_out(
            port, auth, [("GET", f"/v1/invocations/{i}", b"") for i in pending], connections
        )
        for job_id, (_, body) in zip(pending, answers, strict=True):
            views[job_id] = json.loads(body)
        pending = [i for i in pending if views[i].get("status") not in TERMINAL]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} async jobs not done after {limit_s:.0f}s")
        if pending:
            await asyncio.sleep(0.2)
    return [views[i] for i in ids]


def main(jobs: int = 5000, connections: int = 32, rounds: int = 2) -> dict[str, Any]:
    """Measure; returns the numbers (also printed as JSON by the command line)."""
    with Platform(idle_timeout=600) as platform:
        platform.deploy(FUNCTIONS_DIR / "echo.py", "echo")
        port = int(platform.url.rsplit(":", 1)[1])
        auth = f"Bearer {platform.api_key}"

        async def measure() -> dict[str, Any]:
            # Warm-up: workers forked, caches and the events tables touched.
            await sync_round(port, auth, 500, connections)
            await async_round(port, auth, 500, connections, 60)
            sync_runs, async_runs = [], []
            for r in range(rounds):
                async_runs.append(await async_round(port, auth, jobs, connections, 120))
                sync_runs.append(await sync_round(port, auth, jobs, connections))
                log(
                    f"round {r + 1}: async {async_runs[-1]['per_s']:,.0f} jobs/s end to end "
                    f"(enqueue {async_runs[-1]['enqueue_per_s']:,.0f}/s), "
                    f"sync {sync_runs[-1]['per_s']:,.0f} calls/s"
                )
            return {"async": async_runs, "sync": sync_runs}

        runs = asyncio.run(measure())
    async_per_s = median([r["per_s"] for r in runs["async"]])
    sync_per_s = median([r["per_s"] for r in runs["sync"]])
    return {
        "jobs": jobs,
        "connections": connections,
        "async_jobs_per_s": async_per_s,
        "async_enqueue_per_s": median([r["enqueue_per_s"] for r in runs["async"]]),
        "async_queue_latency_p50_ms": median([r["queue_latency_p50_ms"] for r in runs["async"]]),
        "sync_calls_per_s": sync_per_s,
        "async_vs_sync": async_per_s / sync_per_s,
        "target_jobs_per_s": TARGET_JOBS_PER_S,
        "pass": async_per_s >= TARGET_JOBS_PER_S,
        "runs": runs,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(main(args.jobs, args.connections, args.rounds), indent=2))
