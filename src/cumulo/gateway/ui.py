"""The web dashboard at /ui/: its built static files and its cookie sessions.

Login trades an API key for a session: `POST /ui/login` checks the key with the
Authenticator and sets `cumulo_session`, an opaque random id (HttpOnly; Secure;
SameSite=Strict; Path=/). The key stays on the server, in memory, under that id for at most
SESSION_TTL_S; every request re-checks it through the Authenticator (an in-memory lookup),
so a revoked or expired key ends its sessions at once, and a session has exactly its key's
scopes. The browser never holds the key (no localStorage or sessionStorage).

CSRF: SameSite=Strict keeps the cookie off cross-site requests; on top of that, a
cookie-authenticated unsafe request must carry `X-Cumulo-CSRF: 1` (a custom header no other
site can send without a CORS preflight, which the gateway never grants) or an Origin equal
to the gateway's own. See `csrf_ok`; the AuthMiddleware enforces it.

The SPA's files are built by `make` from ui/ (npm, Vite) into ui_dist/ next to this module
and ship inside the wheel; they are read into memory once. Hashed files under assets/ are
cached for a year; index.html is revalidated each time.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import mimetypes
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from cumulo.errors import ApiError, BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized
from cumulo.gateway.errors import send_error
from cumulo.security.audit import AuditLog
from cumulo.security.auth import Authenticator, Principal

UI_PREFIX = "/ui"
COOKIE = "cumulo_session"
CSRF_HEADER = b"x-cumulo-csrf"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 10_000
MAX_LOGIN_BYTES = 8192
DIST = Path(__file__).parent / "ui_dist"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IMMUTABLE = b"public, max-age=31536000, immutable"
REVALIDATE = b"no-cache"
_COOKIE_NEEDLE = COOKIE.encode() + b"="
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}


# ---------------------------------------------------------------- sessions
@dataclass(slots=True)
class _Session:
    credential: str  # the key itself: re-checked on every use, never sent back
    key_id: str
    expires_at: float


class SessionStore:
    """Session id → key, in memory (a restart logs everyone out). Ids are looked up by
    their SHA-256, so a lookup's timing says nothing about the id itself."""

    def __init__(
        self,
        authenticator: Authenticator,
        ttl_s: float = SESSION_TTL_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.authenticator = authenticator
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: dict[bytes, _Session] = {}

    def create(self, credential: str) -> tuple[str, Principal, float]:
        """A new session for a valid key: (session id, its principal, expiry)."""
        principal = self.authenticator.authenticate(f"Bearer {credential}")
        now = self.clock()
        self._purge(now)
        if len(self._sessions) >= self.max_sessions:
            # The oldest login goes (dicts keep insertion order).
            del self._sessions[next(iter(self._sessions))]
        session_id = secrets.token_urlsafe(32)
        expires_at = now + self.ttl_s
        self._sessions[_digest(session_id)] = _Session(credential, principal.key_id, expires_at)
        return session_id, principal, expires_at

    def principal(self, session_id: str) -> Principal:
        digest = _digest(session_id)
        session = self._sessions.get(digest)
        if session is None:
            raise Unauthorized("not logged in: the session is unknown", code="invalid_session")
        if session.expires_at <= self.clock():
            del self._sessions[digest]
            raise Unauthorized("the session has expired: log in again", code="session_expired")
        try:
            return self.authenticator.authenticate(f"Bearer {session.credential}")
        except Unauthorized:
            # The key was revoked or expired: the session ends with it.
            self._sessions.pop(digest, None)
            raise Unauthorized(
                "the session's key was revoked or has expired", code="session_expired"
            ) from None

    def expires_at(self, session_id: str) -> float | None:
        session = self._sessions.get(_digest(session_id))
        return session.expires_at if session is not None else None

    def drop(self, session_id: str) -> None:
        self._sessions.pop(_digest(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _purge(self, now: float) -> None:
        """Forget expired sessions and those whose key was revoked (at each login, so the
        keys of sessions nobody uses again do not stay in memory)."""
        for digest in [d for d, s in self._sessions.items() if not self._valid(s, now)]:
            del self._sessions[digest]

    def _valid(self, session: _Session, now: float) -> bool:
        if session.expires_at <= now:
            return False
        try:
            self.authenticator.authenticate(f"Bearer {session.credential}")
        except Unauthorized:
            return False
        return True


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


def session_cookie(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The cumulo_session cookie's value, if the request has one."""
    for name, value in headers:
        if name == b"cookie" and _COOKIE_NEEDLE in value:
            for part in value.split(b";"):
                key, _, val = part.strip().partition(b"=")
                if key == COOKIE.encode() and val:
                    return val.decode("latin-1")
    return None


def csrf_ok(scope: Scope) -> bool:
    """May a cookie-authenticated request do this? Safe methods always; others only with
    the dashboard's custom header or a same-origin Origin."""
    # A WebSocket handshake (no method in its scope) is never "safe": a cross-site page may
    # open one with the cookie, so it needs the same Origin as a write does.
    if scope.get("method") in SAFE_METHODS:
        return True
    origin = host = None
    for name, value in scope["headers"]:
        if name == CSRF_HEADER:
            return bool(value == b"1")
        if name == b"origin":
            origin = value
        elif name == b"host":
            host = value
    if origin is None or host is None:
        return False
    scheme: str = scope.get("scheme", "http")
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)  # the page's own origin
    return bool(origin == scheme.encode() + b"://" + host)


def session_cookie_header(value: str, max_age: int) -> bytes:
    return (
        f"{COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}"
    ).encode()


# ---------------------------------------------------------------- static files
@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    gzipped: bytes | None
    content_type: bytes
    etag: bytes
    cache: bytes


def load_assets(dist: Path = DIST) -> dict[str, _Asset]:
    """Every built file under `dist`, by its path below /ui/ (empty when not built)."""
    assets: dict[str, _Asset] = {}
    if not dist.is_dir():
        return assets
    for path in sorted(dist.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue  # the build stamp
        rel = path.relative_to(dist).as_posix()
        body = path.read_bytes()
        # Fixed types for what Vite emits (the system's mime.types differs between hosts).
        kind = (
            _TYPES.get(path.suffix)
            or mimetypes.guess_type(path.name)[0]
            or "application/octet-stream"
        )
        packed = gzip.compress(body, 9, mtime=0) if len(body) > 1024 else None
        assets[rel] = _Asset(
            body,
            packed if packed is not None and len(packed) < len(body) else None,
            kind.encode(),
            b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"',
            IMMUTABLE if rel.startswith("assets/") else REVALIDATE,
        )
    return assets


# ---------------------------------------------------------------- the /ui app
class UiApp:
    """ASGI app for everything under /ui: the SPA's files, login, logout, whoami."""

    def __init__(
        self,
        sessions: SessionStore,
        on_denied: Callable[[Scope, int], None] | None = None,
        audit: AuditLog | None = None,
        dist: Path = DIST,
    ) -> None:
        self.sessions = sessions
        self.on_denied = on_denied  # a failed login: audited like any 401
        self.audit = audit  # logins and logouts
        self.assets = load_assets(dist)

    def _audit(self, scope: Scope, principal: Principal, action: str) -> None:
        if self.audit is not None:
            client = scope.get("client")
            self.audit.record(
                principal.namespace,
                principal.key_id,
                action,
                scope["path"],
                "ok",
                client[0] if client else None,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._route(scope, receive, send)
        except ApiError as exc:
            await send_error(send, exc)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == UI_PREFIX:
            await _respond(send, 308, b"", [(b"location", b"/ui/")])
            return
        if not path.startswith(UI_PREFIX + "/"):
            raise NotFound(f"{path} not found", code="not_found")
        rel = path[len(UI_PREFIX) + 1 :]
        if rel in ("login", "logout", "session"):
            want = "GET" if rel == "session" else "POST"
            if method != want:
                raise ApiError(f"use {want} {path}", code="method_not_allowed", status=405)
            if want == "POST" and not csrf_ok(scope):
                raise Forbidden("missing the X-Cumulo-CSRF header", code="csrf")
            if rel == "login":
                await self._login(scope, receive, send)
            elif rel == "logout":
                await self._logout(scope, send)
            else:
                await self._whoami(scope, send)
            return
        if method not in ("GET", "HEAD"):
            raise ApiError(
                "the dashboard's files are read-only", code="method_not_allowed", status=405
            )
        await self._static(scope, send, rel or "index.html")

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive, MAX_LOGIN_BYTES)
        try:
            data = orjson.loads(body)
            credential = data["key"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise BadRequest('send {"key": "<API key>"}', code="invalid_request") from None
        if not isinstance(credential, str) or not credential.strip():
            raise BadRequest("the key must be a non-empty string", code="invalid_request")
        try:
            session_id, principal, expires_at = self.sessions.create(credential.strip())
        except ApiError as exc:
            if self.on_denied is not None:
                self.on_denied(scope, exc.status)
            raise
        self._audit(scope, principal, "ui.login")
        cookie = session_cookie_header(session_id, int(self.sessions.ttl_s))
        await _json(send, 200, _whoami(principal, expires_at), [(b"set-cookie", cookie)])

    async def _logout(self, scope: Scope, send: Send) -> None:
        session_id = session_cookie(scope["headers"])
        if session_id is not None:
            with contextlib.suppress(ApiError):  # logging out of an ended session is fine
                self._audit(scope, self.sessions.principal(session_id), "ui.logout")
            self.sessions.drop(session_id)
        await _json(
            send, 200, {"logged_out": True}, [(b"set-cookie", session_cookie_header("", 0))]
        )

    async def _whoami(self, scope: Scope, send: Send) -> None:
        session_id = session_cookie(scope["headers"])
        if session_id is None:
            raise Unauthorized("not logged in", code="invalid_session")
        principal = self.sessions.principal(session_id)
        await _json(send, 200, _whoami(principal, self.sessions.expires_at(session_id)))

    async def _static(self, scope: Scope, send: Send, rel: str) -> None:
        if not self.assets:
            raise NotFound(
                "the dashboard is not built: run `make run` (needs Node.js and npm), "
                "or `npm ci && npm run build` in ui/",
                code="ui_not_built",
            )
        asset = self.assets.get(rel)
        if asset is None:
            raise NotFound(f"no such dashboard file: {rel}", code="not_found")
        headers = [
            (b"content-type", asset.content_type),
            (b"cache-control", asset.cache),
            (b"etag", asset.etag),
            (b"vary", b"accept-encoding"),
        ]
        request = dict(scope["headers"])
        if request.get(b"if-none-match") == asset.etag:
            await _respond(send, 304, b"", headers)
            return
        body = asset.body
        if asset.gzipped is not None and b"gzip" in request.get(b"accept-encoding", b""):
            body = asset.gzipped
            headers.append((b"content-encoding", b"gzip"))
        if scope["method"] == "HEAD":
            headers.append((b"content-length", str(len(body)).encode()))
            body = b""
        await _respond(send, 200, body, headers)


def _whoami(principal: Principal, expires_at: float | None) -> dict[str, Any]:
    return {
        "key_id": principal.key_id,
        "namespace": principal.namespace,
        "scopes": sorted(principal.scopes),
        "expires_at": expires_at,
    }


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the login body is limited to {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _json(
    send: Send, status: int, data: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _respond(
        send, status, orjson.dumps(data), [(b"content-type", b"application/json")] + (headers or [])
    )


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    if not any(k == b"content-length" for k, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
