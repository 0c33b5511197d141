"""Data subject identifiers: validation, keyed pseudonyms, and the privacy clock.

A subject id (e.g. "user:123") never reaches the database in plaintext: rows are indexed
by `pseudonym(namespace, subject)` = HMAC-SHA256 under a platform secret that lives in the
subject key store (not in cumulo.db), and the readable id only ever sits inside ciphertext.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from cumulo.errors import BadRequest

MAX_SUBJECT = 128
# Printable, no spaces or slashes: safe in headers and never mistaken for a path.
SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._@+=\-]{0,127}$")
SUBJECT_HEADER = b"x-cumulo-subject"
CLOCK_ENV = "CUMULO_PRIVACY_CLOCK"  # a file holding an epoch time: tests move the clock


def valid_subject(subject: object) -> bool:
    return isinstance(subject, str) and SUBJECT_RE.fullmatch(subject) is not None


def check_subject(subject: object) -> str:
    """The subject, or BadRequest naming the rule (never echoing the value: it is PII)."""
    if not valid_subject(subject):
        raise BadRequest(
            f"a subject is 1-{MAX_SUBJECT} characters from A-Z a-z 0-9 and :._@+=- "
            "starting with a letter or digit",
            code="invalid_subject",
        )
    assert isinstance(subject, str)
    return subject


class Pseudonymizer:
    """HMAC-SHA256(secret, namespace \\0 subject): stable per namespace, unlinkable across
    namespaces, and not reversible (nor confirmable by guessing) without the secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __repr__(self) -> str:
        return "Pseudonymizer()"

    def pseudonym(self, namespace: str, subject: str) -> str:
        message = f"{namespace}\0{subject}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def item_hash(self, *parts: str) -> str:
        """Keys of subject state rows are hashed too: a key may embed personal data."""
        message = "\0".join(parts).encode()
        return hmac.new(self._secret, b"item\0" + message, hashlib.sha256).hexdigest()


def make_clock(environ: dict[str, str] | None = None) -> Callable[[], float]:
    """time.time, or (with CUMULO_PRIVACY_CLOCK=FILE) the epoch time written in FILE, so a
    test can move deadlines and retention forward without waiting a month."""
    env = os.environ if environ is None else environ
    path = env.get(CLOCK_ENV)
    if not path:
        return time.time
    clock_file = Path(path)

    def read() -> float:
        try:
            return float(clock_file.read_text().strip())
        except (OSError, ValueError):
            return time.time()

    return read
