"""HTTP routes for topics.

- `POST /events/{namespace}/{topic}` (scope `invoke`): publish a CloudEvents 1.0 event.
  Structured mode (`Content-Type: application/cloudevents+json`, the event as JSON), binary
  mode (`ce-specversion`, `ce-id`, `ce-source`, `ce-type`, … headers; the body is the data),
  or batch mode (`application/cloudevents-batch+json`, a JSON array of events). 202
  `{"id", "deliveries"}` (batch: `{"events": [...]}`) once every subscriber's job is
  committed; `"duplicate": true` and no new deliveries for an event whose (source, id) was
  published before in the namespace. 400 invalid event (the attribute named), 415 not a
  CloudEvent, 413 over the body limit.
- `GET /v1/namespaces/{namespace}/topics` (scope `read`): each topic with its subscribers.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from cumulo.events.api import DEFAULT_MAX_BODY
from cumulo.events.service import EventsService
from cumulo.events.topics import Published, parse_http
from cumulo.request_body import read_limited
from cumulo.sdk.on import validate_topic
from cumulo.sdk.spec import validate_name
from cumulo.security.auth import principal_of


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _published(result: Published) -> dict[str, Any]:
    data: dict[str, Any] = {"id": result.id, "deliveries": result.deliveries}
    if result.duplicate:
        data["duplicate"] = True
    return data


def build_topics_router(
    service: EventsService, *, max_body_bytes: int = DEFAULT_MAX_BODY
) -> APIRouter:
    router = APIRouter(tags=["topics"])

    @router.post("/events/{namespace}/{topic}", status_code=202)
    async def publish(namespace: str, topic: str, request: Request) -> Response:
        """Publish a CloudEvent to every subscriber of `topic` in `namespace`."""
        principal = principal_of(request.scope)
        validate_name(namespace, "namespace")
        principal.require("invoke", namespace)
        validate_topic(topic)
        body = await read_limited(request, max_body_bytes)
        events, batch = parse_http(
            request.headers.get("content-type"), request.headers.items(), body
        )
        results = await service.publish(namespace, topic, events)
        if batch:
            return _json({"events": [_published(r) for r in results]}, 202)
        return _json(_published(results[0]), 202)

    @router.get("/v1/namespaces/{namespace}/topics")
    async def topics(namespace: str, request: Request) -> Response:
        """The namespace's topics, each with the functions subscribed to it."""
        principal = principal_of(request.scope)
        validate_name(namespace, "namespace")
        principal.require("read", namespace)
        found = await service.topics.subscriptions(namespace)
        return _json(
            {"topics": [{"topic": t, "subscribers": fns} for t, fns in sorted(found.items())]}
        )

    return router
