"""`SubjectKeyStore` in memory: a fake for unit tests, held to the same conformance suite."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cumulo.store.subject_keys import Aead, NamespaceKeys, SubjectKeyStore, WrappedKey


class MemorySubjectKeyStore(SubjectKeyStore):
    def __init__(self) -> None:
        self._secret = os.urandom(32)
        self._keys: dict[tuple[str, str], WrappedKey] = {}

    async def open(self) -> bytes:
        return self._secret

    async def get(self, namespace: str, pseudonym: str) -> WrappedKey | None:
        return self._keys.get((namespace, pseudonym))

    async def insert(
        self, namespace: str, pseudonym: str, key: WrappedKey, now: float
    ) -> WrappedKey:
        return self._keys.setdefault((namespace, pseudonym), key)

    async def has(self, namespace: str, pseudonym: str) -> bool:
        return (namespace, pseudonym) in self._keys

    async def destroy(self, namespace: str, pseudonym: str) -> bool:
        return self._keys.pop((namespace, pseudonym), None) is not None

    async def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ns, _ in self._keys:
            out[ns] = out.get(ns, 0) + 1
        return out


class MemoryNamespaceKeys(NamespaceKeys):
    """Random namespace keys, version 1 each, held in memory (for the fakes)."""

    def __init__(self) -> None:
        self._keys: dict[str, AESGCM] = {}

    async def cipher(self, namespace: str, version: int | None = None) -> tuple[int, Aead]:
        if version not in (None, 1):
            raise LookupError(f"namespace key version {version} does not exist")
        key = self._keys.setdefault(namespace, AESGCM(AESGCM.generate_key(256)))
        return 1, key
