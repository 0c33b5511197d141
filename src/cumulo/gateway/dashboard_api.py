"""Admin API routes the dashboard reads: live per-second stats, workers per function and a
page of the audit log. Plain /v1 JSON routes like the rest, usable without the UI."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request

from cumulo.gateway.admin import P, validate_namespace
from cumulo.gateway.auth import principal_of
from cumulo.observability.live_stats import WINDOW_S
from cumulo.security.auth import ALL_NAMESPACES

MAX_AUDIT_PAGE = 500


def build_dashboard_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    def read(request: Request, namespace: str) -> None:
        validate_namespace(namespace)
        principal_of(request.scope).require("read", namespace)

    @router.get("/namespaces/{namespace}/functions/{name}/stats")
    async def stats(
        request: Request,
        namespace: str,
        name: str,
        p: P,
        window: Annotated[int, Query(ge=1, le=WINDOW_S)] = WINDOW_S,
    ) -> dict[str, Any]:
        """Per-second buckets of the last `window` seconds: count, errors, cold starts and
        latency percentiles (p50/p95/p99, from a histogram: within about ±9%)."""
        read(request, namespace)
        await p.control.function(namespace, name)  # 404 for an unknown function
        return {"function": name, **p.live_stats.series(namespace, name, window)}

    @router.get("/namespaces/{namespace}/workers")
    async def workers(request: Request, namespace: str, p: P) -> dict[str, Any]:
        """Worker processes per function now: busy, idle, starting, queued requests."""
        read(request, namespace)
        functions: dict[str, dict[str, Any]] = {}
        for (ns, function, version), pool in sorted(p.executor.pools.items()):
            if ns != namespace:
                continue
            described = pool.describe()
            busy = sum(1 for w in described["workers"] if w["state"] == "busy")
            counts = {
                "busy": busy,
                "idle": len(described["workers"]) - busy,
                "starting": described["starting"],
                "queued": described["queued"],
            }
            entry = functions.setdefault(
                function,
                {"busy": 0, "idle": 0, "starting": 0, "queued": 0, "total": 0, "versions": {}},
            )
            for k, v in counts.items():
                entry[k] += v
            entry["total"] += counts["busy"] + counts["idle"]
            entry["versions"][str(version)] = {**counts, "zygote": described["pid"] is not None}
        return {"namespace": namespace, "functions": functions}

    @router.get("/audit")
    async def audit(
        request: Request,
        p: P,
        namespace: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 50,
        before: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        """The newest audit events of a namespace (default: the key's own; "*" holds the
        platform's, auth failures included), newest first; page with `before` = the last
        seq seen. Admin scope. Details are metadata, redacted when they were recorded."""
        principal = principal_of(request.scope)
        if namespace is None:
            namespace = "default" if principal.namespace == ALL_NAMESPACES else principal.namespace
        if namespace != ALL_NAMESPACES:
            validate_namespace(namespace)
        # Like /v1/audit/verify and /v1/keys: the audit trail is for admins.
        principal.require("admin", namespace)
        await p.audit.flush()
        page = await p.audit.repo.page(namespace, before, limit)
        rows = [
            {
                "seq": r.seq,
                "ts": r.ts,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "result": r.result,
                "source": r.source,
                "details": _details(r.details),
            }
            for r in page
        ]
        return {
            "namespace": namespace,
            "events": rows,
            "next_before": rows[-1]["seq"] if len(rows) == limit and rows[-1]["seq"] > 1 else None,
        }

    return router


def _details(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
