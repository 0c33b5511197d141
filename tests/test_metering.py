"""Metering against real `cumulo up` servers: accuracy, bytes, durability across restarts,
the usage API and `cumulo usage` agreeing, tenant scoping, bad queries, pricing files."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import FUNCTIONS, RunningPlatform

METERED = FUNCTIONS / "metered.py"
CPU_S, SLEEP_S = 0.4, 0.3
MEMORY_GB = 256 / 1024  # metered.burn's memory_mb


def deploy(p: RunningPlatform, namespace: str, handler: str = "burn") -> None:
    p.client(namespace).deploy(METERED, handler=f"metered.{handler}", name=handler)


def usage(p: RunningPlatform, key: str | None = None, **params: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key or p.api_key}"}
    return httpx.get(f"{p.url}/v1/usage", params=params, headers=headers, timeout=30)


def total(p: RunningPlatform, namespace: str) -> dict[str, Any]:
    answer = usage(p, namespace=namespace)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()["total"]
    return result


def test_cpu_wall_and_bytes_are_metered_within_10_percent(
    platform: RunningPlatform, unique_name: str
) -> None:
    ns = unique_name
    deploy(platform, ns)
    deploy(platform, ns, "fail")
    c = platform.client(ns)
    c.invoke("burn", {})  # the cold start is not part of what is measured below
    before = total(platform, ns)
    event = {"cpu": CPU_S, "sleep": SLEEP_S, "pad": 2000}
    cpu = wall = 0.0
    sent = received = 0
    for _ in range(3):
        response = c.invoke_raw("burn", event)
        cpu += response.json()["cpu"]
        wall += response.json()["wall"]
        sent += len(orjson.dumps(event))
        received += len(response.content)
    after = total(platform, ns)
    assert after["invocations"] - before["invocations"] == 3
    assert after["errors"] == before["errors"] == 0
    metered_cpu = after["cpu_seconds"] - before["cpu_seconds"]
    assert metered_cpu == pytest.approx(cpu, rel=0.10)
    assert metered_cpu == pytest.approx(3 * CPU_S, rel=0.10)
    metered_gbs = after["gb_seconds"] - before["gb_seconds"]
    assert metered_gbs == pytest.approx(MEMORY_GB * wall, rel=0.10)
    assert metered_gbs >= MEMORY_GB * wall  # the gateway's wall time holds the handler's
    assert after["bytes_in"] - before["bytes_in"] == sent
    assert after["bytes_out"] - before["bytes_out"] == received

    with pytest.raises(Exception, match="metered failure"):
        c.invoke("fail", {})
    failed = total(platform, ns)
    assert failed["invocations"] == after["invocations"] + 1
    assert failed["errors"] == 1


def _cli_rows(text: str, namespace: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.split()[:1] == [namespace]]


def test_usage_api_and_cli_agree_by_function_and_by_hour(
    platform: RunningPlatform, unique_name: str
) -> None:
    ns = unique_name
    deploy(platform, ns)
    deploy(platform, ns, "fail")
    c = platform.client(ns)
    for i in range(4):
        c.invoke("burn", {"cpu": 0.01, "pad": i})
    with pytest.raises(Exception, match="metered failure"):
        c.invoke("fail", {})
    by_function = usage(platform, namespace=ns, by="function").json()
    by_hour = usage(platform, namespace=ns, by="hour").json()
    assert by_function["namespace"] == ns
    assert by_function["by"] == "function"
    assert {r["function"] for r in by_function["rows"]} == {"burn", "fail"}
    assert all("hour" not in r for r in by_function["rows"])
    assert all(r["hour"] % 3600 == 0 for r in by_hour["rows"])
    assert by_function["total"]["invocations"] == by_hour["total"]["invocations"] == 5
    for key in ("gb_seconds", "cpu_seconds", "cost"):
        assert by_function["total"][key] == pytest.approx(by_hour["total"][key])
    prices = by_function["prices"]
    t = by_function["total"]
    expected = t["invocations"] * prices["per_million_invocations"] / 1e6
    expected += (
        t["gb_seconds"] * prices["per_gb_second"] + t["cpu_seconds"] * prices["per_cpu_second"]
    )
    assert t["cost"] == pytest.approx(expected, rel=1e-6)
    assert by_function["currency"] == "USD"

    for by, report, width in (("function", by_function, 9), ("hour", by_hour, 10)):
        shown = platform.cli("usage", "--namespace", ns, "--by", by)
        assert shown.returncode == 0, shown.stderr
        assert "\x1b[" not in shown.stdout  # plain: not a terminal
        rows = _cli_rows(shown.stdout, ns)
        assert len(rows) == len(report["rows"])
        for cells, row in zip(rows, report["rows"], strict=True):
            assert len(cells) == width
            assert cells[1] == row["function"]
            numbers = cells[width - 7 :]
            assert int(numbers[0]) == row["invocations"]
            assert int(numbers[1]) == row["errors"]
            assert float(numbers[2]) == pytest.approx(row["gb_seconds"], abs=1e-6)
            assert float(numbers[3]) == pytest.approx(row["cpu_seconds"], abs=1e-6)
            assert int(numbers[4]) == row["bytes_in"]
            assert int(numbers[5]) == row["bytes_out"]
            assert float(numbers[6]) == pytest.approx(row["cost"], abs=1e-9)
        assert f"cost {report['total']['cost']:.6f} USD" in shown.stdout


def test_usage_is_scoped_to_the_keys_namespace(platform: RunningPlatform, unique_name: str) -> None:
    mine, other = f"{unique_name}-a", f"{unique_name}-b"
    for ns in (mine, other):
        deploy(platform, ns)
        platform.client(ns).invoke("burn", {})
    reader = platform.client(mine).create_key(["read"])["key"]
    invoker = platform.client(mine).create_key(["invoke"])["key"]
    own = usage(platform, reader)
    assert own.status_code == 200, own.text
    assert own.json()["namespace"] == mine
    assert {r["namespace"] for r in own.json()["rows"]} == {mine}
    assert usage(platform, reader, namespace=other).status_code == 404
    refused = usage(platform, reader, namespace="*")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "missing_scope"
    assert usage(platform, invoker, namespace=mine).status_code == 403
    everything = usage(platform, namespace="*")
    assert everything.json()["namespace"] == "*"
    assert {mine, other} <= {r["namespace"] for r in everything.json()["rows"]}
    # The platform admin key without a namespace sees them all as well.
    assert usage(platform).json()["namespace"] == "*"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "bogus"}, "invalid since 'bogus'"),
        ({"until": "yesterday"}, "invalid until 'yesterday'"),
        ({"by": "day"}, "by must be function or hour"),
        ({"since": "1d", "until": "2d"}, "since must be before until"),
        ({"since": "-5"}, "since must not be negative"),
        ({"namespace": "Not_A_Name"}, "invalid namespace"),
    ],
)
def test_bad_usage_queries_are_400(
    platform: RunningPlatform, params: dict[str, str], message: str
) -> None:
    answer = usage(platform, **params)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert message in error["message"]
    assert "\n" not in error["message"]


def test_usage_survives_sigterm_restarts_without_double_counting(
    fresh_platform: Callable[..., RunningPlatform], tmp_path: Path
) -> None:
    first = fresh_platform()
    deploy(first, "default")
    c = first.client()
    for _ in range(5):
        c.invoke("burn", {"pad": 10})
    # No usage read before the stop: only the flush on SIGTERM can have written these.
    assert first.stop(signal.SIGTERM) == 0

    pricing = tmp_path / "prices.toml"
    pricing.write_text("per_million_invocations = 1000000.0\nper_gb_second = 0\n")
    second = fresh_platform("--pricing", str(pricing))
    counted = total(second, "default")
    assert counted["invocations"] == 5
    assert counted["cost"] == pytest.approx(5.0)  # $1 per invocation, nothing else
    assert second.stop(signal.SIGTERM) == 0

    third = fresh_platform()
    again = total(third, "default")
    assert again["invocations"] == 5
    assert again["gb_seconds"] == pytest.approx(counted["gb_seconds"])
    assert third.stop(signal.SIGTERM) == 0

    off = fresh_platform("--no-metering")
    assert off.client().invoke("burn", {}) is not None
    refused = usage(off)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "metering_disabled"


def test_a_bad_pricing_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import CUMULO, free_port

    bad = tmp_path / "prices.toml"
    bad.write_text("per_gb_second = -1\n")
    result = subprocess.run(
        [
            CUMULO,
            "up",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "d"),
            "--pricing",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "per_gb_second must be a number >= 0" in result.stderr
    assert "Traceback" not in result.stderr
