"""Sealing rows at rest for tables written through connections other than the store's own
(the events queue: job bodies, results and errors). Data keys are read through that same
connection (`DataKeyTable`), on the thread that owns it; the cipher is the platform's one
`cumulo.security.crypto.Encryptor`, whose unwrapped keys are shared.

A sealed value starts with b"\\xffCM" (crypto's header). `open` passes anything else through
unchanged: rows from before sealing existed, and job bodies already sealed to a data subject
(b"\\xffCJ", cumulo.privacy), which stay under their subject key so erasure still shreds them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

from cumulo.store.sqlite import DataKeyQueries

SEALED_MAGIC = b"\xffCM"
SUBJECT_MAGIC = b"\xffCJ"


class Cipher(Protocol):
    """cumulo.security.crypto.Encryptor, seen from the store (keys: a key table)."""

    def prepare(self, store: Any, namespace: str) -> None: ...

    def encrypt(
        self, store: Any, namespace: str, purpose: str, item: Sequence[str], data: bytes
    ) -> bytes: ...

    def decrypt(
        self, store: Any, namespace: str, purpose: str, item: Sequence[str], blob: bytes
    ) -> bytes: ...

    def keyed_hash(self, store: Any, namespace: str, purpose: str, *parts: str) -> str: ...


def is_sealed(blob: bytes | str | None) -> bool:
    return isinstance(blob, bytes) and blob.startswith(SEALED_MAGIC)


class DataKeyTable(DataKeyQueries):
    """The `data_keys` table through another connection to the platform database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def db(self) -> sqlite3.Connection:
        return self._conn


class RowSealer:
    """Seal and open one connection's rows under the namespace data keys."""

    def __init__(self, cipher: Cipher, conn: sqlite3.Connection) -> None:
        self._cipher = cipher
        self._keys = DataKeyTable(conn)

    def prepare(self, namespace: str) -> None:
        """Outside any transaction: creates the namespace's data key if it has none."""
        self._cipher.prepare(self._keys, namespace)

    def seal(self, namespace: str, purpose: str, item: Sequence[str], data: bytes) -> bytes:
        if data.startswith(SUBJECT_MAGIC):
            return data  # sealed to its data subject already (see the module doc)
        return self._cipher.encrypt(self._keys, namespace, purpose, item, data)

    def open(self, namespace: str, purpose: str, item: Sequence[str], blob: bytes) -> bytes:
        if not is_sealed(blob):
            return blob
        return self._cipher.decrypt(self._keys, namespace, purpose, item, blob)

    def keyed_hash(self, namespace: str, purpose: str, *parts: str) -> str:
        return self._cipher.keyed_hash(self._keys, namespace, purpose, *parts)
