"""Tracing: the settings and span-building units in process, then a real platform with the
memory exporter whose spans the tests read back from `GET /v1/debug/spans`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from cumulo.errors import ConfigError
from cumulo.observability.tracing import (
    CURRENT_INVOCATION,
    Tracing,
    TracingSettings,
    make_tracing,
    traceparent_of,
)
from cumulo.observability.tracing_otel import extract
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.timings import Timings
from cumulo.sdk.spec import FunctionConfig
from tests.conftest import FUNCTIONS, RunningPlatform, start_platform, wait_until

FNS = FUNCTIONS / "tracing_fns.py"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

Span = dict[str, Any]


# ---------------------------------------------------------------- units
def test_settings_validate_and_default_to_off() -> None:
    assert TracingSettings().exporter == "none"
    assert not Tracing().enabled
    assert TracingSettings.from_env({}).exporter == "none"
    env = {"CUMULO_TRACE_EXPORTER": "otlp", "CUMULO_TRACE_ENDPOINT": "http://collector:4318/x"}
    assert TracingSettings.from_env(env).endpoint == "http://collector:4318/x"
    with pytest.raises(ConfigError, match="unknown trace exporter"):
        TracingSettings(exporter="jaeger")
    with pytest.raises(ConfigError, match="only for"):
        TracingSettings(exporter="console", endpoint="http://x")
    with pytest.raises(ConfigError, match="http"):
        TracingSettings(exporter="otlp", endpoint="collector:4318")


def test_invalid_traceparent_starts_a_new_trace() -> None:
    tracing = make_tracing(TracingSettings(exporter="memory"))
    scope = {"method": "POST", "headers": [(b"traceparent", b"00-zz-not-valid")]}
    span = tracing.start_gateway(scope, "iid")
    span.end()
    (finished,) = tracing.finished_spans()
    assert finished["parent_span_id"] is None
    assert finished["trace_id"] != "0" * 32
    assert not trace.get_current_span(extract(None)).get_span_context().is_valid


def test_spans_from_timings_nest_under_the_invocation() -> None:
    tracing = make_tracing(TracingSettings(exporter="memory"))
    spec = VersionSpec("default", "fn", 3, Path("."), "m", "a", "event", FunctionConfig())
    gateway = tracing.start_gateway({"method": "GET", "headers": []}, "iid")
    token = CURRENT_INVOCATION.set(gateway)
    frame: dict[str, Any] = {"id": "iid"}
    try:
        traced = tracing.begin(spec, frame)
    finally:
        CURRENT_INVOCATION.reset(token)
    assert frame["tp"] == traceparent_of(gateway)
    traced.timings = Timings(
        wait_start=100, wait_end=400, waited=True, spawn=(50, 350, True), handler=(500, 900)
    )
    tracing.end(traced, 200, "ok", cold=True)
    gateway.end()
    spans = {s["name"]: s for s in tracing.finished_spans()}
    assert spans["queue wait"]["parent_span_id"] == spans["gateway"]["span_id"]
    assert spans["cold start"]["parent_span_id"] == spans["queue wait"]["span_id"]
    # Started for an earlier waiter: clamped to this invocation's wait.
    assert (spans["cold start"]["start_ns"], spans["cold start"]["end_ns"]) == (100, 350)
    assert spans["handler"]["parent_span_id"] == spans["gateway"]["span_id"]
    assert (spans["handler"]["start_ns"], spans["handler"]["end_ns"]) == (500, 900)
    assert spans["gateway"]["attributes"]["cumulo.version"] == 3


def test_platform_without_an_exporter_adds_nothing(
    platform: RunningPlatform, unique_name: str
) -> None:
    platform.client().deploy(FNS, name=unique_name, handler="tracing_fns.whoami")
    response = platform.client().invoke_raw(unique_name, {}, path="")
    assert response.status_code == 200
    assert "x-cumulo-trace-id" not in response.headers
    assert response.json()["traceparent"] is None


# ---------------------------------------------------------------- the platform
@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUMULO_TRACE_EXPORTER", "memory")
        running = start_platform(tmp_path_factory.mktemp("traced"))
    yield running
    running.stop()


def spans_of(platform: RunningPlatform, trace_id: str) -> list[Span]:
    with platform.http() as http:
        response = http.get("/v1/debug/spans")
    assert response.status_code == 200, response.text
    return [s for s in response.json()["spans"] if s["trace_id"] == trace_id]


def wait_for_spans(platform: RunningPlatform, trace_id: str, *names: str) -> dict[str, Span]:
    """The trace's spans by name, once all of `names` are finished (the gateway span ends
    just after the response goes out)."""
    found: dict[str, Span] = {}

    def ready() -> bool:
        found.clear()
        for span in spans_of(platform, trace_id):
            found.setdefault(span["name"], span)
        return all(n in found for n in names)

    wait_until(ready, 10, f"spans {names} of trace {trace_id}")
    return found


def span_id_of(traceparent: str) -> str:
    return traceparent.split("-")[2]


def test_debug_spans_needs_admin(traced: RunningPlatform) -> None:
    with traced.http() as http:
        key = http.post(
            "/v1/keys", json={"namespace": "default", "scopes": ["read"], "name": "r"}
        ).json()["key"]
        response = http.get("/v1/debug/spans", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 403


def test_http_invocation_continues_the_callers_trace(traced: RunningPlatform) -> None:
    traced.client().deploy(FNS, name="whoami", handler="tracing_fns.whoami")
    with traced.http() as http:
        response = http.post("/fn/default/whoami", json={}, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200, response.text
    assert response.headers["x-cumulo-trace-id"] == TRACE_ID
    seen = response.json()["traceparent"]
    assert seen.split("-")[1] == TRACE_ID

    spans = wait_for_spans(traced, TRACE_ID, "gateway", "handler")
    gateway, handler = spans["gateway"], spans["handler"]
    assert gateway["kind"] == "SERVER"
    assert gateway["parent_span_id"] == PARENT_ID
    assert span_id_of(seen) == gateway["span_id"]  # user code's parent: the invocation span
    attrs = gateway["attributes"]
    assert attrs["cumulo.invocation_id"] == response.headers["x-cumulo-invocation-id"]
    assert (attrs["cumulo.namespace"], attrs["cumulo.function"]) == ("default", "whoami")
    assert attrs["cumulo.version"] == int(response.headers["x-cumulo-version"])
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.route"] == "/fn/{namespace}/{name}"

    assert handler["parent_span_id"] == gateway["span_id"]
    assert handler["attributes"]["cumulo.handler.reported"] is True
    assert gateway["start_ns"] <= handler["start_ns"] <= handler["end_ns"] <= gateway["end_ns"]
    if response.headers["x-cumulo-start"] == "cold":
        wait, cold = spans["queue wait"], spans["cold start"]
        assert wait["parent_span_id"] == gateway["span_id"]
        assert cold["parent_span_id"] == wait["span_id"]
        assert gateway["start_ns"] <= wait["start_ns"] <= wait["end_ns"] <= handler["start_ns"]
        assert wait["start_ns"] <= cold["start_ns"] <= cold["end_ns"] <= wait["end_ns"]


def test_request_handlers_see_the_invocation_span(traced: RunningPlatform) -> None:
    traced.client().deploy(FNS, name="raw", handler="tracing_fns.raw")
    other_trace = "0af7651916cd43dd8448eb211c80319c"
    with traced.http() as http:
        response = http.post(
            "/fn/default/raw",
            content=b"x",
            headers={"traceparent": f"00-{other_trace}-b7ad6b7169203331-01"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["header"] == body["ctx"]
    gateway = wait_for_spans(traced, other_trace, "gateway")["gateway"]
    assert span_id_of(body["header"]) == gateway["span_id"]


def test_service_call_spans_are_in_the_callers_trace(traced: RunningPlatform) -> None:
    client = traced.client()
    client.deploy(FNS, name="callee", handler="tracing_fns.whoami")
    client.deploy(FNS, name="caller", handler="tracing_fns.caller")
    trace_id = "11112222333344445555666677778888"
    with traced.http() as http:
        response = http.post(
            "/fn/default/caller",
            json={"target": "callee"},
            headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    spans = wait_for_spans(traced, trace_id, "gateway", "ctx.call", "invoke")
    gateway, call, callee = spans["gateway"], spans["ctx.call"], spans["invoke"]
    assert call["kind"] == "CLIENT"
    assert call["parent_span_id"] == gateway["span_id"]
    assert call["attributes"]["cumulo.call.target"] == "callee"
    assert callee["kind"] == "SERVER"
    assert callee["parent_span_id"] == call["span_id"]
    assert callee["attributes"]["cumulo.function"] == "callee"
    assert span_id_of(body["callee"]["traceparent"]) == callee["span_id"]
    assert call["start_ns"] <= callee["start_ns"] <= callee["end_ns"] <= call["end_ns"]


def test_async_job_continues_its_enqueue_trace(traced: RunningPlatform) -> None:
    traced.client().deploy(FNS, name="later", handler="tracing_fns.whoami")
    trace_id = "aaaabbbbccccddddeeeeffff00001111"
    with traced.http() as http:
        response = http.post(
            "/async/default/later",
            json={},
            headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"},
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        view: dict[str, Any] = {}

        def done() -> bool:
            view.update(http.get(f"/v1/invocations/{job_id}").json())
            return view.get("status") == "succeeded"

        wait_until(done, 30, f"job {job_id} to succeed")
    spans = wait_for_spans(traced, trace_id, "enqueue", "async job", "queue wait", "handler")
    enqueue, job = spans["enqueue"], spans["async job"]
    assert enqueue["kind"] == "PRODUCER"
    assert enqueue["parent_span_id"] == PARENT_ID
    assert job["kind"] == "CONSUMER"
    assert job["parent_span_id"] == enqueue["span_id"]
    assert {"trace_id": trace_id, "span_id": enqueue["span_id"]} in job["links"]
    assert job["attributes"]["cumulo.job_id"] == job_id
    assert spans["queue wait"]["parent_span_id"] == job["span_id"]
    assert spans["queue wait"]["end_ns"] <= spans["handler"]["start_ns"]
    assert spans["handler"]["parent_span_id"] == job["span_id"]
    assert span_id_of(view["result"]["traceparent"]) == job["span_id"]
