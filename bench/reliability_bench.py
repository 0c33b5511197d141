"""Reliability (issue 15): a fixed-rate soak with the gateway's RSS sampled, and a flood of
idle connections during which a healthy client's latency is measured.

(a) Soak: SOAK_S seconds (CUMULO_BENCH_SOAK_S, default 300) of RATE invocations a second
    (CUMULO_BENCH_SOAK_RATE, default 100) of a warm echo function over four keep-alive
    connections, the gateway's VmRSS sampled every 10 s. Reported: the least-squares slope
    after the warm-up (the first WARMUP_S, at most a third of the soak) in MB/min and as the
    growth it makes over the measured part, in % of the RSS where it starts. Goal: within 5 %.
(b) Flood: FLOOD connections (CUMULO_BENCH_FLOOD, default 5,000) from ten loopback
    addresses (500 each, under the default per-client cap) each send half a request head and
    then nothing; a separate process holds them and reopens those the gateway closes (the
    header timeout, 10 s by default), as an attacker would. Meanwhile a healthy client from
    another address calls the echo function at PROBE_RATE a second on one keep-alive
    connection for PROBE_S seconds; the same probe without the flood is the baseline.
    Goal: p99 under the flood < 50 ms.
(c) Idle: after the soak, IDLE_S seconds (CUMULO_BENCH_IDLE_S, default 120) with no
    requests, RSS sampled every 10 s: the review saw the gateway keep growing when idle.
    Reported like the soak (slope over the whole idle time); goal: within 5 %.

python -m bench.reliability_bench            # both parts; JSON on stdout
python -m bench.reliability_bench --flood-worker N SECONDS   (internal: the flood process)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import selectors
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    FUNCTIONS_DIR,
    BenchError,
    HttpConn,
    Platform,
    Proc,
    log,
    percentile,
    python_exe,
    rss_kb,
)

SOAK_S = float(os.environ.get("CUMULO_BENCH_SOAK_S", "300"))
RATE = float(os.environ.get("CUMULO_BENCH_SOAK_RATE", "100"))
SAMPLE_S = 10.0
WARMUP_S = 60.0
SOAK_GOAL_PCT = 5.0
IDLE_S = float(os.environ.get("CUMULO_BENCH_IDLE_S", "120"))
FLOOD = int(os.environ.get("CUMULO_BENCH_FLOOD", "5000"))
FLOOD_SOURCES = [f"127.0.0.{i}" for i in range(10, 20)]
PROBE_SOURCE = "127.0.0.2"
PROBE_RATE = 50.0
PROBE_S = 20.0
P99_GOAL_MS = 50.0
BODY = json.dumps({"user": "ada", "items": [1, 2, 3]}).encode()
HALF_HEAD = b"POST /fn/default/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: applic"


# ---------------------------------------------------------------------------------------------
# (a) soak


def _paced_calls(
    conn: HttpConn,
    auth: dict[str, str],
    rate: float,
    until: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    """Call the echo function on one keep-alive connection at `rate` a second until `until`;
    a connection that failed is reopened for the next call."""
    next_at = time.monotonic()
    try:
        while next_at < until:
            time.sleep(max(0.0, next_at - time.monotonic()))
            try:
                resp = conn.request("POST", "/fn/default/echo", BODY, auth)
                if resp.status == 200:
                    latencies.append(resp.seconds * 1000)
                else:
                    errors.append(f"HTTP {resp.status}")
            except OSError as exc:
                errors.append(type(exc).__name__)
                conn.close()
            next_at += 1 / rate
    finally:
        conn.close()


def _rss_samples(plat: Platform, seconds: float) -> list[tuple[float, float]]:
    """(seconds since start, gateway RSS in MB) every SAMPLE_S for `seconds`."""
    t0 = time.monotonic()
    samples: list[tuple[float, float]] = []
    while True:
        kib = rss_kb(plat.pid)
        elapsed = time.monotonic() - t0
        if kib is not None:
            samples.append((round(elapsed, 1), round(kib * 1024 / 1e6, 2)))
        if elapsed >= seconds:
            return samples
        time.sleep(max(0.0, min(SAMPLE_S * len(samples), seconds) - elapsed))


def _growth(points: list[tuple[float, float]], what: str) -> tuple[float, float]:
    """Least-squares slope of (seconds, MB) points in MB/min, and the growth it makes over
    their span in % of the first RSS."""
    if len(points) < 2:
        raise BenchError(f"{what} left {len(points)} RSS samples")
    slope = _slope([(t / 60, mb) for t, mb in points])
    return slope, 100 * slope * (points[-1][0] - points[0][0]) / 60 / points[0][1]


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def soak(plat: Platform, seconds: float, rate: float) -> dict[str, Any]:
    workers = 4
    latencies: list[float] = []
    errors: list[str] = []
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=_paced_calls,
            args=(
                HttpConn(plat.url, timeout=10),
                plat.auth,
                rate / workers,
                until,
                latencies,
                errors,
            ),
        )
        for _ in range(workers)
    ]
    for t in threads:
        t.start()
    points = _rss_samples(plat, seconds)
    for t in threads:
        t.join()
    samples = [{"t_s": t_s, "rss_mb": mb} for t_s, mb in points]
    warmup = min(WARMUP_S, seconds / 3)
    measured = [p for p in points if p[0] >= warmup]
    slope, growth_pct = _growth(measured, f"the soak of {seconds:.0f} s after warm-up")
    start_mb = measured[0][1]
    log(
        f"soak: {len(latencies)} calls, {len(errors)} errors, RSS {samples[0]['rss_mb']} -> "
        f"{samples[-1]['rss_mb']} MB, slope after warm-up {slope:+.3f} MB/min ({growth_pct:+.2f} %)"
    )
    return {
        "seconds": seconds,
        "rate_per_s": rate,
        "calls": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "warmup_s": warmup,
        "rss_first_mb": samples[0]["rss_mb"],
        "rss_after_warmup_mb": start_mb,
        "rss_last_mb": samples[-1]["rss_mb"],
        "slope_mb_per_min": round(slope, 4),
        "growth_after_warmup_pct": round(growth_pct, 2),
        "goal_pct": SOAK_GOAL_PCT,
        "pass": abs(growth_pct) <= SOAK_GOAL_PCT,
        "samples": samples,
    }


def idle(plat: Platform, seconds: float) -> dict[str, Any]:
    samples = _rss_samples(plat, seconds)
    slope, growth_pct = _growth(samples, f"the idle time of {seconds:.0f} s")
    log(
        f"idle: RSS {samples[0][1]:.1f} -> {samples[-1][1]:.1f} MB, slope {slope:+.3f} MB/min "
        f"({growth_pct:+.2f} %)"
    )
    return {
        "seconds": seconds,
        "rss_first_mb": round(samples[0][1], 2),
        "rss_last_mb": round(samples[-1][1], 2),
        "slope_mb_per_min": round(slope, 4),
        "growth_pct": round(growth_pct, 2),
        "goal_pct": SOAK_GOAL_PCT,
        "pass": abs(growth_pct) <= SOAK_GOAL_PCT,
    }


# ---------------------------------------------------------------------------------------------
# (b) flood


class SourcedConn(HttpConn):
    """HttpConn from a chosen local address (the healthy client is not the flood)."""

    def __init__(self, base_url: str, source: str) -> None:
        super().__init__(base_url, timeout=10)
        self.source = source

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            conn = http.client.HTTPConnection(
                self.host, self.port, timeout=self.timeout, source_address=(self.source, 0)
            )
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return self._conn


def probe(plat: Platform, seconds: float) -> dict[str, Any]:
    """The healthy client: one keep-alive connection from PROBE_SOURCE at PROBE_RATE/s."""
    latencies: list[float] = []
    errors: list[str] = []
    conn = SourcedConn(plat.url, PROBE_SOURCE)
    _paced_calls(conn, plat.auth, PROBE_RATE, time.monotonic() + seconds, latencies, errors)
    return {
        "calls": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "p50_ms": round(percentile(latencies, 50), 2),
        "p90_ms": round(percentile(latencies, 90), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
    }


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def flood_worker(target: str, n: int, seconds: float) -> None:
    """Hold `n` half-sent requests open against `target` (host:port) for `seconds`,
    reopening each one the server closes. Prints READY once all are open, then a JSON
    summary line at the end."""
    host, port = target.rsplit(":", 1)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    stats = {"opened": 0, "closed_by_server": 0, "connect_errors": 0, "open_min_after_ready": n}

    def open_one(i: int) -> None:
        try:
            sock = socket.create_connection(
                (host, int(port)), timeout=5, source_address=(FLOOD_SOURCES[i % 10], 0)
            )
            sock.sendall(HALF_HEAD)
        except OSError:
            stats["connect_errors"] += 1
            return
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, i)
        stats["opened"] += 1

    for i in range(n):
        open_one(i)
    print("READY", len(sel.get_map()), flush=True)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sel.unregister(sock)
            sock.close()
            stats["closed_by_server"] += 1
            open_one(int(key.data))
        stats["open_min_after_ready"] = min(stats["open_min_after_ready"], len(sel.get_map()))
    print(json.dumps(stats), flush=True)


def flood(plat: Platform, n: int) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 512:
        raise BenchError(f"RLIMIT_NOFILE hard limit {hard} is too low for {n} connections")
    baseline = probe(plat, PROBE_S)
    log(f"flood: baseline p99 {baseline['p99_ms']} ms ({baseline['calls']} calls)")
    hold_s = PROBE_S + 5  # counted from READY; the probe starts right after it
    out = Path(tempfile.mkstemp(prefix="bench-flood-", suffix=".log")[1])
    worker = Proc(
        [
            python_exe(),
            "-m",
            "bench.reliability_bench",
            "--flood-worker",
            plat.url.split("//")[1],
            str(n),
            str(hold_s),
        ],
        name="flood",
        log_path=out,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        deadline = time.monotonic() + 60
        while "READY" not in out.read_text():
            if not worker.alive() or time.monotonic() > deadline:
                raise BenchError("the flood process did not get ready:\n" + worker.log_tail())
            time.sleep(0.2)
        ready_line = next(ln for ln in out.read_text().splitlines() if ln.startswith("READY"))
        log(f"flood: {ready_line.split()[1]} connections open; probing")
        fds_during = _fd_count(plat.pid)
        under = probe(plat, PROBE_S)
        fds_after_probe = _fd_count(plat.pid)
        worker.popen.wait(hold_s + 30)
        summary = json.loads(out.read_text().splitlines()[-1])
    finally:
        worker.stop()
        with contextlib.suppress(OSError):
            out.unlink()
    p99 = under["p99_ms"]
    log(f"flood: p99 {p99} ms under {n} idle connections (baseline {baseline['p99_ms']} ms)")
    return {
        "connections": n,
        "sources": len(FLOOD_SOURCES),
        "open_at_start": int(ready_line.split()[1]),
        "gateway_fds_during": fds_during,
        "gateway_fds_after_probe": fds_after_probe,
        "flood": summary,
        "baseline": baseline,
        "under_flood": under,
        "p99_ratio": round(p99 / baseline["p99_ms"], 2) if baseline["p99_ms"] else None,
        "goal_p99_ms": P99_GOAL_MS,
        "pass": under["errors"] == 0 and p99 < P99_GOAL_MS,
    }


# ---------------------------------------------------------------------------------------------


def main() -> dict[str, Any]:
    result: dict[str, Any] = {}
    with Platform(idle_timeout=600, label="cumulo (reliability)") as plat:
        plat.deploy(FUNCTIONS_DIR / "echo.py", "echo")
        if plat.invoke("echo", {"warm": True}).status != 200:
            raise BenchError("the echo function does not answer")
        try:
            result["soak"] = soak(plat, SOAK_S, RATE)
        except BenchError as exc:
            result["soak"] = {"error": str(exc)}
        try:
            result["idle"] = idle(plat, IDLE_S)
        except BenchError as exc:
            result["idle"] = {"error": str(exc)}
        try:
            result["flood"] = flood(plat, FLOOD)
        except BenchError as exc:
            result["flood"] = {"error": str(exc)}
    return result


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--flood-worker":
        flood_worker(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        print(json.dumps(main(), indent=1))
