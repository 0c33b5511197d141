"""Anomaly detection on usage windows (cumulo.ai.anomaly) and alerts (/v1/alerts)."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import pytest

from cumulo.ai.anomaly import Detector
from tests.conftest import FUNCTIONS, RunningPlatform, wait_until


def normal_rows(rng: random.Random, window: int) -> list[dict[str, Any]]:
    """Ten keys and five functions with a daily-ish rhythm and noise."""
    level = 1.0 + 0.5 * ((window % 24) / 24)
    rows = []
    for k in range(10):
        requests = max(1, int(rng.gauss(20 * level, 4)))
        rows.append(
            {
                "kind": "caller",
                "entity": f"key_{k}",
                "requests": requests,
                "errors": int(rng.random() < 0.1),
                "denials": int(rng.random() < 0.05),
                "distinct": rng.randint(1, 3),
                "latency_ms": rng.gauss(30, 5),
            }
        )
    for f in range(5):
        rows.append(
            {
                "kind": "function",
                "entity": f"ns/fn{f}",
                "requests": max(1, int(rng.gauss(40 * level, 6))),
                "errors": int(rng.random() < 0.2),
                "denials": 0,
                "distinct": rng.randint(1, 4),
                "latency_ms": rng.gauss(30, 5),
            }
        )
    return rows


ANOMALIES = {
    "auth_failures": {"kind": "caller", "requests": 0, "denials": 80, "distinct": 0},
    "many_functions": {"kind": "caller", "requests": 40, "distinct": 30},
    "error_storm": {"kind": "function", "requests": 45, "errors": 40},
    "rate_spike": {"kind": "caller", "requests": 900, "distinct": 2},
}


@pytest.mark.parametrize("reason", sorted(ANOMALIES))
def test_detector_flags_injected_anomalies(reason: str) -> None:
    rng = random.Random(7)
    detector = Detector(min_train=50, seed=0)
    detector.observe([r for w in range(20) for r in normal_rows(rng, w)])
    assert detector.ready("caller")
    assert detector.ready("function")
    false_positives = 0
    for window in range(20, 40):
        rows = normal_rows(rng, window)
        if window == 30:
            injected = {"entity": "key_bad", "errors": 0, "denials": 0, "latency_ms": 30.0}
            injected.update(ANOMALIES[reason])
            if injected["kind"] == "function":
                injected["entity"] = "ns/fn0"
                rows = [r for r in rows if r["entity"] != "ns/fn0"]
            rows.append(injected)
        verdicts = detector.score(rows)
        for row, verdict in zip(rows, verdicts, strict=True):
            if window == 30 and row is rows[-1]:
                assert verdict.anomalous, (reason, verdict)
                assert reason in verdict.reasons
            else:
                false_positives += verdict.anomalous
    assert false_positives <= 6  # of 300 normal windows: <= 2 %


def test_detector_waits_for_history() -> None:
    detector = Detector(min_train=50)
    verdicts = detector.score([{**ANOMALIES["rate_spike"], "entity": "key_x"}])
    assert not verdicts[0].anomalous  # nothing learnt yet: no verdicts, no alerts


# ------------------------------------------------------------------ on a real platform
WINDOW_S = 0.5


def test_auth_failure_burst_raises_a_namespaced_alert(
    fresh_platform: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUMULO_ANOMALY_WINDOW_S", str(WINDOW_S))
    monkeypatch.setenv("CUMULO_ANOMALY_MIN_TRAIN", "20")
    plat: RunningPlatform = fresh_platform()
    admin = plat.client()
    admin.deploy(FUNCTIONS / "kit.py", name="echo", handler="kit.echo")
    plat.client("beta").deploy(FUNCTIONS / "kit.py", name="echo", handler="kit.echo")
    alpha_key = plat.cli("keys", "create", "-n", "alpha", "--scope", "invoke", "--scope", "read")
    beta_key = plat.cli("keys", "create", "-n", "beta", "--scope", "invoke", "--scope", "read")
    assert alpha_key.returncode == 0, alpha_key.stderr
    assert beta_key.returncode == 0, beta_key.stderr
    alpha = _key_of(alpha_key.stdout)
    beta = _key_of(beta_key.stdout)
    plat.client("alpha").deploy(FUNCTIONS / "kit.py", name="echo", handler="kit.echo")
    with (
        httpx.Client(base_url=plat.url, headers={"authorization": f"Bearer {alpha}"}) as a,
        httpx.Client(base_url=plat.url, headers={"authorization": f"Bearer {beta}"}) as b,
        plat.http() as root,
    ):
        # Normal use: each key calls its own function a few times per window.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert a.post("/fn/alpha/echo", json={}).status_code == 200
            assert b.post("/fn/beta/echo", json={}).status_code == 200
            time.sleep(0.05)
        # Then beta's key probes admin routes: a burst of 403s in one window.
        for _ in range(60):
            assert b.get("/v1/keys").status_code == 403

        def beta_alert() -> bool:
            found = root.get("/v1/alerts", params={"namespace": "beta"}).json()["alerts"]
            return any("auth_failures" in x["reasons"] for x in found)

        wait_until(beta_alert, 15, "an auth_failures alert in namespace beta")
        seen_by_beta = b.get("/v1/alerts").json()["alerts"]
        assert any(x["namespace"] == "beta" for x in seen_by_beta)
        assert all(x["namespace"] == "beta" for x in seen_by_beta)
        assert not any(x["namespace"] == "beta" for x in a.get("/v1/alerts").json()["alerts"])
        assert a.get("/v1/alerts", params={"namespace": "beta"}).status_code == 404
        assert b.get("/v1/alerts", params={"limit": 0}).status_code == 400
        since = time.time() + 3600
        assert root.get("/v1/alerts", params={"since": since}).json()["alerts"] == []
    listed = plat.cli("alerts", "-n", "beta", "--since", "10m", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "auth_failures" in listed.stdout
    assert plat.cli("alerts", "--since", "yesterday").returncode == 1
    audit = plat.cli("audit", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    rows = plat.store_query(
        "SELECT actor, target, result, details FROM audit_log "
        "WHERE namespace = 'beta' AND action = 'alert.anomaly'"
    )
    assert rows
    assert rows[0][0] == "cumulo"
    assert rows[0][2] == "raised"
    assert "auth_failures" in "".join(r[3] for r in rows)
    log = plat.log()
    assert "anomaly: caller" in log
    assert alpha not in log
    assert beta not in log


def _key_of(output: str) -> str:
    return next(word for word in output.split() if word.startswith("cmo_"))
