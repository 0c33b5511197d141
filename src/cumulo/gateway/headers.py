"""Security headers: every response gets them, function responses a smaller set (a
function decides its own content policy)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
FUNCTION_SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
)
API_SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)
# Every API response is data and may load nothing.
STRICT_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
# Swagger UI at /docs (gateway/docs.py): its files come from the gateway itself; the page
# FastAPI writes starts it with one inline script.
DOCS_CSP = (
    b"content-security-policy",
    b"default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'",
)
# The dashboard (/ui/, gateway/ui.py): its own bundled files only, no inline script or style.
UI_CSP = (
    b"content-security-policy",
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'",
)


class SecurityHeaders:
    """Adds the API security headers to every non-invoke response."""

    def __init__(self, app: ASGIApp, tls: bool, skip_prefix: str = "/fn/") -> None:
        self.app = app
        self.skip_prefix = skip_prefix
        extra = [HSTS] if tls else []
        self.headers = [*API_SECURITY_HEADERS, *extra]
        self.strict = [*self.headers, STRICT_CSP]
        self.ui = [*self.headers, UI_CSP]
        self.docs = [*self.headers, DOCS_CSP]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip_prefix):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        add = (
            self.docs
            if path.startswith("/docs")
            else self.ui
            if path.startswith("/ui")
            else self.strict
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in add if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
