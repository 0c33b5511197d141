"""Which API keys may sign AWS SigV4 requests, and with what secret.

SigV4 is an HMAC under the client's secret, so the verifier needs that secret; cumulo
stores a key only as an HMAC of it (security/keys.py), which cannot be turned back. So a
key's SigV4 secret (the key itself: `aws_secret_access_key` is the `cmo_…` key, the access
key id its `key_…` id) is also kept sealed at rest, in the secrets room under the reserved
namespace SIGV4_NAMESPACE (never a user namespace: names there must not start with `_`),
from the moment the key is created; a revoked key's copy is deleted. Keys created before
this existed have no copy and cannot sign (create a new one). The table here is in memory,
reloaded with the keys, so verifying touches no database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cumulo.security.auth import Principal
from cumulo.store.base import ApiKeyRecord

SIGV4_NAMESPACE = "_sigv4"


@dataclass(frozen=True, slots=True)
class SigningKey:
    principal: Principal
    secret: str
    expires_at: float | None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or time.time())


class SigV4Keys:
    def __init__(self) -> None:
        self._by_id: dict[str, SigningKey] = {}

    def load(self, records: list[ApiKeyRecord], secrets: dict[str, bytes]) -> None:
        table = {}
        for record in records:
            secret = secrets.get(record.id)
            if record.revoked_at is None and secret is not None:
                principal = Principal(record.id, record.namespace, frozenset(record.scopes))
                table[record.id] = SigningKey(principal, secret.decode(), record.expires_at)
        self._by_id = table

    def get(self, access_key_id: str) -> SigningKey | None:
        return self._by_id.get(access_key_id)
