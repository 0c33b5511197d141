"""Where subject keys live (crypto-shredding): one wrapped key per (namespace, pseudonym),
and the pseudonym secret.

`SubjectKeyStore`'s contract is written here; implementations held to one conformance suite
(tests/store/test_privacy_conformance.py):

- `cumulo.store.sqlite_subject_keys.SQLiteSubjectKeyStore`: `<data-dir>/subject-keys.db`, a
  file of its own (secure_delete, rollback journal, VACUUM after each destroy);
- `cumulo.store.postgres_subject_keys.PostgresSubjectKeyStore`: a PostgreSQL database of its
  own (not the main one: a dump of the main database never holds a subject key); a destroy
  deletes the row and VACUUMs the table;
- `cumulo.store.memory_subject_keys.MemorySubjectKeyStore`: an in-memory fake.

A store keeps keys wrapped (by the namespace data key, cumulo.privacy.keystore) and never
unwraps them. Several gateways share one store: `insert` returns the row that won, so racing
first writers agree on one key, and a `destroy` through one gateway is seen by every other
on its next `get` (each must drop its own cached copy: cumulo.privacy does on every miss).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

__all__ = ["Aead", "NamespaceCipher", "NamespaceKeys", "SubjectKeyStore", "WrappedKey"]


class Aead(Protocol):
    """An AES-GCM key as `cryptography`'s AESGCM offers it."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


class NamespaceCipher(Protocol):
    """cumulo.security.crypto.Encryptor as the key adapters use it (the store imports no
    room): `store` is the database (SQLiteStore) or key table it reads data keys from."""

    def namespace_cipher(
        self, store: Any, namespace: str, version: int | None = None
    ) -> tuple[int, Any]: ...


class NamespaceKeys(abc.ABC):
    """The namespace data keys that wrap subject keys, from the main database."""

    @abc.abstractmethod
    async def cipher(self, namespace: str, version: int | None = None) -> tuple[int, Aead]:
        """(version, key): the newest (created when the namespace has none), or `version`."""


@dataclass(frozen=True, slots=True)
class WrappedKey:
    ns_key_version: int  # the namespace data key version that wraps it
    wrapped: bytes


class SubjectKeyStore(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> bytes:
        """Make the store ready (creating it when needed) and return the pseudonym secret
        (32 random bytes made once, the same for every gateway of one store)."""

    @abc.abstractmethod
    async def get(self, namespace: str, pseudonym: str) -> WrappedKey | None: ...

    @abc.abstractmethod
    async def insert(
        self, namespace: str, pseudonym: str, key: WrappedKey, now: float
    ) -> WrappedKey:
        """Store the key unless one is stored already; returns the one stored."""

    @abc.abstractmethod
    async def has(self, namespace: str, pseudonym: str) -> bool: ...

    @abc.abstractmethod
    async def destroy(self, namespace: str, pseudonym: str) -> bool:
        """Delete the key so that no page or tuple of the store keeps its bytes; False when
        there was none."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """{namespace: keys held}."""

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> SubjectKeyStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
