"""The one place where every request is authenticated (ASGI middleware).

Deny by default: only the paths in PUBLIC_PATHS pass without credentials, and invoke paths
without an Authorization header reach the invoke app as anonymous, which serves them only
for functions deployed `public`. Routes then check scope and namespace with
`Principal.require`. Per-key rate limits are enforced here too, right after authentication.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from cumulo.errors import ApiError, TooManyRequests, Unauthorized
from cumulo.gateway.errors import send_error
from cumulo.security.auth import Authenticator, Principal
from cumulo.security.ratelimit import Rate, RateLimiter

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"})
INVOKE_PREFIX = "/fn/"
PRINCIPAL = "cumulo.principal"


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        key_rate: Rate | None = None,
        limiter: RateLimiter | None = None,
        on_denied: Callable[[Scope, int], None] | None = None,
    ) -> None:
        self.app = app
        # Told of the 401s answered here on invoke paths (the audit middleware skips those).
        self.on_denied = on_denied
        self.authenticator = authenticator
        self.key_rate = key_rate if key_rate is not None and not key_rate.unlimited else None
        self.limiter = limiter or RateLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        if authorization is None and scope["path"].startswith(INVOKE_PREFIX):
            scope[PRINCIPAL] = None  # anonymous: allowed only for public functions
            await self.app(scope, receive, send)
            return
        try:
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
            await send_error(send, exc)
            return
        scope[PRINCIPAL] = principal
        await self.app(scope, receive, send)


def principal_of(scope: Scope) -> Principal:
    principal = scope.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise Unauthorized(
            "missing credentials: send Authorization: Bearer <key>", code="missing_key"
        )
    return principal
