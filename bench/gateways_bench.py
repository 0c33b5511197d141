"""Several gateways, one store (issue 12): how long a control change takes to reach the
gateway that did not make it.

Two `cumulo up --watch-changes` gateways share one data dir: on SQLite they share its
database too (the SQLite change feed, store/sqlite_changes.py, polled every 100 ms); on
PostgreSQL both run `--db` on one database (its change feed is LISTEN/NOTIFY) and the data
dir gives them the same master.key and keyhash.secret. A function has versions 1 and 2;
each trial moves all traffic to the other version through gateway A and, from the moment A
answers, calls the function on gateway B back to back until B answers with the new version.
The delay is that moment minus A's answer. Trials start at random moments (0-150 ms apart),
so they do not lock onto the SQLite feed's 100 ms poll. Target: p99 <= 200 ms, on each backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.pg import keys_database_for

from bench.common import BenchError, HttpConn, Platform, log, median, percentile, postgres_cluster

TRIALS = 60
GIVE_UP_S = 5.0  # a change not seen by then counts as lost
TARGET_P99_MS = 200.0
FUNCTION = """
import cumulo


@cumulo.function
def who(event, ctx):
    return {"version": ctx.function_version}
"""


def _version(conn: HttpConn, auth: dict[str, str]) -> str:
    response = conn.request("POST", "/fn/default/who", b"{}", auth)
    return response.headers.get("x-cumulo-version", "")


def propagation(trials: int = TRIALS, dsn: str | None = None) -> dict[str, Any]:
    """Two gateways on one data dir; on the PostgreSQL database `dsn` when given."""
    extra = ["--watch-changes"]
    if dsn:
        extra += ["--db", dsn, "--subject-keys-db", keys_database_for(dsn)]
    one = Platform(label="gateway A", extra=extra)
    with one, Platform(label="gateway B", extra=extra, data_dir=one.data_dir) as two:
        src = Path(tempfile.mkdtemp(prefix="cumulo-bench-gw-")) / "who.py"
        src.write_text(FUNCTION)
        one.deploy(src, "who")
        src.write_text(FUNCTION + "\n# version 2\n")
        one.deploy(src, "who")
        a, b = HttpConn(one.url), HttpConn(two.url)
        delays_ms: list[float] = []
        lost = 0
        try:
            for _ in range(20):  # both gateways route and have workers
                _version(b, two.auth)
            jitter = random.Random(12)
            for trial in range(trials):
                # Changes at random moments: back to back they would lock onto the feed's
                # 100 ms poll and always wait a whole period.
                time.sleep(jitter.uniform(0.0, 0.15))
                target = "1" if trial % 2 == 0 else "2"
                body = json.dumps({"weights": {target: 100}}).encode()
                response = a.request(
                    "PUT", "/v1/namespaces/default/functions/who/traffic", body, one.auth
                )
                if response.status != 200:
                    raise RuntimeError(f"traffic change answered {response.status}")
                acked = time.perf_counter()
                while _version(b, two.auth) != target:
                    if time.perf_counter() - acked > GIVE_UP_S:
                        lost += 1
                        break
                else:
                    delays_ms.append((time.perf_counter() - acked) * 1000)
        finally:
            a.close()
            b.close()
    p99 = percentile(delays_ms, 99) if delays_ms else float("nan")
    backend = (
        "postgresql (two gateways, one database, NOTIFY)"
        if dsn
        else "sqlite (two gateways, one data dir)"
    )
    log(
        f"gateways: {backend.split()[0]}: propagation p50 {median(delays_ms):.1f} ms, "
        f"p99 {p99:.1f} ms, lost {lost}"
    )
    return {
        "backend": backend,
        "trials": trials,
        "p50_ms": median(delays_ms) if delays_ms else None,
        "p99_ms": p99,
        "max_ms": max(delays_ms) if delays_ms else None,
        "lost": lost,
        "target_p99_ms": TARGET_P99_MS,
        "pass": bool(delays_ms) and lost == 0 and p99 <= TARGET_P99_MS,
    }


def main() -> dict[str, Any]:
    trials = 20 if os.environ.get("CUMULO_BENCH_QUICK") == "1" else TRIALS
    out: dict[str, Any] = {"propagation": propagation(trials)}
    try:
        with contextlib.ExitStack() as stack:
            cluster = stack.enter_context(postgres_cluster())
            out["propagation_postgresql"] = propagation(trials, cluster.create_database())
    except BenchError as exc:  # no PostgreSQL here: the SQLite row stands alone
        log(f"gateways: PostgreSQL row not measured: {exc}")
        out["propagation_postgresql"] = {"error": str(exc)}
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
