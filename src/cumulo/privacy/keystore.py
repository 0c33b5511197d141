"""Subject keys: one AES-256 key per (namespace, subject pseudonym), for crypto-shredding.

They live in `<data-dir>/subject-keys.db`, a SQLite file of their own, never in cumulo.db:
a backup of cumulo.db therefore never holds a subject key, and destroying the key here makes
every copy of that subject's ciphertext (live database, WAL, backups) unreadable. Each key is
wrapped by its namespace's data key (AES-GCM, AAD = namespace, pseudonym, key version), so the
file alone reveals nothing either. The file runs with `secure_delete=ON` and a rollback journal
(no WAL copy of deleted pages), and an erasure VACUUMs it: freed pages hold no key bytes.

The same file keeps the pseudonym secret (see subjects.Pseudonymizer): cumulo.db alone can
not even confirm a guessed subject id.

Everything here runs on the platform store's thread (inside `store.call`), like the store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from cumulo.security.crypto import Encryptor
    from cumulo.store.sqlite import SQLiteStore

KEYSTORE_FILE = "subject-keys.db"
_HEADER = struct.Struct(">3sBBI12s")  # the crypto.py header layout, key kind 1
HEADER_LEN = _HEADER.size
TAG_LEN = 16

SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_keys (
    namespace TEXT NOT NULL, pseudonym TEXT NOT NULL, ns_key_version INTEGER NOT NULL,
    wrapped BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (namespace, pseudonym));
CREATE TABLE IF NOT EXISTS keystore_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


class SubjectKeyMissing(CryptoError):
    """The subject's key was destroyed (erased) or never existed: its data is unreadable."""


class SubjectKeys:
    def __init__(self, path: Path, encryptor: Encryptor) -> None:
        self.path = path
        self._encryptor = encryptor
        self._conn: sqlite3.Connection | None = None
        self._keys: dict[tuple[str, str], AESGCM] = {}
        self._raw: dict[tuple[str, str], bytes] = {}  # for deterministic nonces (job bodies)

    # ------------------------------------------------------------ file
    def open(self) -> bytes:
        """Open (creating 0600) the key store; returns the pseudonym secret."""
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # DELETE journal (no WAL holding old pages), deleted content zeroed in place.
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        self._conn = conn
        row = conn.execute("SELECT value FROM keystore_meta WHERE name = 'pseudonym'").fetchone()
        if row is None:
            conn.execute(
                "INSERT OR IGNORE INTO keystore_meta VALUES ('pseudonym', ?)", (os.urandom(32),)
            )
            row = conn.execute(
                "SELECT value FROM keystore_meta WHERE name = 'pseudonym'"
            ).fetchone()
        return bytes(row[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the subject key store is not open")
        return self._conn

    # ------------------------------------------------------------ keys
    def _wrap_aad(self, namespace: str, pseudonym: str, version: int) -> bytes:
        return associated_data(b"cumulo subject key v1", namespace, pseudonym, str(version))

    def key(self, store: SQLiteStore, namespace: str, pseudonym: str, *, create: bool) -> AESGCM:
        cached = self._keys.get((namespace, pseudonym))
        if cached is not None:
            return cached
        row = self.db.execute(
            "SELECT ns_key_version, wrapped FROM subject_keys "
            "WHERE namespace = ? AND pseudonym = ?",
            (namespace, pseudonym),
        ).fetchone()
        if row is None:
            if not create:
                raise SubjectKeyMissing("this subject has no key (erased, or never seen)")
            raw = os.urandom(KEY_LEN)
            version, ns_cipher = self._encryptor.namespace_cipher(store, namespace)
            nonce = os.urandom(NONCE_LEN)
            wrapped = nonce + ns_cipher.encrypt(
                nonce, raw, self._wrap_aad(namespace, pseudonym, version)
            )
            self.db.execute(
                "INSERT INTO subject_keys VALUES (?,?,?,?,?)",
                (namespace, pseudonym, version, wrapped, time.time()),
            )
        else:
            version, wrapped = int(row[0]), bytes(row[1])
            _, ns_cipher = self._encryptor.namespace_cipher(store, namespace, version)
            try:
                raw = ns_cipher.decrypt(
                    wrapped[:NONCE_LEN],
                    wrapped[NONCE_LEN:],
                    self._wrap_aad(namespace, pseudonym, version),
                )
            except InvalidTag as exc:
                raise CryptoError("a subject key failed to unwrap (altered or moved)") from exc
        cipher = AESGCM(raw)
        self._keys[(namespace, pseudonym)] = cipher
        self._raw[(namespace, pseudonym)] = raw
        return cipher

    def has_key(self, namespace: str, pseudonym: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM subject_keys WHERE namespace = ? AND pseudonym = ?",
            (namespace, pseudonym),
        ).fetchone()
        return row is not None

    def destroy(self, namespace: str, pseudonym: str) -> bool:
        """Crypto-shred: delete the key row (zeroed by secure_delete), VACUUM so no freed
        page keeps it, and forget the cached copy."""
        self._keys.pop((namespace, pseudonym), None)
        self._raw.pop((namespace, pseudonym), None)
        cur = self.db.execute(
            "DELETE FROM subject_keys WHERE namespace = ? AND pseudonym = ?",
            (namespace, pseudonym),
        )
        self.db.execute("VACUUM")
        return cur.rowcount > 0

    def count(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT namespace, COUNT(*) FROM subject_keys GROUP BY namespace"
        ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    # ------------------------------------------------------------ values
    def seal(
        self,
        store: SQLiteStore,
        namespace: str,
        pseudonym: str,
        purpose: str,
        item: Sequence[str],
        data: bytes,
        *,
        deterministic: bool = False,
    ) -> bytes:
        """AES-GCM under the subject key. `deterministic`: the nonce is an HMAC of the
        plaintext, so the same job body seals the same (Idempotency-Key hashes agree)."""
        cipher = self.key(store, namespace, pseudonym, create=True)
        if deterministic:
            raw = self._raw[(namespace, pseudonym)]
            nonce = hmac.new(raw, associated_data(purpose, *item) + data, hashlib.sha256).digest()[
                :NONCE_LEN
            ]
        else:
            nonce = os.urandom(NONCE_LEN)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, KIND_SUBJECT, 1, nonce)
        aad = associated_data(
            b"cumulo subject value v1", header, namespace, pseudonym, purpose, *item
        )
        return header + cipher.encrypt(nonce, data, aad)

    def open_value(
        self,
        store: SQLiteStore,
        namespace: str,
        pseudonym: str,
        purpose: str,
        item: Sequence[str],
        blob: bytes,
    ) -> bytes:
        if len(blob) < HEADER_LEN + TAG_LEN or not blob.startswith(MAGIC):
            raise CryptoError(f"{purpose} is not a subject ciphertext")
        _, fmt, kind, _, nonce = _HEADER.unpack_from(blob)
        if fmt != FORMAT_VERSION or kind != KIND_SUBJECT:
            raise CryptoError(f"{purpose} is not a subject ciphertext")
        cipher = self.key(store, namespace, pseudonym, create=False)
        aad = associated_data(
            b"cumulo subject value v1", blob[:HEADER_LEN], namespace, pseudonym, purpose, *item
        )
        try:
            return cipher.decrypt(nonce, blob[HEADER_LEN:], aad)
        except InvalidTag as exc:
            raise CryptoError(f"a subject {purpose} failed to decrypt (altered or moved)") from exc

    def forget_cache(self) -> None:
        self._keys.clear()
        self._raw.clear()
