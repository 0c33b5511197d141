"""`GET /v1/debug/spans`: the finished spans of `--trace-exporter memory`, for tests.

Test-only: mounted only with the memory exporter (which keeps every span until the process
exits), needs the `admin` scope, and is left out of /openapi.json.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from cumulo.gateway.auth import principal_of
from cumulo.observability.tracing import Tracing


def build_debug_router(tracing: Tracing) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/v1/debug/spans")
    async def spans(request: Request) -> Response:
        principal_of(request.scope).require("admin")
        body = orjson.dumps({"spans": tracing.finished_spans()})
        return Response(body, media_type="application/json")

    return router
