"""Topics: `@cumulo.on`, CloudEvents 1.0 validation (structured, binary and batch modes),
fan-out through the durable queue with dedupe on a fake clock, the HTTP router in-process,
and the whole path on the real platform (HTTP in both modes and `ctx.publish`)."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import types
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cumulo.errors import ApiError, BadRequest
from cumulo.events.queue import QUEUED, SOURCE_TOPIC, SUCCEEDED
from cumulo.events.service import EventsService
from cumulo.events.topics import (
    function_event,
    parse_binary,
    parse_http,
    validate_event,
    with_topic,
)
from cumulo.events.topics_api import build_topics_router
from cumulo.runtime.loader import found
from cumulo.sdk.decorators import spec_of
from cumulo.sdk.on import TOPICS_ATTR, on, topics_of, validate_topic
from cumulo.sdk.spec import FunctionConfig
from cumulo.store.sqlite_jobs import SQLiteJobQueue, SQLiteJobQueueRepository
from cumulo.store.sqlite_topics import SQLiteTopicStore
from tests.conftest import FUNCTIONS, RunningPlatform, wait_until
from tests.events.test_api import FakeAuth
from tests.events.test_queue import FakeClock, FakeFunction, pump

EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "A234-1234-1234",
    "source": "/mycontext",
    "type": "com.example.someevent",
}


def event(**changes: Any) -> dict[str, Any]:
    return {**EVENT, **changes}


def error_of(call: Callable[[], object]) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        call()
    assert "\n" not in info.value.message
    return info.value


# ---------------------------------------------------------------- @cumulo.on
def test_on_records_topics_and_makes_a_function() -> None:
    @on("orders.created")
    @on("orders.cancelled")
    @on("orders.created")
    def handler(event: dict[str, Any], ctx: Any) -> None: ...

    assert topics_of(handler) == ("orders.created", "orders.cancelled")
    assert spec_of(handler) is not None  # deployable without @cumulo.function
    module = types.ModuleType("m")
    module.handler = handler  # type: ignore[attr-defined]
    assert found(module, "handler").describe()["topics"] == ["orders.created", "orders.cancelled"]


@pytest.mark.parametrize(
    "topic", ["", "Orders", ".orders", "-x", "a b", "a/b", "x" * 129, "é", 3, None]
)
def test_invalid_topic_names_fail_at_decoration(topic: Any) -> None:
    err = error_of(lambda: on(topic))
    assert err.code == "invalid_topic"


def test_valid_topic_names() -> None:
    for topic in ("a", "orders.created", "0-x_y.z", "x" * 128):
        assert validate_topic(topic) == topic


def test_topics_of_ignores_junk() -> None:
    def f() -> None: ...

    setattr(f, TOPICS_ATTR, ("ok", "Not OK", 7))
    assert topics_of(f) == ("ok",)
    setattr(f, TOPICS_ATTR, "ok")
    assert topics_of(f) == ()


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "type"])
def test_each_required_attribute_is_named_when_missing(attribute: str) -> None:
    raw = dict(EVENT)
    del raw[attribute]
    err = error_of(lambda: validate_event(raw))
    assert err.code == "invalid_event"
    assert err.details == {"attribute": attribute}
    assert f"attribute {attribute!r} is required" in err.message


@pytest.mark.parametrize("attribute", ["id", "source", "type", "subject", "dataschema"])
@pytest.mark.parametrize("value", ["", 7, ["x"], "a\x00b"])
def test_string_attributes_must_be_non_empty_strings(attribute: str, value: Any) -> None:
    err = error_of(lambda: validate_event(event(**{attribute: value})))
    assert err.details == {"attribute": attribute}


@pytest.mark.parametrize("version", ["0.3", "1", 1.0, "1.0 ", None])
def test_specversion_must_be_1_0(version: Any) -> None:
    err = error_of(lambda: validate_event(event(specversion=version)))
    assert err.details == {"attribute": "specversion"}


@pytest.mark.parametrize(
    "when",
    [
        "2026-03-01",
        "2026-03-01 10:05:00Z",
        "2026-03-01T10:05:00",
        "2026-13-01T10:05:00Z",
        "2026-03-01T25:05:00Z",
        "2026-03-01T10:05:00+0100",
        "yesterday",
        "2026-03-01T10:05:00Z ",
    ],
)
def test_bad_times(when: str) -> None:
    err = error_of(lambda: validate_event(event(time=when)))
    assert err.details == {"attribute": "time"}
    assert "RFC 3339" in err.message


@pytest.mark.parametrize(
    "when", ["2026-03-01T10:05:00Z", "2026-03-01t10:05:00.123456789z", "1985-04-12T23:20:50+01:00"]
)
def test_good_times(when: str) -> None:
    assert validate_event(event(time=when))["time"] == when


@pytest.mark.parametrize("name", ["Topic", "my_ext", "my-ext", "x" * 21, "ünï", ""])
def test_bad_extension_names(name: str) -> None:
    err = error_of(lambda: validate_event(event(**{name: "v"})))
    assert "attribute name" in err.message


@pytest.mark.parametrize("value", [{"a": 1}, [1], 1.5, 2**31])
def test_bad_extension_values(value: Any) -> None:
    err = error_of(lambda: validate_event(event(ext=value)))
    assert err.details == {"attribute": "ext"}


def test_extensions_nulls_and_data() -> None:
    raw = event(
        traceparent="00-abc",
        n=-(2**31),
        flag=True,
        subject=None,
        x1="v",
        time="2026-03-01T10:05:00Z",
        datacontenttype="application/json; charset=utf-8",
        data={"k": [1, 2]},
    )
    checked = validate_event(raw)
    assert "subject" not in checked  # null is absent in the JSON format
    assert checked["n"] == -(2**31)
    assert checked["data"] == {"k": [1, 2]}
    assert validate_event(event(data_base64="AAEC"))["data_base64"] == "AAEC"


def test_data_rules() -> None:
    both = error_of(lambda: validate_event(event(data=1, data_base64="AA==")))
    assert both.details == {"attribute": "data_base64"}
    assert error_of(lambda: validate_event(event(data_base64="not base64!"))).details == {
        "attribute": "data_base64"
    }
    assert error_of(lambda: validate_event(event(datacontenttype="json"))).details == {
        "attribute": "datacontenttype"
    }
    assert "JSON object" in error_of(lambda: validate_event([EVENT])).message


# ---------------------------------------------------------------- HTTP modes
def test_structured_mode() -> None:
    body = orjson.dumps(event(data={"order": 1}))
    events, batch = parse_http("application/cloudevents+json; charset=utf-8", [], body)
    assert (events, batch) == ([event(data={"order": 1})], False)
    assert error_of(lambda: parse_http("application/cloudevents+json", [], b"{no")).code == (
        "invalid_json"
    )


def test_binary_mode_json_body_is_data() -> None:
    headers = [
        ("CE-SpecVersion", "1.0"),
        ("ce-id", "b-1"),
        ("ce-source", "/shop"),
        ("ce-type", "orders.created"),
        ("ce-subject", "caf%C3%A9%20order"),  # percent-encoded UTF-8, per the HTTP binding
        ("ce-traceparent", "00-1"),
        ("content-type", "application/json"),
        ("x-other", "ignored"),
    ]
    events, batch = parse_http("application/json", headers, b'{"order": 2}')
    assert not batch
    assert events == [
        {
            "specversion": "1.0",
            "id": "b-1",
            "source": "/shop",
            "type": "orders.created",
            "subject": "café order",
            "traceparent": "00-1",
            "datacontenttype": "application/json",
            "data": {"order": 2},
        }
    ]


def test_binary_mode_other_bodies_are_base64() -> None:
    headers = [("ce-specversion", "1.0"), ("ce-id", "b-2"), ("ce-source", "/s"), ("ce-type", "t")]
    got = parse_binary(headers, "text/plain", b"\x00hello")
    assert got["datacontenttype"] == "text/plain"
    assert base64.b64decode(got["data_base64"]) == b"\x00hello"
    assert "data" not in parse_binary(headers, None, b"")


def test_binary_mode_without_a_content_type_reads_json_data_else_bytes() -> None:
    """Regression: a binary-mode event with no Content-Type had its JSON body base64'd;
    the spec reads data with no datacontenttype as application/json."""
    headers = [("ce-specversion", "1.0"), ("ce-id", "b-3"), ("ce-source", "/s"), ("ce-type", "t")]
    as_json = parse_binary(headers, None, b'{"order": 3}')
    assert as_json["data"] == {"order": 3}
    assert "datacontenttype" not in as_json
    assert "data_base64" not in as_json
    as_bytes = parse_binary(headers, None, b"\xffnot json")
    assert base64.b64decode(as_bytes["data_base64"]) == b"\xffnot json"
    assert "data" not in as_bytes


def test_binary_mode_errors() -> None:
    base = [("ce-id", "b"), ("ce-source", "/s"), ("ce-type", "t")]
    assert error_of(lambda: parse_http("application/json", base, b"{}")).details == {
        "attribute": "specversion"
    }
    spec = [("ce-specversion", "1.0"), *base]
    for headers, attribute in [
        ([*spec, ("ce-id", "again")], "id"),
        ([*spec, ("ce-data", "x")], "data"),
        ([*spec, ("ce-bad_name", "x")], "bad_name"),
        ([*spec, ("ce-subject", "%FF")], "subject"),
        ([*spec, ("ce-time", "noon")], "time"),
    ]:
        assert error_of(lambda h=headers: parse_binary(h, None, b"")).details == {  # type: ignore[misc]
            "attribute": attribute
        }
    assert error_of(lambda: parse_binary(spec, "application/json", b"{bad")).code == (
        "invalid_json"
    )


def test_batch_mode() -> None:
    body = orjson.dumps([event(id="1"), event(id="2")])
    events, batch = parse_http("application/cloudevents-batch+json", [], body)
    assert batch
    assert [e["id"] for e in events] == ["1", "2"]
    bad = orjson.dumps([event(id="1"), event(id="")])
    err = error_of(lambda: parse_http("application/cloudevents-batch+json", [], bad))
    assert err.message.startswith("event 1: ")
    assert error_of(
        lambda: parse_http("application/cloudevents-batch+json", [], orjson.dumps(EVENT))
    ).message.endswith("JSON array")


@pytest.mark.parametrize(
    "content_type", ["application/json", None, "text/plain", "application/cloudevents+xml"]
)
def test_not_a_cloudevent_is_415(content_type: str | None) -> None:
    with pytest.raises(ApiError) as info:
        parse_http(content_type, [("x-ce-id", "1")], orjson.dumps(EVENT))
    assert info.value.status == 415
    assert info.value.code == "unsupported_media_type"


def test_topic_extension() -> None:
    assert with_topic(dict(EVENT), "orders")["topic"] == "orders"
    assert with_topic(event(topic="orders"), "orders")["topic"] == "orders"
    assert error_of(lambda: with_topic(event(topic="other"), "orders")).details == {
        "attribute": "topic"
    }


def test_function_event() -> None:
    got = function_event("team", "pub", {"topic": "orders.created", "data": {"a": 1}}, 0.0)
    assert got["source"] == "/cumulo/team/pub"
    assert (got["type"], got["topic"], got["time"]) == (
        "orders.created",
        "orders.created",
        "1970-01-01T00:00:00Z",
    )
    assert (got["datacontenttype"], got["data"]) == ("application/json", {"a": 1})
    raw = function_event(
        "team", "pub", {"topic": "t", "data": b"\x01", "type": "x.y", "id": "e1", "subject": "s"}, 0
    )
    assert (raw["id"], raw["type"], raw["subject"], raw["data_base64"]) == (
        "e1",
        "x.y",
        "s",
        "AQ==",
    )
    assert "data" not in function_event("team", "pub", {"topic": "t"}, 0)
    assert error_of(lambda: function_event("n", "f", {"topic": "T"}, 0)).code == "invalid_topic"
    assert error_of(lambda: function_event("n", "f", {"topic": "t", "id": 5}, 0)).code == (
        "invalid_event"
    )


# ---------------------------------------------------------------- fan-out and dedupe
def run(
    tmp_path: Path,
    scenario: Callable[[EventsService, FakeClock, FakeFunction], Awaitable[Any]],
) -> Any:
    clock = FakeClock()
    fake = FakeFunction()

    async def config_of(ns: str, fn: str) -> FunctionConfig:
        return FunctionConfig(max_attempts=5 if fn == "a" else 2)

    async def main() -> Any:
        service = EventsService(
            SQLiteJobQueueRepository(tmp_path / "cumulo.db"), fake, config_of=config_of, clock=clock
        )
        await service.start(run=False)
        try:
            return await scenario(service, clock, fake)
        finally:
            await service.stop(drain_s=0)

    return asyncio.run(main())


def jobs_in(db: Path) -> list[tuple[str, str, str, int, bytes]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT namespace, function, source, max_attempts, body FROM event_jobs"
            " ORDER BY namespace, function, created_at"
        ).fetchall()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_fan_out_to_every_subscriber_of_the_namespace_once(tmp_path: Path) -> None:
    async def scenario(service: EventsService, clock: FakeClock, fake: FakeFunction) -> None:
        await service.set_topics("shop", "a", ["orders.created", "orders.cancelled"])
        await service.set_topics("shop", "b", ["orders.created"])
        await service.set_topics("other", "c", ["orders.created"])
        assert await service.topics.subscriptions("shop") == {
            "orders.cancelled": ["a"],
            "orders.created": ["a", "b"],
        }
        [first] = await service.publish("shop", "orders.created", [event(data={"n": 1})])
        assert (first.id, first.deliveries, first.duplicate) == (EVENT["id"], 2, False)
        jobs = jobs_in(tmp_path / "cumulo.db")
        assert [(ns, fn, src, attempts) for ns, fn, src, attempts, _ in jobs] == [
            ("shop", "a", SOURCE_TOPIC, 5),
            ("shop", "b", SOURCE_TOPIC, 2),
        ]
        assert orjson.loads(jobs[0][4]) == event(data={"n": 1}, topic="orders.created")

        # The same (source, id) again, even in a batch or with other data: nothing new.
        again = await service.publish("shop", "orders.created", [event(), event(id="new")])
        assert [(p.id, p.deliveries, p.duplicate) for p in again] == [
            (EVENT["id"], 0, True),
            ("new", 2, False),
        ]
        # Same id from another source is another event; another namespace has its own ids.
        other = await service.publish("shop", "orders.created", [event(source="/elsewhere")])
        assert other[0].deliveries == 2
        assert (await service.publish("other", "orders.created", [event()]))[0].deliveries == 1
        assert (await service.publish("shop", "nobody.listens", [event(id="z")]))[0].deliveries == 0

        assert await pump(service) == 7
        assert sorted((ns, fn) for ns, fn, *_ in fake.calls) == [
            ("other", "c"),
            *[("shop", "a")] * 3,
            *[("shop", "b")] * 3,
        ]
        assert all(orjson.loads(body)["specversion"] == "1.0" for *_, body, _ in fake.calls)
        counts = await service.counts()
        assert (counts[SUCCEEDED], counts[QUEUED]) == (7, 0)

    run(tmp_path, scenario)


def test_subscriptions_follow_set_and_replace_all(tmp_path: Path) -> None:
    async def scenario(service: EventsService, clock: FakeClock, fake: FakeFunction) -> None:
        await service.set_topics("shop", "a", ["t1", "t2"])
        await service.set_topics("shop", "a", ["t2"])
        assert await service.topics.subscriptions("shop") == {"t2": ["a"]}
        await service.set_topics("shop", "a", [])
        assert await service.topics.subscriptions("shop") == {}
        with pytest.raises(BadRequest):
            await service.set_topics("shop", "a", ["Bad"])
        with pytest.raises(BadRequest):
            await service.set_topics("shop", "a", [f"t{i}" for i in range(33)])
        await service.set_topics("shop", "gone", ["t1"])
        warnings = await service.topics.replace_all([("shop", "b", ["t1"]), ("shop", "c", ["Bad"])])
        assert warnings == [
            "topics of shop/c ignored: invalid topic 'Bad': use 1 to 128 characters of a-z, "
            "0-9, '.', '_' and '-', starting with a letter or digit (e.g. 'orders.created')"
        ]
        assert await service.topics.subscriptions("shop") == {"t1": ["b"]}

    run(tmp_path, scenario)


def test_dedupe_ids_are_pruned_after_the_retention(tmp_path: Path) -> None:
    async def scenario(service: EventsService, clock: FakeClock, fake: FakeFunction) -> None:
        await service.set_topics("shop", "a", ["t"])
        assert (await service.publish("shop", "t", [event()]))[0].deliveries == 1
        clock.now += service.retention_s - 1
        assert (await service.publish("shop", "t", [event()]))[0].duplicate
        clock.now += 2
        assert await service.topics.store.prune(clock.now - service.retention_s) == 1
        assert (await service.publish("shop", "t", [event()]))[0].deliveries == 1

    run(tmp_path, scenario)


def test_a_failed_publish_commits_nothing(tmp_path: Path) -> None:
    """A failure after the first subscriber's job leaves neither that job nor the dedupe row:
    the retry delivers to everyone."""
    db = tmp_path / "cumulo.db"
    queue = SQLiteJobQueue(db)
    store = SQLiteTopicStore(queue)
    store.set_subscriptions("shop", "a", ["t"], 0.0)
    store.set_subscriptions("shop", "b", ["t"], 0.0)
    real_insert = queue.insert
    calls = 0

    def failing_insert(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real_insert(*args)

    queue.insert = failing_insert  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        store.publish("shop", "t", [event()], {}, 1.0)
    assert jobs_in(db) == []
    queue.insert = real_insert  # type: ignore[method-assign]
    [done] = store.publish("shop", "t", [event()], {}, 2.0)
    assert (done.deliveries, done.duplicate) == (2, False)
    assert [fn for _, fn, *_ in jobs_in(db)] == ["a", "b"]
    assert [a for *_, a, _ in jobs_in(db)] == [FunctionConfig().max_attempts] * 2
    queue.close()


def test_publish_size_limit_and_unserialisable_data(tmp_path: Path) -> None:
    async def scenario(service: EventsService, clock: FakeClock, fake: FakeFunction) -> None:
        service.topics.max_event_bytes = 1000
        with pytest.raises(ApiError) as info:
            await service.publish("shop", "t", [event(data="x" * 1000)])
        assert info.value.status == 413
        with pytest.raises(BadRequest):
            await service.publish_from_function("shop", "f", {"topic": "t", "data": {1: 2}})
        with pytest.raises(BadRequest):
            await service.publish("shop", "Bad", [event()])

    run(tmp_path, scenario)


# ---------------------------------------------------------------- the router, in-process
def test_router(tmp_path: Path) -> None:
    async def scenario(service: EventsService, clock: FakeClock, fake: FakeFunction) -> None:
        await service.set_topics("shop", "a", ["orders.created"])
        app = FastAPI()

        @app.exception_handler(ApiError)
        async def api_error(_: Request, exc: ApiError) -> JSONResponse:
            return JSONResponse(exc.to_dict(), status_code=exc.status)

        app.include_router(build_topics_router(service, max_body_bytes=2048))
        transport = httpx.ASGITransport(app=FakeAuth(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            key = {"x-test-key": "shop/invoke"}
            url = "/events/shop/orders.created"
            structured = {"content-type": "application/cloudevents+json", **key}
            ok = await http.post(url, content=orjson.dumps(EVENT), headers=structured)
            assert (ok.status_code, ok.json()) == (202, {"id": EVENT["id"], "deliveries": 1})
            again = await http.post(url, content=orjson.dumps(EVENT), headers=structured)
            assert again.json() == {"id": EVENT["id"], "deliveries": 0, "duplicate": True}
            binary = {
                **key,
                "ce-specversion": "1.0",
                "ce-id": "bin-1",
                "ce-source": "/s",
                "ce-type": "t",
            }
            got = await http.post(url, json={"x": 1}, headers=binary)
            assert got.json() == {"id": "bin-1", "deliveries": 1}
            batch = await http.post(
                url,
                content=orjson.dumps([event(id="b1"), event(id="b2")]),
                headers={**key, "content-type": "application/cloudevents-batch+json"},
            )
            assert batch.json() == {
                "events": [{"id": "b1", "deliveries": 1}, {"id": "b2", "deliveries": 1}]
            }

            bad = await http.post(url, content=orjson.dumps(event(id="")), headers=structured)
            assert bad.status_code == 400
            assert bad.json()["error"]["attribute"] == "id"
            assert "'id'" in bad.json()["error"]["message"]
            plain = await http.post(url, json=EVENT, headers=key)
            assert plain.status_code == 415
            big = await http.post(url, content=b"x" * 4096, headers=structured)
            assert big.status_code == 413
            topic = await http.post("/events/shop/Bad", content=b"{}", headers=structured)
            assert topic.json()["error"]["code"] == "invalid_topic"
            elsewhere = await http.post(
                url,
                content=orjson.dumps(EVENT),
                headers={**structured, **{"x-test-key": "x/invoke"}},
            )
            assert elsewhere.status_code == 404
            read_only = await http.post(
                url, content=orjson.dumps(EVENT), headers={**structured, "x-test-key": "shop/read"}
            )
            assert read_only.status_code == 403
            anonymous = await http.post(url, content=orjson.dumps(EVENT))
            assert anonymous.status_code == 401

            listing = await http.get(
                "/v1/namespaces/shop/topics", headers={"x-test-key": "shop/read"}
            )
            assert listing.json() == {"topics": [{"topic": "orders.created", "subscribers": ["a"]}]}
        assert len(jobs_in(tmp_path / "cumulo.db")) == 4

    run(tmp_path, scenario)


# ---------------------------------------------------------------- the real platform
TOPIC_FNS = FUNCTIONS / "topic_fns.py"


def received(platform: RunningPlatform, ns: str, name: str) -> dict[str, Any]:
    answer = platform.client(ns).invoke_raw(name, {"count": True})
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


@pytest.fixture
def shops(platform: RunningPlatform, unique_name: str) -> Iterator[tuple[str, str]]:
    """Two namespaces: `a` and `b` subscribe to orders.created in the first, `a` in the
    second; `pub` publishes in the first."""
    first, second = f"a{unique_name}"[:63], f"b{unique_name}"[:63]
    platform.client(first).deploy(TOPIC_FNS, name="a", handler="topic_fns.sub_a")
    platform.client(first).deploy(TOPIC_FNS, name="b", handler="topic_fns.sub_b")
    platform.client(first).deploy(TOPIC_FNS, name="pub", handler="topic_fns.publisher")
    platform.client(second).deploy(TOPIC_FNS, name="a", handler="topic_fns.sub_a")
    yield first, second
    with platform.http() as http:  # (a test may have removed some already: 404 is fine)
        for ns, names in ((first, ("a", "b", "pub")), (second, ("a",))):
            for name in names:
                http.delete(f"/v1/namespaces/{ns}/functions/{name}")


def wait_received(platform: RunningPlatform, ns: str, name: str, event_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def arrived() -> bool:
        seen.update(received(platform, ns, name))
        return event_id in seen["counts"]

    wait_until(arrived, 30, f"{ns}/{name} to receive {event_id} (last: {seen})")
    return seen


def test_topics_on_the_platform(platform: RunningPlatform, shops: tuple[str, str]) -> None:
    first, second = shops
    with platform.http() as http:
        listing = http.get(f"/v1/namespaces/{first}/topics").json()
        assert listing == {
            "topics": [
                {"topic": "orders.cancelled", "subscribers": ["b"]},
                {"topic": "orders.created", "subscribers": ["a", "b"]},
            ]
        }
        url = f"/events/{first}/orders.created"
        structured = event(id="s-1", data={"order": 1})
        answer = http.post(
            url,
            content=orjson.dumps(structured),
            headers={"content-type": "application/cloudevents+json"},
        )
        assert (answer.status_code, answer.json()) == (202, {"id": "s-1", "deliveries": 2})
        binary = {"ce-specversion": "1.0", "ce-id": "b-1", "ce-source": "/shop", "ce-type": "x"}
        answer = http.post(url, json={"order": 2}, headers=binary)
        assert (answer.status_code, answer.json()) == (202, {"id": "b-1", "deliveries": 2})
        # A client retry of the structured event: accepted, delivered to nobody again.
        again = http.post(
            url,
            content=orjson.dumps(structured),
            headers={"content-type": "application/cloudevents+json"},
        )
        assert again.json() == {"id": "s-1", "deliveries": 0, "duplicate": True}

        bad = http.post(
            url,
            content=orjson.dumps(event(time="tomorrow")),
            headers={"content-type": "application/cloudevents+json"},
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["attribute"] == "time"
        missing = http.post(url, content=b"{}", headers={"ce-specversion": "1.0"})
        assert (missing.status_code, missing.json()["error"]["attribute"]) == (400, "id")
        assert http.post(url, json=EVENT).status_code == 415
        assert http.post(url, content=b"x" * (1024 * 1024 + 1), headers=binary).status_code == 413

    published = platform.client(first).invoke("pub", {"data": {"order": 3}, "subject": "o-3"})
    assert published["source"] == f"/cumulo/{first}/pub"
    refused = platform.client(first).invoke("pub", {"topic": "Not A Topic"})
    assert "invalid topic" in refused["error"]

    for name in ("a", "b"):
        got = wait_received(platform, first, name, published["id"])
        for event_id in ("s-1", "b-1"):
            got = wait_received(platform, first, name, event_id)
        assert got["counts"] == {"s-1": 1, "b-1": 1, published["id"]: 1}
        events = got["events"]
        assert events["s-1"] == {**structured, "topic": "orders.created"}
        assert events["b-1"]["data"] == {"order": 2}
        assert events["b-1"]["datacontenttype"] == "application/json"
        assert events[published["id"]]["source"] == f"/cumulo/{first}/pub"
        assert events[published["id"]]["subject"] == "o-3"
        assert events[published["id"]]["data"] == {"order": 3}
    # The other namespace's subscriber got none of it...
    assert received(platform, second, "a")["counts"] == {}
    # ...and gets its own namespace's events only.
    with platform.http() as http:
        answer = http.post(
            f"/events/{second}/orders.created",
            content=orjson.dumps(event(id="s-1")),
            headers={"content-type": "application/cloudevents+json"},
        )
        assert answer.json() == {"id": "s-1", "deliveries": 1}
    assert wait_received(platform, second, "a", "s-1")["counts"] == {"s-1": 1}
    assert set(received(platform, first, "a")["counts"]) == {"s-1", "b-1", published["id"]}


def test_subscriptions_follow_the_live_version(
    platform: RunningPlatform, shops: tuple[str, str]
) -> None:
    first, _ = shops
    with platform.http() as http:
        # `a` redeployed from the publisher's code: no longer subscribed; rm drops `b`.
        platform.client(first).deploy(TOPIC_FNS, name="a", handler="topic_fns.publisher")

        def topics() -> list[dict[str, Any]]:
            return list(http.get(f"/v1/namespaces/{first}/topics").json()["topics"])

        assert topics() == [
            {"topic": "orders.cancelled", "subscribers": ["b"]},
            {"topic": "orders.created", "subscribers": ["b"]},
        ]
        assert http.post(f"/v1/namespaces/{first}/functions/a/rollback").status_code == 200
        assert {"topic": "orders.created", "subscribers": ["a", "b"]} in topics()
        http.delete(f"/v1/namespaces/{first}/functions/b")
        assert topics() == [{"topic": "orders.created", "subscribers": ["a"]}]
