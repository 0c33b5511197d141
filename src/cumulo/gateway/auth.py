"""The one place where every request is authenticated (ASGI middleware).

Deny by default: only the paths in PUBLIC_PATHS pass without credentials, and invoke paths
without an Authorization header reach the invoke app as anonymous, which serves them only
for functions deployed `public`. Routes then check scope and namespace with
`Principal.require`. Per-key rate limits are enforced here too, right after authentication.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from cumulo.errors import ApiError, Forbidden, TooManyRequests
from cumulo.gateway.docs import SWAGGER_ASSETS
from cumulo.gateway.errors import send_error, send_ws_error
from cumulo.gateway.ui import SessionStore, csrf_ok, session_cookie
from cumulo.security.auth import PRINCIPAL, Authenticator, principal_of
from cumulo.security.ratelimit import Rate, RateLimiter

__all__ = ["INVOKE_PREFIX", "PRINCIPAL", "PUBLIC_PATHS", "AuthMiddleware", "principal_of"]

PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs",
        *(f"/docs/{name}" for name in SWAGGER_ASSETS),
        "/redoc",
        "/v2/health/live",  # KServe V2 probes (ai/kserve.py)
        "/v2/health/ready",
    }
)
INVOKE_PREFIX = "/fn/"


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        key_rate: Rate | None = None,
        limiter: RateLimiter | None = None,
        on_denied: Callable[[Scope, int], None] | None = None,
        sessions: SessionStore | None = None,
    ) -> None:
        self.app = app
        # Dashboard sessions (gateway/ui.py): a cookie stands for its key when a request
        # has no Authorization header.
        self.sessions = sessions
        # Told of the 401s answered here on invoke paths (the audit middleware skips those).
        self.on_denied = on_denied
        self.authenticator = authenticator
        self.key_rate = key_rate if key_rate is not None and not key_rate.unlimited else None
        self.limiter = limiter or RateLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A WebSocket handshake is an HTTP request: authenticated like one.
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        session = None
        if authorization is None:
            # Bearer requests never get here: the hot path pays nothing for cookies.
            if self.sessions is not None:
                session = session_cookie(scope["headers"])
            if session is None and scope["path"].startswith(INVOKE_PREFIX):
                scope[PRINCIPAL] = None  # anonymous: allowed only for public functions
                await self.app(scope, receive, send)
                return
        try:
            if session is not None and self.sessions is not None:
                principal = self.sessions.principal(session)
                if not csrf_ok(scope):
                    raise Forbidden(
                        "a cookie-authenticated request must send X-Cumulo-CSRF: 1",
                        code="csrf",
                    )
            else:
                principal = self.authenticator.authenticate(authorization)
            if self.key_rate is not None:
                wait = self.limiter.take(principal.key_id, self.key_rate)
                if wait > 0:
                    raise TooManyRequests(
                        "this API key is over its rate limit",
                        code="key_rate_limited",
                        retry_after=wait,
                    )
        except ApiError as exc:
            if self.on_denied is not None and scope["path"].startswith(INVOKE_PREFIX):
                self.on_denied(scope, exc.status)
            if scope["type"] == "websocket":
                await send_ws_error(scope, send, exc)
            else:
                await send_error(send, exc)
            return
        scope[PRINCIPAL] = principal
        await self.app(scope, receive, send)
