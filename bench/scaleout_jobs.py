"""Issue 12, row 12b: async jobs with two gateways claiming from one queue.

Throughput: two `cumulo up --watch-changes` gateways on one PostgreSQL database (`--db`,
one data dir holding the shared master.key and keyhash.secret), `JOBS` async jobs of the
JSON echo (bench/functions/echo.py) enqueued through both (half the connections each),
measured from the first `POST /async` until the last job's `finished_at`, read back through
`GET /v1/invocations/{id}` as row 4 (bench/async_bench.py, whose client this reuses) does.
Peer, same run: the same on SQLite (two gateways on one data dir). Target: ≥ 2,000 jobs/s
on PostgreSQL. CPU seconds per 1,000 jobs of each gateway process, its workers and the
PostgreSQL server show where the time goes.

Faults: the same two gateways under a bounded, paced load of a function that counts its
runs per job (`ctx.state.incr`); gateway B is SIGKILLed (its whole process group: gateway,
zygotes, workers, as a crashed machine) and restarted, then gateway A. Every job a gateway
answered 202 for must end `succeeded` (0 lost); runs beyond one per job are the duplicate
executions at-least-once delivery allows. An enqueue that hits a dying gateway is counted
as refused (never answered 202), and the load moves to the other gateway.

python -m bench.scaleout_jobs [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pg import keys_database_for

from bench.async_bench import TERMINAL, Conn, _fan_out, _wait_all
from bench.common import (
    FUNCTIONS_DIR,
    BenchError,
    Platform,
    http_request,
    log,
    median,
    postgres_cluster,
    tree_cpu,
)

TARGET_JOBS_PER_S = 2000.0
JOBS = 20_000
ROUNDS = 2
WARMUP_JOBS = 2_000
CONNECTIONS = 32  # in all, half per gateway
WAIT_LIMIT_S = 180.0
FAULT_JOBS = 6_000
FAULT_RATE_PER_S = 400.0  # paced: the load lasts FAULT_JOBS / FAULT_RATE_PER_S seconds
FAULT_SENDERS = 16
FAULT_KILLS = (("B", 0.25), ("A", 0.6))  # (gateway, when: fraction of the load's length)
FAULT_SETTLE_S = 120.0  # every accepted job terminal by then, or it counts as lost
TALLY_CHUNK = 500

COUNTER = """
import cumulo


@cumulo.function(concurrency=1, max_instances=10)
def counter(event: dict, ctx: cumulo.Context) -> dict:
    if "tally" in event:  # read back: runs of each job in [start, stop)
        start, stop = event["tally"]
        return {"runs": [ctx.state.get(f"run:{i}", 0) for i in range(start, stop)]}
    return {"n": event["n"], "runs": ctx.state.incr(f"run:{event['n']}")}
"""


def _quick() -> bool:
    return os.environ.get("CUMULO_BENCH_QUICK") == "1"


# ---------------------------------------------------------------------------------------------
# two gateways on one store


@dataclass
class Pair:
    """Gateways A and B on one data dir (and, for PostgreSQL, one database)."""

    backend: str
    data_dir: Path
    extra: list[str]
    dsn: str | None = None
    postmaster: int | None = None
    gateways: dict[str, Platform] = field(default_factory=dict)
    api_key: str = ""  # the admin key (in the shared data dir's credentials.json)

    def start(self, name: str) -> Platform:
        plat = Platform(
            idle_timeout=600, label=f"gateway {name}", extra=self.extra, data_dir=self.data_dir
        )
        try:
            plat.start()
        except BaseException:
            plat.stop()
            raise
        self.gateways[name] = plat
        self.api_key = self.api_key or plat.api_key
        return plat

    def kill(self, name: str) -> None:
        """SIGKILL gateway `name` and everything in its process group, at once."""
        plat = self.gateways.pop(name)
        with contextlib.suppress(OSError):
            os.killpg(plat.pid, signal.SIGKILL)
        plat.stop()

    def stop(self) -> None:
        for plat in list(self.gateways.values()):
            plat.stop()
        self.gateways.clear()

    def port(self, name: str) -> int:
        return int(self.gateways[name].url.rsplit(":", 1)[1])

    @property
    def auth(self) -> str:
        return f"Bearer {self.api_key}"

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: each gateway process, its children, and PostgreSQL."""
        out: dict[str, float] = {}
        for name, plat in self.gateways.items():
            tree = tree_cpu(plat.pid)
            out[f"gateway {name}"] = tree.pop(plat.pid, 0.0)
            out[f"gateway {name} workers"] = sum(tree.values())
        if self.postmaster is not None:
            out["postgresql"] = sum(tree_cpu(self.postmaster).values())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["bench client"] = usage.ru_utime + usage.ru_stime
        return out


@contextlib.contextmanager
def _pair(backend: str) -> Iterator[Pair]:
    data_dir = Path(tempfile.mkdtemp(prefix="cumulo-bench-12b-"))
    try:
        with contextlib.ExitStack() as stack:
            pair = Pair(backend, data_dir, ["--watch-changes"])
            if backend == "postgresql":
                cluster = stack.enter_context(postgres_cluster())
                pair.dsn = cluster.create_database()
                keys = keys_database_for(pair.dsn)
                pair.extra += ["--db", pair.dsn, "--subject-keys-db", keys]
                pid_file = cluster.datadir / "postmaster.pid"
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pair.postmaster = int(pid_file.read_text().split()[0])
            stack.callback(pair.stop)
            pair.start("A")
            pair.start("B")
            yield pair
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _deploy_everywhere(pair: Pair, path: Path, name: str, probe: bytes) -> None:
    """Deploy through A; wait (bounded) until B serves it too (its change feed)."""
    pair.gateways["A"].deploy(path, name)
    plat = pair.gateways["B"]
    deadline = time.monotonic() + 30
    while True:
        resp = http_request("POST", plat.url + plat.invoke_path(name), probe, plat.auth)
        if resp.status == 200:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"gateway B does not serve {name}: HTTP {resp.status}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# throughput


async def _round(pair: Pair, n: int) -> dict[str, Any]:
    """`n` echo jobs through both gateways; jobs/s from the first enqueue to the last
    finish (the database's finished_at)."""
    auth = pair.auth
    requests = [
        ("POST", "/async/default/echo", json.dumps({"hello": "world", "n": i}).encode())
        for i in range(n)
    ]
    half = CONNECTIONS // 2
    cpu0 = pair.cpu()
    start_wall = time.time()
    t0 = time.perf_counter()
    got = await asyncio.gather(
        _fan_out(pair.port("A"), auth, requests[0::2], half),
        _fan_out(pair.port("B"), auth, requests[1::2], half),
    )
    enqueue_s = time.perf_counter() - t0
    answers = [a for part in got for a in part]
    refused = [a for a in answers if a[0] != 202]
    if refused:
        raise BenchError(f"{len(refused)} enqueues not answered 202, e.g. {refused[0]!r}")
    ids = [json.loads(body)["id"] for _, body in answers]
    await _newest_done(pair, ids[-1])  # then the CPU figures leave out the read-back
    cpu1 = pair.cpu()
    views = await _wait_all(pair.port("A"), auth, ids, CONNECTIONS, WAIT_LIMIT_S)
    failed = [v for v in views if v["status"] != "succeeded"]
    if failed:
        raise BenchError(f"{len(failed)} jobs did not succeed, e.g. {failed[0]}")
    elapsed = max(float(v["finished_at"]) for v in views) - start_wall
    latencies = sorted(float(v["finished_at"]) - float(v["created_at"]) for v in views)
    return {
        "jobs": n,
        "seconds": elapsed,
        "per_s": n / elapsed,
        "enqueue_per_s": n / enqueue_s,
        "queue_latency_p50_ms": latencies[len(latencies) // 2] * 1000,
        "queue_latency_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        # CPU from the first enqueue until the newest job was done (most are by then)
        "cpu_s_per_1000_jobs": {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / n * 1000 for k in cpu1},
    }


async def _newest_done(pair: Pair, job: str) -> None:
    """Poll one job (cheap) until it is terminal, at most WAIT_LIMIT_S."""
    conn = await Conn.open(pair.port("B"))
    deadline = time.monotonic() + WAIT_LIMIT_S
    try:
        while time.monotonic() < deadline:
            status, body = await conn.request("GET", f"/v1/invocations/{job}", b"", pair.auth)
            if status == 200 and json.loads(body)["status"] in TERMINAL:
                return
            await asyncio.sleep(0.02)  # a poll interval, not synchronisation
    finally:
        conn.close()


def throughput(backend: str, jobs: int, rounds: int) -> dict[str, Any]:
    with _pair(backend) as pair:
        _deploy_everywhere(pair, FUNCTIONS_DIR / "echo.py", "echo", b"{}")

        async def measure() -> list[dict[str, Any]]:
            await _round(pair, min(WARMUP_JOBS, jobs))  # workers forked on both gateways
            runs = []
            for r in range(rounds):
                runs.append(await _round(pair, jobs))
                log(
                    f"scaleout_jobs: {backend} round {r + 1}: {runs[-1]['per_s']:,.0f} jobs/s "
                    f"(enqueue {runs[-1]['enqueue_per_s']:,.0f}/s, queue latency p50 "
                    f"{runs[-1]['queue_latency_p50_ms']:.0f} ms)"
                )
            return runs

        runs = asyncio.run(measure())
    cpu_keys = dict.fromkeys(k for r in runs for k in r["cpu_s_per_1000_jobs"])
    return {
        "backend": backend,
        "gateways": 2,
        "jobs": jobs,
        "connections": CONNECTIONS,
        "jobs_per_s": median([r["per_s"] for r in runs]),
        "enqueue_per_s": median([r["enqueue_per_s"] for r in runs]),
        "queue_latency_p50_ms": median([r["queue_latency_p50_ms"] for r in runs]),
        "cpu_s_per_1000_jobs": {
            k: median([r["cpu_s_per_1000_jobs"].get(k, 0.0) for r in runs]) for k in cpu_keys
        },
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------
# faults


@dataclass
class _Load:
    """The paced enqueue of the fault run: job n is due at n / rate seconds."""

    pair: Pair
    total: int
    rate: float
    accepted: dict[int, str] = field(default_factory=dict)  # n -> job id
    refused: int = 0
    moved: int = 0  # enqueues sent to the other gateway because theirs was down
    down: set[str] = field(default_factory=set)
    generation: dict[str, int] = field(default_factory=lambda: {"A": 0, "B": 0})
    t0: float = 0.0

    async def send(self, numbers: Iterator[int]) -> None:
        conns: dict[str, tuple[int, Conn]] = {}
        try:
            for n in numbers:
                delay = self.t0 + n / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing, not synchronisation
                name = "AB"[n % 2]
                if name in self.down or name not in self.pair.gateways:
                    name = "BA"[n % 2]
                    self.moved += 1
                if name in self.down or name not in self.pair.gateways:
                    self.refused += 1
                    continue
                body = json.dumps({"n": n}).encode()
                try:
                    cached = conns.get(name)
                    if cached is None or cached[0] != self.generation[name]:
                        if cached is not None:
                            cached[1].close()
                        conn = await Conn.open(self.pair.port(name))
                        conns[name] = (self.generation[name], conn)
                    status, answer = await asyncio.wait_for(
                        conns[name][1].request("POST", "/async/default/counter", body, self.auth),
                        timeout=10,
                    )
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    TimeoutError,
                    ValueError,
                    IndexError,
                    KeyError,
                ):
                    # the gateway died under this request (or before it): not accepted
                    self.refused += 1
                    conns.pop(name, None)
                    continue
                if status == 202:
                    self.accepted[n] = json.loads(answer)["id"]
                else:
                    self.refused += 1
        finally:
            for _, conn in conns.values():
                conn.close()

    @property
    def auth(self) -> str:
        return self.pair.auth


async def _crash_and_restart(load: _Load, name: str, at_s: float) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, load.t0 + at_s - time.monotonic()))
    pair = load.pair
    killed_at = time.monotonic() - load.t0
    load.down.add(name)
    pair.kill(name)
    log(f"scaleout_jobs: {pair.backend}: SIGKILLed gateway {name} at {killed_at:.1f}s")
    t = time.monotonic()
    plat = await asyncio.to_thread(pair.start, name)
    load.generation[name] += 1
    load.down.discard(name)
    return {
        "gateway": name,
        "killed_at_s": killed_at,
        "back_after_s": time.monotonic() - t,
        "new_pid": plat.pid,
    }


def faults(backend: str, total: int, rate: float) -> dict[str, Any]:
    src = Path(tempfile.mkdtemp(prefix="cumulo-bench-12b-fn-")) / "counter.py"
    src.write_text(COUNTER)
    try:
        with _pair(backend) as pair:
            _deploy_everywhere(pair, src, "counter", json.dumps({"tally": [0, 0]}).encode())
            load = _Load(pair, total, rate)

            async def run() -> dict[str, Any]:
                load.t0 = time.monotonic() + 0.2
                numbers = iter(range(total))  # shared: each sender takes the next
                length = total / rate
                kills = [_crash_and_restart(load, name, f * length) for name, f in FAULT_KILLS]
                senders = [load.send(numbers) for _ in range(FAULT_SENDERS)]
                done = await asyncio.gather(*kills, *senders)
                load_s = time.monotonic() - load.t0
                ids = list(load.accepted.values())
                views = await _settle(pair, ids)
                return {"restarts": done[: len(kills)], "load_s": load_s, "views": views}

            got = asyncio.run(run())
            views: dict[str, dict[str, Any]] = got["views"]
            runs = _tally(pair, total)
    finally:
        shutil.rmtree(src.parent, ignore_errors=True)
    lost = [n for n, job in load.accepted.items() if views[job].get("status") != "succeeded"]
    counts = [runs[n] for n in load.accepted]
    duplicates = sum(max(0, c - 1) for c in counts)
    result = {
        "backend": backend,
        "sent": total,
        "rate_per_s": rate,
        "load_s": got["load_s"],
        "accepted": len(load.accepted),
        "refused": load.refused,
        "moved_to_other_gateway": load.moved,
        "lost": len(lost),
        "lost_examples": lost[:5],
        "duplicate_executions": duplicates,
        "jobs_run_more_than_once": sum(1 for c in counts if c > 1),
        "succeeded_without_a_recorded_run": sum(1 for c in counts if c == 0),
        "restarts": got["restarts"],
        "pass": not lost,
    }
    log(
        f"scaleout_jobs: {backend} faults: {result['accepted']} accepted, {len(lost)} lost, "
        f"{duplicates} duplicate executions, {load.refused} refused"
    )
    return result


async def _settle(pair: Pair, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each accepted job's view once all are terminal (or FAULT_SETTLE_S has passed)."""
    try:
        views = await _wait_all(pair.port("A"), pair.auth, ids, CONNECTIONS, FAULT_SETTLE_S)
    except RuntimeError as exc:  # some never finished: read what they are now
        log(f"scaleout_jobs: {pair.backend}: {exc}")
        answers = await _fan_out(
            pair.port("A"), pair.auth, [("GET", f"/v1/invocations/{i}", b"") for i in ids], 16
        )
        views = [json.loads(body) if status == 200 else {} for status, body in answers]
    return dict(zip(ids, views, strict=True))


def _tally(pair: Pair, total: int) -> list[int]:
    """Runs recorded per job number, read by the counter function itself."""
    plat = pair.gateways["A"]
    out: list[int] = []
    for start in range(0, total, TALLY_CHUNK):
        stop = min(total, start + TALLY_CHUNK)
        resp = plat.invoke("counter", {"tally": [start, stop]}, timeout=120)
        if resp.status != 200:
            raise BenchError(f"tally {start}..{stop}: HTTP {resp.status}: {resp.body[:200]!r}")
        out += [int(x) for x in resp.json()["runs"]]
    return out


# ---------------------------------------------------------------------------------------------


def main() -> dict[str, Any]:
    quick = _quick()
    jobs, rounds = (5_000, 1) if quick else (JOBS, ROUNDS)
    fault_jobs = FAULT_JOBS // 2 if quick else FAULT_JOBS
    out: dict[str, Any] = {"target_jobs_per_s": TARGET_JOBS_PER_S}
    for backend in ("postgresql", "sqlite"):
        for part, fn in (
            ("throughput", lambda b=backend: throughput(b, jobs, rounds)),
            ("faults", lambda b=backend: faults(b, fault_jobs, FAULT_RATE_PER_S)),
        ):
            try:
                out[f"{part}_{backend}"] = fn()
            except Exception as exc:  # one part failing must not lose the others
                why = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                log(f"scaleout_jobs: {part} on {backend} failed: {why}")
                out[f"{part}_{backend}"] = {"error": why}
    pg = out["throughput_postgresql"].get("jobs_per_s")
    lite = out["throughput_sqlite"].get("jobs_per_s")
    if pg is not None:
        out["pass"] = pg >= TARGET_JOBS_PER_S
        if lite:
            out["postgresql_vs_sqlite"] = pg / lite
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    if parser.parse_args().quick:
        os.environ["CUMULO_BENCH_QUICK"] = "1"
    print(json.dumps(main(), indent=2, default=str))
