"""API keys: `cmo_` + 43 base62 characters (256 random bits) + a 6-character checksum.

The checksum lets a typo or a made-up key be rejected without touching storage. Only an
HMAC-SHA256 of the whole key (under a server secret) is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import zlib
from collections.abc import Mapping
from pathlib import Path

PREFIX = "cmo_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LEN = 43  # ceil(256 / log2(62))
CHECK_LEN = 6
KEY_LEN = len(PREFIX) + BODY_LEN + CHECK_LEN
KEYHASH_ENV = "CUMULO_KEYHASH_SECRET"  # base64 or hex of 32 bytes, like CUMULO_MASTER_KEY
KEYHASH_FILE = "keyhash.secret"
SCOPES = ("invoke", "deploy", "read", "admin", "privacy")  # privacy: docs/privacy.md


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECK_LEN)


def generate_key() -> str:
    body = _base62(secrets.randbits(256), BODY_LEN)
    return PREFIX + body + _checksum(body)


def well_formed(key: str) -> bool:
    """Shape and checksum only: no storage lookup, no secret involved."""
    if len(key) != KEY_LEN or not key.startswith(PREFIX):
        return False
    body, check = key[len(PREFIX) : -CHECK_LEN], key[-CHECK_LEN:]
    if any(c not in ALPHABET for c in body):
        return False
    return hmac.compare_digest(check, _checksum(body))


def key_id(key: str) -> str:
    """A public handle for a key: safe to show and log."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyHasher:
    """HMAC-SHA256 under a server secret: `CUMULO_KEYHASH_SECRET` when set, else the one
    kept in `<data-dir>/keyhash.secret` (0600, created on first start)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def from_data_dir(cls, data_dir: Path, environ: Mapping[str, str] | None = None) -> KeyHasher:
        # Gateways that share a database must share this secret; in a pod the data dir is
        # an emptyDir, so the secret comes from a Kubernetes Secret through the environment.
        value = (os.environ if environ is None else environ).get(KEYHASH_ENV)
        if value is not None:
            from cumulo.security.crypto import parse_master_key  # same 32-byte text form

            return cls(parse_master_key(value, KEYHASH_ENV))
        path = data_dir / KEYHASH_FILE
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            secret = secrets.token_bytes(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secret)
            return cls(secret)

    def hash(self, key: str) -> bytes:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).digest()
