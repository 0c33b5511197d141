"""Audit of what goes through the gateway: every admin action and every auth failure.

An ASGI middleware outside authentication, so it sees the 401s the auth middleware
answers itself, and reads the principal that middleware left in the scope. It records
metadata only (who, what path, result, from where), never a body.

Durability: an admin action's answer is held until the audit buffer (its own row and any
the action recorded, e.g. privacy receipts) is committed, so a crash after the client saw
a 200 never loses the record of an action that persisted.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cumulo.errors import Unavailable
from cumulo.gateway.auth import INVOKE_PREFIX, PRINCIPAL
from cumulo.gateway.errors import send_error
from cumulo.security.audit import AuditLog
from cumulo.security.auth import ALL_NAMESPACES, Principal

CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# High-volume data-plane calls are invocations, recorded as such, not admin actions.
NOT_ADMIN_PREFIXES = ("/fn/", "/async/", "/v1/quantum/")
AUTH_FAILURES = frozenset({401, 403})


class AuditMiddleware:
    def __init__(
        self, app: ASGIApp, audit: AuditLog, on_denied: Callable[[Scope, int], None]
    ) -> None:
        self.app = app
        self.audit = audit
        self.on_denied = on_denied  # records the denial (and tells its observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(INVOKE_PREFIX):
            # The invoke path reports its own denials (record_denial): no wrapper on the
            # hot path.
            await self.app(scope, receive, send)
            return
        status = 500
        recorded = False
        held = _audited(scope)
        failed = False

        async def capture(message: Message) -> None:
            nonlocal status, recorded, failed
            if failed:
                return  # the answer was replaced: the rest of the app's reply is dropped
            if message["type"] == "http.response.start":
                status = int(message["status"])
                recorded = True
                self._record(scope, status)
                if held:
                    # Not acknowledged before its audit row (and every row the action
                    # recorded itself) is committed: a crash right after a 200 can not
                    # lose the row of an action that persisted.
                    try:
                        await self.audit.flush()
                    except Exception:
                        failed = True
                        await send_error(
                            send,
                            Unavailable(
                                "the action ran but its audit record could not be written",
                                code="audit_unavailable",
                            ),
                        )
                        return
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            if not recorded:
                self._record(scope, status)

    def _record(self, scope: Scope, status: int) -> None:
        if status in AUTH_FAILURES:
            self.on_denied(scope, status)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if _audited(scope):
            principal = scope.get(PRINCIPAL)
            actor = principal.key_id if isinstance(principal, Principal) else None
            client = scope.get("client")
            source = client[0] if client else None
            details = {"method": method, "status": status}
            namespace = _namespace_of(path, principal)
            result = "ok" if status < 400 else "error"
            self.audit.record(namespace, actor, f"{method} {path}", path, result, source, details)


def _audited(scope: Scope) -> bool:
    """An admin action: a changing method on /v1/, not a data-plane call."""
    path: str = scope["path"]
    return (
        scope["method"] in CHANGING
        and path.startswith("/v1/")
        and not path.startswith(NOT_ADMIN_PREFIXES)
    )


def principal_key_id(scope: Scope) -> str | None:
    principal = scope.get(PRINCIPAL)
    return principal.key_id if isinstance(principal, Principal) else None


def record_denial(audit: AuditLog, scope: Scope, status: int) -> None:
    """An auth failure (401/403), on the one chain "*": an attacker cannot mint chains by
    naming paths."""
    actor = principal_key_id(scope)
    client = scope.get("client")
    details = {"method": scope.get("method", "GET"), "status": status}  # WebSocket: GET
    source = client[0] if client else None
    audit.record(ALL_NAMESPACES, actor, "auth.failure", scope["path"], "denied", source, details)


def _namespace_of(path: str, principal: object) -> str:
    parts = path.split("/")
    if len(parts) > 3 and parts[2] == "namespaces" and parts[3]:
        return parts[3]
    if isinstance(principal, Principal):
        return principal.namespace
    return ALL_NAMESPACES
