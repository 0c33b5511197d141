"""Subject keys: one AES-256 key per (namespace, subject pseudonym), for crypto-shredding.

Where they are kept is a `cumulo.store.subject_keys.SubjectKeyStore` (on SQLite
`<data-dir>/subject-keys.db`; on PostgreSQL a database of its own), never the main
database: a backup of it therefore never holds a subject key, and destroying the key makes
every copy of that subject's ciphertext (live database, WAL, backups) unreadable. Each key is
wrapped by its namespace's data key (AES-GCM, AAD = namespace, pseudonym, key version), so the
key store alone reveals nothing either. The same store keeps the pseudonym secret (see
subjects.Pseudonymizer): the main database alone can not even confirm a guessed subject id.

`load` reads the key store on every call (one indexed lookup) and caches only the unwrapped
key, keyed by its wrapped bytes: a key destroyed through another gateway is never used again
here, neither to read nor to write. `seal`/`open_value` are synchronous (no I/O): they use a
key `load`ed just before (so they can run inside a repository's atomic step).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cumulo.security.crypto import (
    FORMAT_VERSION,
    KEY_LEN,
    KIND_SUBJECT,
    MAGIC,
    NONCE_LEN,
    CryptoError,
    associated_data,
)
from cumulo.store.subject_keys import NamespaceKeys, SubjectKeyStore, WrappedKey

KEYSTORE_FILE = "subject-keys.db"  # on SQLite, in the data dir
_HEADER = struct.Struct(">3sBBI12s")  # the crypto.py header layout, key kind 1
HEADER_LEN = _HEADER.size
TAG_LEN = 16


class SubjectKeyMissing(CryptoError):
    """The subject's key was destroyed (erased) or never existed: its data is unreadable."""


def _wrap_aad(namespace: str, pseudonym: str, version: int) -> bytes:
    return associated_data(b"cumulo subject key v1", namespace, pseudonym, str(version))


class SubjectKeys:
    def __init__(self, store: SubjectKeyStore, namespace_keys: NamespaceKeys) -> None:
        self.store = store
        self.namespace_keys = namespace_keys
        # (namespace, pseudonym) -> (wrapped bytes it came from, key, raw key)
        self._keys: dict[tuple[str, str], tuple[bytes, AESGCM, bytes]] = {}

    async def open(self) -> bytes:
        """Open (creating) the key store; returns the pseudonym secret."""
        return await self.store.open()

    async def close(self) -> None:
        self.forget_cache()
        await self.store.aclose()

    # ------------------------------------------------------------ keys
    async def load(self, namespace: str, pseudonym: str, *, create: bool) -> AESGCM:
        """The subject's key, read from the key store (SubjectKeyMissing when it has none
        and not `create`)."""
        found = await self.store.get(namespace, pseudonym)
        if found is None:
            self._keys.pop((namespace, pseudonym), None)
            if not create:
                raise SubjectKeyMissing("this subject has no key (erased, or never seen)")
            raw = os.urandom(KEY_LEN)
            version, ns_cipher = await self.namespace_keys.cipher(namespace)
            nonce = os.urandom(NONCE_LEN)
            wrapped = nonce + ns_cipher.encrypt(
                nonce, raw, _wrap_aad(namespace, pseudonym, version)
            )
            # Racing gateways agree on the key that won the insert.
            found = await self.store.insert(
                namespace, pseudonym, WrappedKey(version, wrapped), time.time()
            )
        cached = self._keys.get((namespace, pseudonym))
        if cached is not None and cached[0] == found.wrapped:
            return cached[1]
        _, ns_cipher = await self.namespace_keys.cipher(namespace, found.ns_key_version)
        try:
            raw = ns_cipher.decrypt(
                found.wrapped[:NONCE_LEN],
                found.wrapped[NONCE_LEN:],
                _wrap_aad(namespace, pseudonym, found.ns_key_version),
            )
        except InvalidTag as exc:
            raise CryptoError("a subject key failed to unwrap (altered or moved)") from exc
        cipher = AESGCM(raw)
        self._keys[(namespace, pseudonym)] = (found.wrapped, cipher, raw)
        return cipher

    async def has_key(self, namespace: str, pseudonym: str) -> bool:
        return await self.store.has(namespace, pseudonym)

    async def destroy(self, namespace: str, pseudonym: str) -> bool:
        """Crypto-shred: the key store deletes the key so no page keeps it; the cached copy
        is forgotten first."""
        self._keys.pop((namespace, pseudonym), None)
        return await self.store.destroy(namespace, pseudonym)

    async def count(self) -> dict[str, int]:
        return await self.store.counts()

    def _loaded(self, namespace: str, pseudonym: str) -> tuple[AESGCM, bytes]:
        cached = self._keys.get((namespace, pseudonym))
        if cached is None:
            raise SubjectKeyMissing("this subject has no key (erased, or never seen)")
        return cached[1], cached[2]

    # ------------------------------------------------------------ values
    def seal(
        self,
        namespace: str,
        pseudonym: str,
        purpose: str,
        item: Sequence[str],
        data: bytes,
        *,
        deterministic: bool = False,
    ) -> bytes:
        """AES-GCM under the subject key (`load`ed before). `deterministic`: the nonce is an
        HMAC of the plaintext, so the same job body seals the same (Idempotency-Key hashes
        agree)."""
        cipher, raw = self._loaded(namespace, pseudonym)
        if deterministic:
            mac = hmac.new(raw, associated_data(purpose, *item) + data, hashlib.sha256)
            nonce = mac.digest()[:NONCE_LEN]
        else:
            nonce = os.urandom(NONCE_LEN)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, KIND_SUBJECT, 1, nonce)
        aad = associated_data(
            b"cumulo subject value v1", header, namespace, pseudonym, purpose, *item
        )
        return header + cipher.encrypt(nonce, data, aad)

    def open_value(
        self, namespace: str, pseudonym: str, purpose: str, item: Sequence[str], blob: bytes
    ) -> bytes:
        if len(blob) < HEADER_LEN + TAG_LEN or not blob.startswith(MAGIC):
            raise CryptoError(f"{purpose} is not a subject ciphertext")
        _, fmt, kind, _, nonce = _HEADER.unpack_from(blob)
        if fmt != FORMAT_VERSION or kind != KIND_SUBJECT:
            raise CryptoError(f"{purpose} is not a subject ciphertext")
        cipher, _ = self._loaded(namespace, pseudonym)
        aad = associated_data(
            b"cumulo subject value v1", blob[:HEADER_LEN], namespace, pseudonym, purpose, *item
        )
        try:
            return cipher.decrypt(nonce, blob[HEADER_LEN:], aad)
        except InvalidTag as exc:
            raise CryptoError(f"a subject {purpose} failed to decrypt (altered or moved)") from exc

    async def sealed(
        self,
        namespace: str,
        pseudonym: str,
        purpose: str,
        item: Sequence[str],
        data: bytes,
        *,
        deterministic: bool = False,
    ) -> bytes:
        """`load` (creating) then `seal`."""
        await self.load(namespace, pseudonym, create=True)
        return self.seal(namespace, pseudonym, purpose, item, data, deterministic=deterministic)

    async def opened(
        self, namespace: str, pseudonym: str, purpose: str, item: Sequence[str], blob: bytes
    ) -> bytes:
        """`load` (SubjectKeyMissing once erased) then `open_value`."""
        await self.load(namespace, pseudonym, create=False)
        return self.open_value(namespace, pseudonym, purpose, item, blob)

    def forget_cache(self) -> None:
        self._keys.clear()
