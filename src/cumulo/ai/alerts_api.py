"""`GET /v1/alerts`: anomaly alerts, newest first (read scope).

A tenant key sees its own namespace's alerts only (asking for another answers 404, like
every other namespace probe); the admin key sees all, or one namespace with `?namespace=`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from cumulo.ai.alerts import AlertStore
from cumulo.sdk.spec import validate_name
from cumulo.security.auth import ALL_NAMESPACES, principal_of


def build_alerts_router(alerts: AlertStore) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/alerts")
    async def list_alerts(
        request: Request,
        namespace: Annotated[str | None, Query(max_length=64)] = None,
        since: Annotated[float | None, Query(ge=0, description="epoch seconds")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        principal = principal_of(request.scope)
        if namespace is not None and namespace != ALL_NAMESPACES:
            validate_name(namespace, "namespace")
        if principal.namespace != ALL_NAMESPACES:
            namespace = namespace or principal.namespace
        principal.require("read", namespace if namespace != ALL_NAMESPACES else None)
        if principal.namespace != ALL_NAMESPACES and namespace == ALL_NAMESPACES:
            principal.require("read", ALL_NAMESPACES)  # a tenant never sees platform alerts
        found = await alerts.list(namespace, since, limit)
        return {"alerts": [a.public() for a in found]}

    return router
