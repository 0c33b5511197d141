"""Topics: CloudEvents 1.0 published to a topic, fanned out to every subscriber of the topic
in the same namespace through the durable queue.

- A subscription is (namespace, topic, function), taken from the `@cumulo.on` topics of the
  function's newest live version (the control plane reports them after every deploy, traffic
  change, rollback and removal, exactly like cron schedules).
- Publishing one event inserts a dedupe row keyed (namespace, source, id) and one queue job
  per subscriber in ONE transaction: a crash either delivers to every subscriber or to none,
  and the same event published again (a client retry) enqueues nothing new.
- Each job's body is the event in structured JSON form, so a subscriber's handler gets the
  CloudEvent as its `event`; the job runs, retries and dead-letters like an async invocation.

Events arrive over HTTP (structured, binary or batch mode, see `parse_http`) or from a
function's `ctx.publish` (see `function_event`); either way `validate_event` checks them.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import orjson

from cumulo.errors import ApiError, BadRequest, PayloadTooLarge
from cumulo.sdk.on import validate_topic
from cumulo.store.topics import Published as Published  # re-exported: topics_api, service
from cumulo.store.topics import TopicRepository

SPECVERSION = "1.0"
REQUIRED = ("specversion", "id", "source", "type")
OPTIONAL = ("datacontenttype", "dataschema", "subject", "time")
DATA = ("data", "data_base64")
TOPIC_EXTENSION = "topic"
MAX_ATTRIBUTE_LENGTH = 4096
MAX_TOPICS_PER_FUNCTION = 32
MAX_BATCH_EVENTS = 1000
DEFAULT_MAX_EVENT_BYTES = 6 * 1024 * 1024

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"

_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_MEDIA_PART = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"{_MEDIA_PART}/{_MEDIA_PART}\s*(;.*)?", re.DOTALL)
_INT32 = (-(2**31), 2**31 - 1)


# ---------------------------------------------------------------- CloudEvents 1.0
def invalid(message: str, attribute: str | None = None) -> BadRequest:
    details = {"attribute": attribute} if attribute is not None else None
    return BadRequest(f"invalid CloudEvent: {message}", code="invalid_event", details=details)


def _string(event: Mapping[str, Any], name: str) -> str:
    value = event[name]
    if not isinstance(value, str):
        raise invalid(f"attribute {name!r} must be a string", name)
    if not value:
        raise invalid(f"attribute {name!r} must not be empty", name)
    if len(value) > MAX_ATTRIBUTE_LENGTH:
        raise invalid(f"attribute {name!r} is longer than {MAX_ATTRIBUTE_LENGTH} characters", name)
    if not value.isprintable():
        raise invalid(f"attribute {name!r} holds control characters", name)
    return value


def _uri(event: Mapping[str, Any], name: str) -> str:
    value = _string(event, name)
    if any(c.isspace() for c in value):
        raise invalid(f"attribute {name!r} must be a URI-reference (no spaces)", name)
    return value


def check_time(value: str) -> None:
    """RFC 3339 (`2026-03-01T10:05:00Z`, `…00.5+01:00`); ValueError otherwise."""
    if _RFC3339.fullmatch(value) is None:
        raise ValueError(value)
    datetime.fromisoformat(value.upper())  # the calendar: month 13 or 25:00 fail here


def validate_event(raw: object) -> dict[str, Any]:
    """A CloudEvents 1.0 event in JSON form, checked; returned with optional attributes that
    are null dropped (the JSON format treats null as absent). BadRequest naming the first
    offending attribute otherwise."""
    if not isinstance(raw, dict):
        raise invalid("an event must be a JSON object")
    event: dict[str, Any] = {k: v for k, v in raw.items() if v is not None or k in REQUIRED}
    for name in REQUIRED:
        if name not in event:
            raise invalid(f"attribute {name!r} is required", name)
    specversion = event["specversion"]
    if specversion != SPECVERSION:
        raise invalid(
            f"specversion must be {SPECVERSION!r}, not {str(specversion)[:40]!r}", "specversion"
        )
    _string(event, "id")
    _uri(event, "source")
    _string(event, "type")
    if "subject" in event:
        _string(event, "subject")
    if "dataschema" in event:
        _uri(event, "dataschema")
    if "datacontenttype" in event:
        media = _string(event, "datacontenttype")
        if _MEDIA_TYPE.fullmatch(media) is None:
            raise invalid(
                f"datacontenttype {media[:80]!r} is not a media type (type/subtype)",
                "datacontenttype",
            )
    if "time" in event:
        value = _string(event, "time")
        try:
            check_time(value)
        except ValueError:
            raise invalid(
                f"time {value[:80]!r} is not an RFC 3339 timestamp (e.g. 2026-03-01T10:05:00Z)",
                "time",
            ) from None
    if "data" in event and "data_base64" in event:
        raise invalid("give either data or data_base64, not both", "data_base64")
    if "data_base64" in event:
        encoded = event["data_base64"]
        try:
            if not isinstance(encoded, str):
                raise TypeError
            base64.b64decode(encoded, validate=True)
        except (TypeError, ValueError, binascii.Error):
            raise invalid("data_base64 must be a base64 string", "data_base64") from None
    for name, value in event.items():
        if name in REQUIRED or name in OPTIONAL or name in DATA:
            continue
        if _EXTENSION_NAME.fullmatch(name) is None:
            raise invalid(
                f"attribute name {name[:40]!r} is invalid: use 1 to 20 of a-z and 0-9",
                name[:40],
            )
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not _INT32[0] <= value <= _INT32[1]:
                raise invalid(f"extension {name!r} is outside the 32-bit integer range", name)
            continue
        if not isinstance(value, str):
            raise invalid(f"extension {name!r} must be a string, integer or boolean", name)
        if len(value) > MAX_ATTRIBUTE_LENGTH:
            raise invalid(f"extension {name!r} is longer than {MAX_ATTRIBUTE_LENGTH}", name)
    return event


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_media(content_type: str | None) -> bool:
    media = media_type(content_type)
    return media == "application/json" or media.endswith("+json")


def _load_json(body: bytes, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}", code="invalid_json") from None


def parse_structured(body: bytes) -> dict[str, Any]:
    """Structured mode: the whole body is the event."""
    return validate_event(_load_json(body, "the event"))


def parse_batch(body: bytes) -> list[dict[str, Any]]:
    """Batch mode: a JSON array of structured events."""
    events = _load_json(body, "the batch")
    if not isinstance(events, list):
        raise BadRequest("a CloudEvents batch must be a JSON array", code="invalid_event")
    if len(events) > MAX_BATCH_EVENTS:
        raise BadRequest(
            f"a batch holds at most {MAX_BATCH_EVENTS} events, not {len(events)}",
            code="invalid_event",
        )
    checked = []
    for i, raw in enumerate(events):
        try:
            checked.append(validate_event(raw))
        except ApiError as exc:
            raise BadRequest(
                f"event {i}: {exc.message}", code=exc.code, details=exc.details
            ) from None
    return checked


def parse_binary(
    headers: Iterable[tuple[str, str]], content_type: str | None, body: bytes
) -> dict[str, Any]:
    """Binary mode: attributes in `ce-*` headers (percent-encoded), the body is the data and
    Content-Type its datacontenttype. A JSON body becomes `data`, any other `data_base64`;
    without a Content-Type, a body that parses as JSON is JSON data, any other bytes."""
    event: dict[str, Any] = {}
    for name, value in headers:
        lowered = name.lower()
        if not lowered.startswith("ce-"):
            continue
        attribute = lowered[3:]
        if attribute in DATA:
            raise invalid(f"header {lowered} is not allowed: the body is the data", attribute)
        if attribute in event:
            raise invalid(f"header {lowered} is given twice", attribute)
        try:
            event[attribute] = unquote(value, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise invalid(f"header {lowered} is not percent-encoded UTF-8", attribute) from None
    if content_type:
        event["datacontenttype"] = content_type
    if body:
        if is_json_media(event.get("datacontenttype")):
            event["data"] = _load_json(body, "the body (datacontenttype JSON)")
        elif not content_type:
            # The spec reads data without a datacontenttype as application/json: JSON
            # when it parses, else it stays the bytes that were sent.
            try:
                event["data"] = orjson.loads(body)
            except orjson.JSONDecodeError:
                event["data_base64"] = base64.b64encode(body).decode()
        else:
            event["data_base64"] = base64.b64encode(body).decode()
    return validate_event(event)


class UnsupportedMediaType(ApiError):
    status = 415
    default_code = "unsupported_media_type"


def parse_http(
    content_type: str | None, headers: Sequence[tuple[str, str]], body: bytes
) -> tuple[list[dict[str, Any]], bool]:
    """The events of an HTTP request and whether it was a batch; the mode follows the
    CloudEvents HTTP binding: the cloudevents media types are structured (or batch) mode,
    anything with `ce-` headers is binary mode."""
    media = media_type(content_type)
    if media == STRUCTURED:
        return [parse_structured(body)], False
    if media == BATCH:
        return parse_batch(body), True
    if media.startswith("application/cloudevents"):
        raise UnsupportedMediaType(
            f"unsupported event format {media!r}: use {STRUCTURED} or {BATCH}"
        )
    if not any(name.lower().startswith("ce-") for name, _ in headers):
        raise UnsupportedMediaType(
            f"send a CloudEvent: Content-Type {STRUCTURED} (structured mode) or ce-specversion, "
            "ce-id, ce-source and ce-type headers (binary mode)"
        )
    return [parse_binary(headers, content_type, body)], False


def with_topic(event: dict[str, Any], topic: str) -> dict[str, Any]:
    """The event with its `topic` extension set to where it was published."""
    given = event.get(TOPIC_EXTENSION)
    if given is None:
        return {**event, TOPIC_EXTENSION: topic}
    if given != topic:
        raise invalid(
            f"extension 'topic' is {str(given)[:80]!r} but the event is published to {topic!r}",
            TOPIC_EXTENSION,
        )
    return event


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def function_event(
    namespace: str, function: str, args: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """The event `ctx.publish(topic, data, type=, subject=, id=)` sends: its source is the
    publishing function, which the gateway knows (never an argument)."""
    for name in ("type", "subject", "id"):
        value = args.get(name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"publish: {name} must be a string", code="invalid_event")
    topic = validate_topic(args.get("topic"))
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": args.get("id") or str(uuid.uuid4()),
        "source": f"/cumulo/{namespace}/{function}",
        "type": args.get("type") or topic,
        "time": rfc3339(now),
        TOPIC_EXTENSION: topic,
    }
    if args.get("subject") is not None:
        event["subject"] = args["subject"]
    data = args.get("data")
    if isinstance(data, bytes | bytearray):
        event["datacontenttype"] = "application/octet-stream"
        event["data_base64"] = base64.b64encode(data).decode()
    elif data is not None:
        event["datacontenttype"] = "application/json"
        event["data"] = data
    return validate_event(event)


# ---------------------------------------------------------------- the async side
MaxAttempts = Callable[[str, str], Awaitable[int]]


class Topics:
    """Subscriptions and publishing over the topic repository."""

    def __init__(
        self,
        store: TopicRepository,
        max_attempts: MaxAttempts,
        *,
        clock: Callable[[], float],
        on_enqueue: Callable[[], None] = lambda: None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.clock = clock
        self.on_enqueue = on_enqueue
        self.max_event_bytes = max_event_bytes

    async def set(self, namespace: str, function: str, topics: Iterable[str]) -> None:
        """BadRequest for an invalid topic name or too many topics."""
        checked = sorted({validate_topic(t) for t in topics})
        if len(checked) > MAX_TOPICS_PER_FUNCTION:
            raise BadRequest(
                f"a function subscribes to at most {MAX_TOPICS_PER_FUNCTION} topics",
                code="invalid_topic",
            )
        await self.store.set_subscriptions(namespace, function, checked, self.clock())

    async def replace_all(self, entries: Iterable[tuple[str, str, list[str]]]) -> list[str]:
        """Make the stored subscriptions exactly `entries` (start-up: the control plane's view
        wins). Returns one warning line per function whose topics were refused."""
        wanted = {(ns, fn): topics for ns, fn, topics in entries}
        stored = {(s.namespace, s.function) for s in await self.store.subscriptions()}
        for ns, fn in stored - wanted.keys():
            await self.store.set_subscriptions(ns, fn, [], self.clock())
        warnings = []
        for (ns, fn), topics in wanted.items():
            try:
                await self.set(ns, fn, topics)
            except BadRequest as exc:
                warnings.append(f"topics of {ns}/{fn} ignored: {exc.message}")
        return warnings

    async def subscriptions(self, namespace: str) -> dict[str, list[str]]:
        """topic → its subscribing functions, for one namespace."""
        found: dict[str, list[str]] = {}
        for sub in await self.store.subscriptions(namespace):
            found.setdefault(sub.topic, []).append(sub.function)
        return found

    async def publish(
        self, namespace: str, topic: str, events: Sequence[dict[str, Any]]
    ) -> list[Published]:
        """Fan validated events out to the topic's subscribers in `namespace`; committed when
        this returns."""
        validate_topic(topic)
        events = [with_topic(event, topic) for event in events]
        for event in events:
            try:
                size = len(orjson.dumps(event))
            except orjson.JSONEncodeError as exc:  # ctx.publish data, e.g. a map with int keys
                raise BadRequest(f"the event's data is not JSON-serializable: {exc}") from None
            if size > self.max_event_bytes:
                raise PayloadTooLarge(
                    f"the event is {size} bytes; the limit is {self.max_event_bytes} bytes"
                )
        # max_attempts is each subscriber's own setting (read outside the transaction: it
        # awaits the control plane); the transaction re-reads who subscribes.
        subscribers = await self.store.subscribers(namespace, topic)
        attempts = {fn: await self.max_attempts(namespace, fn) for fn in subscribers}
        results = await self.store.publish(namespace, topic, events, attempts, self.clock())
        if any(r.deliveries for r in results):
            self.on_enqueue()
        return results

    async def publish_from_function(
        self, namespace: str, function: str, args: Mapping[str, Any]
    ) -> str:
        """`ctx.publish` (rpc `events.publish`): the event id. The namespace and source are
        the calling worker's, known to the gateway."""
        event = function_event(namespace, function, args, self.clock())
        published = await self.publish(namespace, event[TOPIC_EXTENSION], [event])
        return published[0].id
