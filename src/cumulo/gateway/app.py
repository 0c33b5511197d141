"""The gateway ASGI app: the invoke fast path beside the FastAPI admin app, behind one
authentication middleware."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import cumulo
from cumulo.ai import embeddings, kserve, openai_models
from cumulo.ai.alerts_api import build_alerts_router
from cumulo.errors import ApiError, BadRequest, Unavailable
from cumulo.events.api import build_router as build_events_router
from cumulo.events.topics_api import build_topics_router
from cumulo.gateway.admin import build_router, metrics_response, validate_namespace
from cumulo.gateway.audit import AuditMiddleware
from cumulo.gateway.auth import AuthMiddleware, principal_of
from cumulo.gateway.dashboard_api import build_dashboard_router
from cumulo.gateway.debug import build_debug_router
from cumulo.gateway.docs import add_docs_routes
from cumulo.gateway.errors import error_headers, internal_error, one_line
from cumulo.gateway.headers import SecurityHeaders
from cumulo.gateway.invoke import PREFIX, InvokeApp
from cumulo.gateway.lambda_api import PREFIX as LAMBDA_PREFIX
from cumulo.gateway.lambda_api import LambdaApp
from cumulo.gateway.platform import Platform
from cumulo.gateway.ui import UI_PREFIX, SessionStore, UiApp
from cumulo.metering.api import build_router as build_metering_router
from cumulo.privacy.api import build_router as build_privacy_router
from cumulo.quantum.api import build_router as build_quantum_router
from cumulo.request_body import reject_lone_surrogates
from cumulo.security.auth import ALL_NAMESPACES
from cumulo.security.ratelimit import Rate


def quantum_namespace(request: Request) -> str:
    """Quantum jobs: `?namespace=` (default: the key's own), `read` to look, `invoke` to run."""
    principal = principal_of(request.scope)
    namespace = request.query_params.get("namespace") or (
        "default" if principal.namespace == ALL_NAMESPACES else principal.namespace
    )
    validate_namespace(namespace)
    principal.require("read" if request.method == "GET" else "invoke", namespace)
    return namespace


def _error(exc: ApiError) -> JSONResponse:
    headers = {k.decode(): v.decode() for k, v in error_headers(exc)}
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def build_admin_app(platform: Platform) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        try:
            yield
        finally:
            await platform.stop()

    app = FastAPI(
        title="cumulo",
        version=cumulo.__version__,
        lifespan=lifespan,
        docs_url=None,  # served from the installed package by add_docs_routes
        redoc_url=None,
        # Once for every route: a lone surrogate in a parameter or body is a 400, not a
        # 500 wherever the text is first encoded.
        dependencies=[Depends(reject_lone_surrogates)],
    )

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(BadRequest(one_line(list(exc.errors())), code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(
            ApiError(
                str(exc.detail), code=codes.get(exc.status_code, "error"), status=exc.status_code
            )
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _error(internal_error(exc, "admin api"))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> dict[str, str]:
        if not platform.ready:
            raise Unavailable("starting", code="not_ready")
        await platform.storage.ping()  # 503 store_unavailable while the database is down
        if not platform.executor.ready():
            raise Unavailable("no worker node is reachable", code="executor_unavailable")
        return {"status": "ready"}

    @app.get("/metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus text (OpenMetrics when asked): `read` scope; a namespace key sees its
        own namespace's series."""
        principal = principal_of(request.scope)
        principal.require("read")
        return await metrics_response(platform, principal, request.headers.get("accept", ""))

    add_docs_routes(app, "cumulo")
    app.state.platform = platform
    app.include_router(build_router())
    app.include_router(build_dashboard_router())
    app.include_router(build_quantum_router(platform.quantum_service, quantum_namespace))
    max_body = platform.options.runtime.max_request_bytes
    app.include_router(
        kserve.build_router(
            platform.control.routes,
            platform.models,
            quantum_namespace,
            lambda: platform.ready,
            max_body,
            lambda ns: platform.control.functions(ns),
        )
    )
    app.include_router(embeddings.build_router(platform.models, quantum_namespace, max_body))
    app.include_router(openai_models.build_router())
    app.include_router(build_alerts_router(platform.insights.alerts))
    app.include_router(build_metering_router(lambda: platform.metering))
    app.include_router(
        build_topics_router(
            platform.events, max_body_bytes=platform.options.runtime.max_request_bytes
        )
    )
    app.include_router(
        build_events_router(
            platform.events,
            platform.function_exists,
            max_body_bytes=platform.options.runtime.max_request_bytes,
            seal_subject=platform.privacy.seal_job,
            open_subject=platform.privacy.open_job,
        )
    )
    app.include_router(build_privacy_router(platform.privacy))
    if platform.tracing.memory is not None:
        app.include_router(build_debug_router(platform.tracing))
    return app


class Gateway:
    """The whole gateway: /fn/ goes straight to authentication and the invoke app (the hot
    path, no other layer); everything else through security headers, the audit trail and
    authentication to FastAPI. Both share the one AuthMiddleware configuration."""

    def __init__(self, platform: Platform) -> None:
        options = platform.options
        key_rate = Rate.parse(options.key_rate) if options.key_rate else None
        limiter = platform.key_limiter  # one bucket per key, whichever path the key uses
        # Dashboard logins: a session cookie authenticates like its key (gateway/ui.py).
        self.sessions = SessionStore(platform.auth)

        def auth(app: ASGIApp) -> AuthMiddleware:
            return AuthMiddleware(
                app,
                platform.auth,
                key_rate,
                limiter,
                on_denied=platform.denied,
                sessions=self.sessions,
            )

        self.invoke = auth(InvokeApp(platform))
        # The AWS Lambda API: SigV4, not bearer keys; it answers and audits its own denials.
        self.lambda_api = LambdaApp(platform)
        # KServe V2 errors leave in the protocol's shape, whichever layer answers them.
        self.admin = kserve.V2Errors(
            SecurityHeaders(
                AuditMiddleware(auth(build_admin_app(platform)), platform.audit, platform.denied),
                tls=options.tls,
            )
        )
        self.ui = SecurityHeaders(
            UiApp(self.sessions, platform.denied, platform.audit), tls=options.tls
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(PREFIX):
            await self.invoke(scope, receive, send)
        elif scope["type"] == "http" and (
            scope["path"] == LAMBDA_PREFIX or scope["path"].startswith(LAMBDA_PREFIX + "/")
        ):
            await self.lambda_api(scope, receive, send)
        elif scope["type"] == "http" and scope["path"].startswith(UI_PREFIX):
            await self.ui(scope, receive, send)
        else:
            await self.admin(scope, receive, send)


def create_app(platform: Platform) -> ASGIApp:
    return Gateway(platform)
