"""Anomaly detection: recall and false-positive rate on a synthetic usage trace.

A fixed-seed trace of 60-s windows (compressed: no waiting) over three "days" of a daily
rhythm: 30 API keys in 5 namespaces calling 12 functions at their own rates, with everyday
noise (a few server errors, the odd mistyped key from some address). After the first day
(training only), anomalies of four kinds are injected at random windows:
- credential stuffing: an anonymous source with 40-200 auth failures;
- scraping: a key touching 15-40 functions;
- error storm: a function failing 50-100 % of its calls;
- rate spike: a key calling 8-20x its usual rate.
Every event goes through the gateway's own code path: `Outcome`/`Denial` objects into
`UsageWindows`, closed windows to the real sidecar process (`SidecarClient`: the same
backlog-then-score protocol the platform uses). Recall is over injected anomalies; the
false-positive rate is over the other windows (rows of functions a caller anomaly hit are
counted in neither). Target: recall >= 0.9 at <= 5 % FPR.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from typing import Any

from bench.common import log
from cumulo.ai.sidecar_client import SidecarClient
from cumulo.ai.windows import UsageWindows
from cumulo.observability.outcomes import Denial, Outcome

SEED = 20261125
WINDOWS_PER_DAY = 96
DAYS = 3
KEYS = 30
FUNCTIONS = 12
NAMESPACES = 5
ANOMALIES_PER_KIND = 15
MIN_TRAIN = 50
KINDS = ("credential_stuffing", "scraping", "error_storm", "rate_spike")


class Trace:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.keys = [f"key_{i:012x}" for i in range(KEYS)]
        self.key_ns = {k: f"ns{i % NAMESPACES}" for i, k in enumerate(self.keys)}
        self.rate = {k: rng.lognormvariate(2.5, 0.7) for k in self.keys}  # calls per window
        self.home = {
            k: rng.sample(range(FUNCTIONS), rng.randint(1, 3)) for k in self.keys
        }  # functions a key normally calls

    def fn(self, key: str, index: int) -> tuple[str, str]:
        return self.key_ns[key], f"fn{index}"

    def window(
        self, w: int, usage: UsageWindows, inject: dict[str, Any] | None
    ) -> tuple[set[str], set[str]]:
        """Feed one window's events; returns (anomalous entities, entities hit as
        collateral)."""
        rng = self.rng
        t = w * 60.0
        day = 1 + 0.6 * math.sin(2 * math.pi * w / WINDOWS_PER_DAY)
        anomalous: set[str] = set()
        collateral: set[str] = set()
        spike_key = inject["key"] if inject and inject["kind"] == "rate_spike" else None
        storm_fn = inject["function"] if inject and inject["kind"] == "error_storm" else None
        for key in self.keys:
            mean = self.rate[key] * day
            if key == spike_key:
                mean *= inject["factor"] if inject else 1
            calls = _poisson(rng, mean)
            for _ in range(calls):
                ns, name = self.fn(key, rng.choice(self.home[key]))
                failed = (ns, name) == storm_fn and rng.random() < (
                    inject["error_share"] if inject else 0
                )
                status = 500 if failed or rng.random() < 0.01 else 200
                usage.observe(_outcome(ns, name, key, status, t, rng))
                if key == spike_key:
                    collateral.add(f"{ns}/{name}")
            if rng.random() < 0.03:
                usage.deny(Denial(key, "10.1.0.1", "/v1/keys", 403, t))
        if rng.random() < 0.3:  # someone mistyping a key
            for _ in range(rng.randint(1, 3)):
                usage.deny(Denial(None, f"10.2.0.{rng.randint(1, 20)}", "/fn/x", 401, t))
        if inject is None:
            return anomalous, collateral
        kind = inject["kind"]
        if kind == "credential_stuffing":
            source = f"10.9.{w % 250}.{rng.randint(1, 250)}"
            for _ in range(inject["count"]):
                usage.deny(Denial(None, source, "/fn/ns0/fn0", 401, t))
            anomalous.add(f"source:{source}")
        elif kind == "scraping":
            key = inject["key"]
            for index in rng.sample(range(FUNCTIONS * 4), inject["count"]):
                ns, name = self.key_ns[key], f"fn{index}"
                usage.observe(_outcome(ns, name, key, 200, t, rng))
                collateral.add(f"{ns}/{name}")
            anomalous.add(key)
        elif kind == "error_storm":
            ns, name = inject["function"]
            anomalous.add(f"{ns}/{name}")
        elif kind == "rate_spike":
            anomalous.add(inject["key"])
        return anomalous, collateral


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth for small means, normal approximation above.
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _outcome(ns: str, name: str, key: str, status: int, t: float, rng: random.Random) -> Outcome:
    duration = max(0.001, rng.gauss(0.03, 0.008))
    return Outcome("i", ns, name, 1, status, "ok", False, t, duration, key_id=key)


def plan(rng: random.Random, trace: Trace) -> dict[int, dict[str, Any]]:
    windows = rng.sample(
        range(WINDOWS_PER_DAY + 2, WINDOWS_PER_DAY * DAYS), ANOMALIES_PER_KIND * len(KINDS)
    )
    out: dict[int, dict[str, Any]] = {}
    for i, w in enumerate(windows):
        kind = KINDS[i % len(KINDS)]
        key = rng.choice(trace.keys)
        inject: dict[str, Any] = {"kind": kind, "key": key}
        if kind == "credential_stuffing":
            inject["count"] = rng.randint(40, 200)
        elif kind == "scraping":
            inject["count"] = rng.randint(15, 40)
        elif kind == "error_storm":
            # A busy function of some key: its failures stand out against its traffic.
            inject["function"] = trace.fn(key, trace.home[key][0])
            inject["error_share"] = rng.uniform(0.5, 1.0)
        else:
            inject["factor"] = rng.uniform(8, 20)
        out[w] = inject
    return out


async def evaluate() -> dict[str, Any]:
    rng = random.Random(SEED)
    trace = Trace(rng)
    injections = plan(rng, trace)
    usage = UsageWindows()
    sidecar = SidecarClient(MIN_TRAIN)
    caught = {k: 0 for k in KINDS}
    total = {k: 0 for k in KINDS}
    false_pos = normal = 0
    backlog: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        for w in range(WINDOWS_PER_DAY * DAYS):
            inject = injections.get(w)
            anomalous, collateral = trace.window(w, usage, inject)
            rows = usage.close(trace.key_ns)
            wire = [r.to_wire() for r in rows]
            if w < WINDOWS_PER_DAY:
                backlog += wire
                continue
            if backlog:
                await sidecar.call("observe", {"rows": backlog})
                backlog = []
            verdicts = await sidecar.call("score", {"rows": wire})
            for row, verdict in zip(rows, verdicts, strict=True):
                flagged = bool(verdict["anomalous"])
                if row.entity in anomalous:
                    assert inject is not None
                    total[inject["kind"]] += 1
                    caught[inject["kind"]] += flagged
                elif row.entity in collateral:
                    continue
                else:
                    normal += 1
                    false_pos += flagged
    finally:
        await sidecar.stop()
    positives = sum(total.values())
    recall = sum(caught.values()) / max(1, positives)
    fpr = false_pos / max(1, normal)
    return {
        "recall": round(recall, 3),
        "false_positive_rate": round(fpr, 4),
        "by_kind": {k: f"{caught[k]}/{total[k]}" for k in KINDS},
        "anomalies": positives,
        "normal_windows": normal,
        "false_positives": false_pos,
        "target": "recall >= 0.9 at <= 0.05 FPR",
        "pass": recall >= 0.9 and fpr <= 0.05,
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": SEED,
    }


def main() -> dict[str, Any]:
    result = asyncio.run(evaluate())
    log(f"anomaly: recall {result['recall']}, FPR {result['false_positive_rate']}")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
