"""The one place where every request is authenticated (ASGI middleware).

Deny by default: only the paths in PUBLIC_PATHS pass without a key. Routes then check
scope and namespace with `Principal.require`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from cumulo.errors import Unauthorized
from cumulo.gateway.errors import send_error
from cumulo.security.auth import Authenticator, Principal

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"})
PRINCIPAL = "cumulo.principal"


class AuthMiddleware:
    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            scope[PRINCIPAL] = self.authenticator.authenticate(authorization)
        except Unauthorized as exc:
            await send_error(send, exc)
            return
        await self.app(scope, receive, send)


def principal_of(scope: Scope) -> Principal:
    principal = scope.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise Unauthorized("missing credentials", code="missing_key")
    return principal
