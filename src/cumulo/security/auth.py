"""Who is calling: the one place every request's credentials are checked."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cumulo.errors import Forbidden, NotFound, Unauthorized
from cumulo.security.keys import PREFIX, KeyHasher, well_formed
from cumulo.store.base import ApiKeyRecord

if TYPE_CHECKING:  # jwt imports Principal from here
    from cumulo.security.jwt import JwtVerifier

ALL_NAMESPACES = "*"
MAX_VERIFIED = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    namespace: str  # "*" for the platform admin key
    scopes: frozenset[str]
    subject: str | None = None  # a data subject (privacy): an OIDC token's subject claim

    def can_see(self, namespace: str) -> bool:
        return self.namespace in (ALL_NAMESPACES, namespace)

    def require(self, scope: str, namespace: str | None = None) -> None:
        """Raise unless this principal may act with `scope` in `namespace`.

        Another tenant's namespace answers 404, exactly like a missing one, so a key can
        not probe which names exist elsewhere."""
        if namespace is not None and not self.can_see(namespace):
            raise NotFound("not found", code="not_found")
        if "admin" not in self.scopes and scope not in self.scopes:
            raise Forbidden(f"this key lacks the {scope!r} scope", code="missing_scope")


class Authenticator:
    """Checks bearer keys against an in-memory table (reloaded whenever keys change)."""

    def __init__(self, hasher: KeyHasher) -> None:
        self._hasher = hasher
        self._by_hash: dict[bytes, ApiKeyRecord] = {}
        # Keys already verified, so the hot path skips the HMAC; emptied on every key change.
        self._verified: dict[str, tuple[ApiKeyRecord, Principal]] = {}
        # OIDC bearer tokens: whatever is not a `cmo_` key goes here when configured.
        self.jwt: JwtVerifier | None = None

    def load(self, records: list[ApiKeyRecord]) -> None:
        self._by_hash = {r.key_hash: r for r in records if r.revoked_at is None}
        self._verified = {}

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized(
                "missing credentials: send Authorization: Bearer <key>", code="missing_key"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("use Authorization: Bearer <key>", code="bad_auth_scheme")
        if self.jwt is not None and not token.startswith(PREFIX):
            return self.jwt.verify(token)
        verified = self._verified.get(token)
        if verified is None:
            if not well_formed(token):
                raise Unauthorized("invalid API key", code="invalid_key")
            digest = self._hasher.hash(token)
            record = self._by_hash.get(digest)
            if record is None or not hmac.compare_digest(record.key_hash, digest):
                raise Unauthorized("invalid API key", code="invalid_key")
            if len(self._verified) >= MAX_VERIFIED:
                self._verified.clear()
            principal = Principal(record.id, record.namespace, frozenset(record.scopes))
            verified = self._verified[token] = (record, principal)
        record, principal = verified
        if record.expires_at is not None and record.expires_at <= time.time():
            raise Unauthorized("this API key has expired", code="expired_key")
        return principal


# Where the authentication middleware leaves the request's Principal (None: anonymous) in
# the ASGI scope. Every room's routes read it through `principal_of`.
PRINCIPAL = "cumulo.principal"


def principal_of(scope: Mapping[str, Any]) -> Principal:
    principal = scope.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise Unauthorized(
            "missing credentials: send Authorization: Bearer <key>", code="missing_key"
        )
    return principal
