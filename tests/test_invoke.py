"""Deploy and invoke against a real platform: the happy paths."""

from __future__ import annotations

import sys

import httpx

from cumulo import __version__
from cumulo.client import Client
from tests.conftest import FUNCTIONS, RunningPlatform, wait_until

KIT = FUNCTIONS / "kit.py"


def test_deploy_then_invoke_returns_the_functions_json(client: Client, unique_name: str) -> None:
    result = client.deploy(KIT, name=unique_name, handler="kit.echo")
    assert result["version"] == 1
    assert result["traffic"] == {"1": 100}
    assert client.invoke(unique_name, {"a": [1, 2], "b": "ü"}) == {"a": [1, 2], "b": "ü"}


def test_get_passes_the_query_as_the_event(platform: RunningPlatform, unique_name: str) -> None:
    platform.client().deploy(KIT, name=unique_name, handler="kit.echo")
    with platform.http() as http:
        response = http.get(f"/fn/default/{unique_name}", params={"x": "1", "y": "two"})
    assert response.status_code == 200
    assert response.json() == {"x": "1", "y": "two"}


def test_first_call_is_cold_and_the_next_is_warm(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    client.deploy(KIT, name=unique_name, handler="kit.whoami")
    first = client.invoke_raw(unique_name, {})
    second = client.invoke_raw(unique_name, {})
    assert first.headers["x-cumulo-start"] == "cold"
    assert second.headers["x-cumulo-start"] == "warm"
    assert first.json()["pid"] == second.json()["pid"]
    records = client.invocations(unique_name)
    by_id = {r["id"]: r for r in records}
    assert by_id[first.headers["x-cumulo-invocation-id"]]["start"] == "cold"
    assert by_id[second.headers["x-cumulo-invocation-id"]]["start"] == "warm"


def test_state_is_per_function_and_versioned(client: Client, unique_name: str) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.state_ops")
    result = client.invoke(unique_name, {})
    assert result["first"] == 1
    assert result["second"] == 2
    assert result["value"] == {"a": 2}
    assert result["missing"] == "default"
    assert "not the expected version 1" in result["conflict"]
    assert result["users"] == ["user:1", "user:2"]
    assert result["deleted"] is True
    assert result["after_delete"] == ["user:2"]


def test_state_survives_new_versions_and_is_not_shared(client: Client, unique_name: str) -> None:
    other = unique_name + "-other"
    client.deploy(KIT, name=unique_name, handler="kit.counter")
    client.deploy(KIT, name=other, handler="kit.counter")
    assert client.invoke(unique_name, {})["n"] == 1
    assert client.invoke(unique_name, {})["n"] == 2
    newer = client.deploy(KIT, name=unique_name, handler="kit.counter", env={"DEPLOY": "2"})
    assert newer["version"] == 2
    assert client.invoke(unique_name, {})["n"] == 3
    assert client.invoke(other, {})["n"] == 1


def test_logs_and_prints_are_kept_with_the_invocation_id(client: Client, unique_name: str) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.talk")
    response = client.invoke_raw(unique_name, {"order": 42})
    iid = response.headers["x-cumulo-invocation-id"]
    lines = client.logs(unique_name)
    assert [(line["level"], line["message"]) for line in lines] == [
        ("info", "structured line"),
        ("stdout", "a printed line"),
    ]
    assert all(line["invocation_id"] == iid for line in lines)
    assert lines[0]["fields"] == {"order": 42}


def test_secrets_reach_only_functions_that_declare_them(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    client.set_secret("API_TOKEN", "s3cr3t-value")
    client.set_secret("OTHER", "not-for-you")
    client.deploy(KIT, name=unique_name, handler="kit.secret")
    assert client.invoke(unique_name, {}) == {"token": "s3cr3t-value", "undeclared": False}
    listed = client.secrets()
    assert {"API_TOKEN", "OTHER"} <= {s["name"] for s in listed}
    assert "s3cr3t-value" not in str(listed)


def test_raw_request_handler_gets_method_path_query_and_body(
    platform: RunningPlatform, unique_name: str
) -> None:
    platform.client().deploy(KIT, name=unique_name, handler="kit.raw")
    with platform.http() as http:
        response = http.put(
            f"/fn/default/{unique_name}/orders/7", params={"q": "1"}, content=b"plain text"
        )
    assert response.status_code == 201
    assert response.headers["x-custom"] == "yes"
    assert response.json() == {
        "method": "PUT",
        "path": "/orders/7",
        "query": {"q": "1"},
        "body": "plain text",
        "has_auth": False,
    }


def test_lambda_style_handler_deploys_unchanged(
    platform: RunningPlatform, unique_name: str
) -> None:
    # raw: the JSON body as the event (an `(event, context)` handler's default is API
    # Gateway's v2 event: tests/aws/test_lambda_door.py).
    platform.client().deploy(KIT, name=unique_name, handler="kit.aws", event_format="raw")
    with platform.http() as http:
        response = http.post(f"/fn/default/{unique_name}", json={"name": "ada"})
    assert response.status_code == 202
    assert response.headers["content-type"] == "text/plain"
    assert response.text.startswith("hello ada (")


def test_async_handler(client: Client, unique_name: str) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.async_echo")
    assert client.invoke(unique_name, {"x": 1}) == {"async": True, "x": 1}


def test_env_from_deploy_reaches_the_function(client: Client, unique_name: str) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.whoami", env={"GREETING": "hi"})
    assert client.invoke(unique_name, {})["env"] == {"GREETING": "hi"}


def test_concurrent_calls_spread_over_workers_up_to_max_instances(
    platform: RunningPlatform, unique_name: str
) -> None:
    platform.client().deploy(KIT, name=unique_name, handler="kit.sleepy", max_instances=3)
    import concurrent.futures

    def call(_: int) -> int:
        with platform.http() as http:
            response = http.post(f"/fn/default/{unique_name}", json={"s": 0.3})
            assert response.status_code == 200, response.text
            return int(response.json()["pid"])

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        pids = set(pool.map(call, range(9)))
    assert 2 <= len(pids) <= 3


def test_concurrency_setting_lets_one_worker_take_parallel_calls(
    platform: RunningPlatform, unique_name: str
) -> None:
    platform.client().deploy(
        KIT, name=unique_name, handler="kit.sleepy", concurrency=4, max_instances=1
    )
    import concurrent.futures

    def call(_: int) -> int:
        with platform.http() as http:
            return int(http.post(f"/fn/default/{unique_name}", json={"s": 0.2}).json()["pid"])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pids = set(pool.map(call, range(4)))
    assert len(pids) == 1


def test_scale_to_zero_and_back(platform: RunningPlatform, unique_name: str) -> None:
    client = platform.client()
    client.deploy(KIT, name=unique_name, handler="kit.whoami")
    first = client.invoke_raw(unique_name, {})
    assert first.headers["x-cumulo-start"] == "cold"

    def workers() -> int:
        return sum(len(z["workers"]) for z in client.workers(unique_name))

    assert workers() == 1
    wait_until(lambda: workers() == 0, 10, "the idle worker to be reaped")
    again = client.invoke_raw(unique_name, {})
    assert again.headers["x-cumulo-start"] == "cold"
    assert again.json()["pid"] != first.json()["pid"]
    wait_until(lambda: client.workers(unique_name) == [], 15, "the zygote to be reaped")


def test_min_instances_keeps_a_worker_warm(platform: RunningPlatform, unique_name: str) -> None:
    client = platform.client()
    client.deploy(KIT, name=unique_name, handler="kit.whoami", min_instances=1)

    def workers() -> int:
        return sum(len(z["workers"]) for z in client.workers(unique_name))

    wait_until(lambda: workers() == 1, 10, "the min_instances worker")
    assert client.invoke_raw(unique_name, {}).headers["x-cumulo-start"] == "warm"


def test_metrics_count_invocations_and_cold_starts(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    client.deploy(KIT, name=unique_name, handler="kit.echo")
    client.invoke(unique_name, {})
    client.invoke(unique_name, {})
    with platform.http() as http:
        text = http.get("/metrics").text
    assert (
        f'cumulo_invocations_total{{code="200",function="{unique_name}",namespace="default"}} 2.0'
        in text
    )
    assert f'cumulo_cold_starts_total{{function="{unique_name}",namespace="default"}} 1.0' in text
    assert "cumulo_invocation_duration_seconds_bucket" in text
    assert "cumulo_workers{" in text


def test_metrics_carry_the_process_the_build_and_the_async_queue(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    client.deploy(KIT, name=unique_name, handler="kit.boom")
    with platform.http() as http:
        assert http.post(f"/async/default/{unique_name}", json={}).status_code == 202
        text = http.get("/metrics").text
    assert (
        f'cumulo_build_info{{python="{sys.version.split()[0]}",version="{__version__}"}} 1.0'
        in text
    )
    assert "\nprocess_resident_memory_bytes " in text
    assert "\nprocess_open_fds " in text
    assert 'cumulo_async_jobs{status="queued"}' in text
    assert "\ncumulo_dead_letters " in text


def test_metrics_speak_openmetrics_when_asked(platform: RunningPlatform) -> None:
    with platform.http() as http:
        response = http.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
        plain = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert "# TYPE cumulo_invocations counter" in response.text
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_a_namespace_key_sees_none_of_the_platform_series(
    platform: RunningPlatform, unique_name: str
) -> None:
    key = platform.client(unique_name).create_key(["read"], name=unique_name)["key"]
    response = httpx.get(f"{platform.url}/metrics", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200
    for platform_series in ("process_", "cumulo_build_info", "cumulo_async_jobs"):
        assert platform_series not in response.text


def test_health_endpoints_need_no_key(platform: RunningPlatform) -> None:
    assert httpx.get(f"{platform.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{platform.url}/readyz").status_code == 200
    assert (
        "/v1/namespaces/{namespace}/deploy"
        in httpx.get(f"{platform.url}/openapi.json").json()["paths"]
    )
