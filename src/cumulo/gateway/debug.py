"""`GET /v1/debug/spans`: the finished spans of `--trace-exporter memory`, for tests.

Test-only: mounted only with the memory exporter (which keeps every span until the process
exits), needs a platform admin key, and is left out of /openapi.json.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from cumulo.errors import NotFound
from cumulo.gateway.auth import principal_of
from cumulo.observability.tracing import Tracing
from cumulo.security.auth import ALL_NAMESPACES


def build_debug_router(tracing: Tracing) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/v1/debug/spans")
    async def spans(request: Request) -> Response:
        principal = principal_of(request.scope)
        principal.require("admin")
        if principal.namespace != ALL_NAMESPACES:
            # Spans carry every namespace's function names and ids: the platform's only.
            raise NotFound("not found", code="not_found")
        body = orjson.dumps({"spans": tracing.finished_spans()})
        return Response(body, media_type="application/json")

    return router
