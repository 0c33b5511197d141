"""Encryption at rest: AES-256-GCM envelope encryption of state values and secrets.

Key hierarchy (each level is wrapped by the one above it; only the master lives outside the
database, and no key is ever stored or logged in plaintext)::

    master key (KEK)       32 bytes from CUMULO_MASTER_KEY, or <data-dir>/master.key (0600).
    │                      Known in the database only by its id (an HMAC fingerprint).
    └── namespace data key 32 random bytes per (namespace, version), in `data_keys`, wrapped
        │                  by the master under AAD (namespace, version, master id). New writes
        │                  use the newest version; older versions keep decrypting.
        └── subject key    (key kind 1) per (namespace, subject pseudonym), wrapped by a
                           namespace data key, kept in <data-dir>/subject-keys.db (never in
                           cumulo.db): erasing a data subject destroys one row there
                           (crypto-shredding, see cumulo.privacy.keystore and
                           docs/privacy.md). Master rotation never touches this level.

Ciphertext = header || AES-GCM ciphertext || 16-byte tag, where the 21-byte header is::

    b"\\xffCM"  format (u8, 1)  key kind (u8, 0 = namespace key)  key version (u32 BE)  nonce (12 B)

b"\\xff" never occurs in UTF-8 or JSON, so a ciphertext can not be mistaken for a plaintext
value written before encryption existed. The AAD is the header followed by the namespace, the
purpose ("state" or "secret") and the item (function and state key, or secret name), each
length-prefixed: a ciphertext copied to another row, namespace or purpose fails to decrypt,
and so does one whose header was altered.

Everything here that touches the store runs on the store's own thread (inside a store method
or through `store.call`), like the store methods themselves. An async backend (PostgreSQL)
uses the same synchronous `Encryptor` through a key table over rows it loaded beforehand
(`cumulo.store.postgres_keys`): it awaits its own `prepare` first, then calls encrypt,
decrypt and keyed_hash here without touching the database.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import sqlite3
import stat
import string
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cumulo.errors import ConfigError, CumuloError

if TYPE_CHECKING:
    from cumulo.store.sqlite import DataKeyRecord, SQLiteStore


class TransactionState(Protocol):
    """All the encryptor asks of a key table's connection: whether a transaction is open
    (a data key is created only outside one). A `sqlite3.Connection` is one; the key table
    of an async backend (`cumulo.store.postgres_keys.CachedKeyTable`) always answers True,
    because its keys are created by its own async `prepare`, never on this sync path."""

    @property
    def in_transaction(self) -> bool: ...


class KeyTable(Protocol):
    """Where data keys live: the store (`SQLiteStore`), another connection to the same
    database (`cumulo.store.sqlite.DataKeyTable`, the events queue's), or an async backend's
    in-memory copy of its rows (`cumulo.store.postgres_keys`). Called on the thread that
    owns that connection."""

    @property
    def db(self) -> TransactionState: ...

    def data_key(self, namespace: str, version: int) -> DataKeyRecord | None: ...

    def latest_data_key_version(self, namespace: str) -> int | None: ...

    def insert_data_key(
        self, namespace: str, version: int, master_id: str, wrapped: bytes, now: float
    ) -> bool: ...


MASTER_ENV = "CUMULO_MASTER_KEY"
MASTER_FILE = "master.key"
PENDING_SUFFIX = ".next"  # the new master during a rotation, until the database commits

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
MAGIC = b"\xffCM"
FORMAT_VERSION = 1
KIND_NAMESPACE = 0
KIND_SUBJECT = 1  # per-subject keys (crypto-shredding): cumulo.privacy.keystore
_HEADER = struct.Struct(">3sBBI12s")
HEADER_LEN = _HEADER.size
# What a ciphertext is for (bound into its AAD): a value of one kind never opens as another.
PURPOSES = frozenset(
    {
        "state",  # state value; item (function, key name)
        "secret",  # secret value; item (name,)
        "state-key",  # a state key's name; item (function, keyed hash of the name)
        "log",  # a log line and its fields; item (function, version, invocation id)
        "job-body",  # async/topic/schedule job request; item (function, job id)
        "job-result",  # its response body; item (function, job id)
        "job-error",  # its last error (a dead letter's reason); item (function, job id)
    }
)

_META_MASTER_ID = "master_id"
_META_MIGRATED = "plaintext_migrated"
_INDEX_INFO = b"cumulo row index key v1"
_KEY_FORMAT_HINT = "32 bytes, base64- or hex-encoded (make one with `openssl rand -base64 32`)"


class CryptoError(CumuloError):
    """A value or wrapped key failed to decrypt (tampered, moved, or under another key).

    Messages name where the value lives, never what it holds."""


# ---------------------------------------------------------------- the master key
def parse_master_key(text: str, what: str = MASTER_ENV) -> bytes:
    """32 key bytes from base64 (standard or URL-safe, padding optional) or 64 hex digits."""
    raw = text.strip()
    if len(raw) == 2 * KEY_LEN and all(c in string.hexdigits for c in raw):
        return bytes.fromhex(raw)
    data = b""
    with contextlib.suppress(binascii.Error, ValueError):
        altchars = b"-_" if ("-" in raw or "_" in raw) else None
        data = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=altchars, validate=True)
    if len(data) != KEY_LEN:
        # Never echo the value: a near-miss key is still most of a key.
        raise ConfigError(f"{what} must be {_KEY_FORMAT_HINT}")
    return data


def format_master_key(key: bytes) -> str:
    """The text form written to key files (and accepted by CUMULO_MASTER_KEY)."""
    return base64.b64encode(key).decode()


def generate_master_key() -> bytes:
    return os.urandom(KEY_LEN)


def associated_data(*parts: bytes | str) -> bytes:
    """Length-prefixed parts, so ("ab", "c") and ("a", "bc") never collide."""
    out = bytearray()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


class MasterKey:
    """The key-encryption key. Its repr and errors show the source and id, never the key."""

    __slots__ = ("_key", "key_id", "path", "source")

    def __init__(self, key: bytes, source: str, path: Path | None = None) -> None:
        if len(key) != KEY_LEN:
            raise ConfigError(f"a master key is {KEY_LEN} bytes")
        self._key = key
        self.source = source  # "env", "file" or "memory"
        self.path = path
        # A public fingerprint: tells old and new masters apart without revealing either.
        self.key_id = hmac.new(key, b"cumulo master key id v1", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id}, source={self.describe()})"

    def describe(self) -> str:
        if self.source == "env":
            return MASTER_ENV
        return str(self.path) if self.path is not None else "memory"

    def with_key(self, key: bytes) -> MasterKey:
        """A new master from the same source (a rotation replaces the key, not the place)."""
        return MasterKey(key, self.source, self.path)

    def wrap(self, data_key: bytes, namespace: str, version: int) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        aad = _wrap_aad(namespace, version, self.key_id)
        return nonce + AESGCM(self._key).encrypt(nonce, data_key, aad)

    def unwrap(self, wrapped: bytes, namespace: str, version: int) -> bytes:
        aad = _wrap_aad(namespace, version, self.key_id)
        try:
            key = AESGCM(self._key).decrypt(wrapped[:NONCE_LEN], wrapped[NONCE_LEN:], aad)
        except (InvalidTag, ValueError) as exc:
            raise CryptoError(
                f"data key {namespace!r} v{version} does not unwrap under master key {self.key_id}"
            ) from exc
        if len(key) != KEY_LEN:
            raise CryptoError(f"data key {namespace!r} v{version} has the wrong length")
        return key

    def audit_key(self) -> bytes:
        """The HMAC key that authenticates audit chain heads, derived so that the master
        itself is never used for two purposes."""
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"cumulo audit head mac v1"
        ).derive(self._key)

    def text(self) -> str:
        """The key in its file form; only for writing the key file."""
        return format_master_key(self._key)


def _wrap_aad(namespace: str, version: int, master_id: str) -> bytes:
    return associated_data(b"cumulo data key v1", namespace, str(version), master_id)


def audit_head_mac(audit_key: bytes, namespace: str, seq: int, head_hash: bytes) -> bytes:
    """HMAC over a chain head; lives here so a master rotation can re-authenticate heads."""
    message = associated_data(b"cumulo audit head v1", namespace, str(seq), head_hash)
    return hmac.new(audit_key, message, hashlib.sha256).digest()


def load_master_key(data_dir: Path, environ: Mapping[str, str] | None = None) -> MasterKey:
    """The master key from CUMULO_MASTER_KEY, else `<data-dir>/master.key` (created 0600 on
    first start). Raises ConfigError, with one clear line, on a malformed key or a key file
    that others can read."""
    env = os.environ if environ is None else environ
    value = env.get(MASTER_ENV)
    if value is not None:
        return MasterKey(parse_master_key(value, MASTER_ENV), "env")
    path = data_dir / MASTER_FILE
    key = read_key_file(path)
    if key is None:
        try:
            key = generate_master_key()
            write_key_file(path, key, exclusive=True)
        except FileExistsError:
            # Another process starting on this data dir created it first: use theirs.
            key = read_key_file(path)
            if key is None:
                raise ConfigError(f"the master key file {path} vanished") from None
    return MasterKey(key, "file", path)


def read_key_file(path: Path) -> bytes | None:
    """The key in `path`, or None when there is no such file. Refuses files that are not
    regular, not ours, or open to group or others (a key readable by others is not secret)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the master key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the master key file {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise ConfigError(f"the master key file {path} belongs to another user")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise ConfigError(
                f"the master key file {path} is open to other users (mode {mode:04o}); "
                f"run `chmod 600 {path}`"
            )
        text = fh.read(1024).decode("ascii", errors="replace")
    return parse_master_key(text, f"the master key file {path}")


def write_key_file(path: Path, key: bytes, *, exclusive: bool) -> None:
    """Write a key file 0600, durably (a master key lost in a crash loses every value) and
    whole (a reader never sees half a key). `exclusive`: FileExistsError if `path` exists."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write((format_master_key(key) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # atomic, and fails rather than replace a key
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pending_path(master: MasterKey) -> Path | None:
    if master.source != "file" or master.path is None:
        return None
    return master.path.with_name(master.path.name + PENDING_SUFFIX)


def _master_for(stored_id: str | None, master: MasterKey) -> MasterKey:
    """The master that wraps a database whose data keys name `stored_id`: `master` itself,
    or the pending key of a rotation that committed but crashed before its rename."""
    if stored_id is None or stored_id == master.key_id:
        return master
    pending = _pending_path(master)
    candidate = read_key_file(pending) if pending is not None else None
    if candidate is not None and master.with_key(candidate).key_id == stored_id:
        return master.with_key(candidate)
    raise ConfigError(
        f"the master key from {master.describe()} (id {master.key_id}) is not the one that "
        f"wraps this database's data keys (id {stored_id})"
    )


def check_master_key(db_path: Path, master: MasterKey) -> None:
    """Refuse, before anything is served, a master that does not wrap the database at
    `db_path` (read-only: `Encryptor.open` finishes an interrupted rotation later)."""
    if not db_path.exists():
        return
    uri = db_path.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        try:
            row = db.execute(
                "SELECT value FROM crypto_meta WHERE name = ?", (_META_MASTER_ID,)
            ).fetchone()
        except sqlite3.OperationalError:  # a database from before encryption at rest
            return
    _master_for(None if row is None else str(row[0]), master)


# ---------------------------------------------------------------- the encryptor
@dataclass(frozen=True, slots=True)
class Header:
    kind: int
    key_version: int
    nonce: bytes


def parse_header(blob: bytes) -> Header | None:
    """The header of a ciphertext, or None when `blob` is not one (a legacy plaintext)."""
    if len(blob) < HEADER_LEN + TAG_LEN or not blob.startswith(MAGIC):
        return None
    _, fmt, kind, version, nonce = _HEADER.unpack_from(blob)
    if fmt != FORMAT_VERSION:
        raise CryptoError(f"unknown ciphertext format {fmt}")
    return Header(kind, version, nonce)


class Encryptor:
    """Encrypts and decrypts values for a store; data keys are created on first use per
    namespace and cached unwrapped in memory (a master rotation leaves them valid)."""

    def __init__(self, master: MasterKey) -> None:
        self._master = master
        self._ciphers: dict[tuple[str, int], AESGCM] = {}
        self._active: dict[str, int] = {}
        # namespace → HMAC key for rows looked up by name (derived from data key v1, which
        # never changes: neither a data key rotation nor a master rotation moves the hashes).
        self._index_keys: dict[str, bytes] = {}
        self._index_macs: dict[str, hmac.HMAC] = {}

    @property
    def master(self) -> MasterKey:
        return self._master

    def __repr__(self) -> str:
        return f"Encryptor(master={self._master!r})"

    # ------------------------------------------------------------ start-up
    def open(self, store: SQLiteStore) -> None:
        """Check the master against the database (finishing a master rotation that
        committed but crashed before its key file was renamed), then encrypt any value
        written before encryption existed. Run once, after `store.open()`."""
        stored = store.crypto_meta_get(_META_MASTER_ID)
        master = _master_for(stored, self._master)
        pending = _pending_path(self._master)
        if master is not self._master:
            assert pending is not None  # _master_for only finds a new master in that file
            assert master.path is not None
            os.replace(pending, master.path)
            _fsync_dir(master.path.parent)
            self._master = master
        elif pending is not None:
            # A rotation that never committed: its key wraps nothing.
            with contextlib.suppress(FileNotFoundError):
                pending.unlink()
        if stored is None:
            store.crypto_meta_set(_META_MASTER_ID, self._master.key_id)
        if store.crypto_meta_get(_META_MIGRATED) is None:
            self._encrypt_legacy_rows(store)
            store.crypto_meta_set(_META_MIGRATED, "1")
        # Idempotent, and cheap when done: rows written in clear by an older build (state key
        # names, log lines, job bodies and results) are sealed now.
        store.seal_legacy_rows()

    def _encrypt_legacy_rows(self, store: SQLiteStore) -> None:
        store.seal_legacy_state_keys()  # values are found by hashed key from here on
        legacy = [row for row in store.encrypted_rows() if parse_header(row.value) is None]
        for namespace in {row.namespace for row in legacy}:
            self.prepare(store, namespace)
        with store.transaction():
            for row in legacy:
                purpose = "state" if row.table == "state" else "secret"
                blob = self.encrypt(store, row.namespace, purpose, row.item, row.value)
                store.replace_encrypted_value(row.table, row.namespace, row.item, blob)

    # ------------------------------------------------------------ values
    def prepare(self, store: KeyTable, namespace: str) -> None:
        """Make sure `namespace` has a data key. Call outside any transaction: a key created
        inside one that then rolls back would stay cached while its row is gone."""
        self._active_key(store, namespace, create=True)

    def encrypt(
        self,
        store: KeyTable,
        namespace: str,
        purpose: str,
        item: Sequence[str],
        data: bytes,
    ) -> bytes:
        version, cipher = self._active_key(store, namespace, create=not store.db.in_transaction)
        nonce = os.urandom(NONCE_LEN)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, KIND_NAMESPACE, version, nonce)
        aad = _value_aad(header, namespace, purpose, item)
        return header + cipher.encrypt(nonce, data, aad)

    def decrypt(
        self, store: KeyTable, namespace: str, purpose: str, item: Sequence[str], blob: bytes
    ) -> bytes:
        where = f"{purpose} {'/'.join(item)!r} in namespace {namespace!r}"
        header = parse_header(blob)
        if header is None:
            raise CryptoError(f"{where} is not encrypted")
        if header.kind != KIND_NAMESPACE:
            raise CryptoError(f"{where} uses key kind {header.kind}, which this build lacks")
        cipher = self._cipher(store, namespace, header.key_version)
        aad = _value_aad(blob[:HEADER_LEN], namespace, purpose, item)
        try:
            return cipher.decrypt(header.nonce, blob[HEADER_LEN:], aad)
        except InvalidTag as exc:
            raise CryptoError(f"{where} failed to decrypt (altered or moved)") from exc

    def key_version(self, blob: bytes) -> int | None:
        """The namespace data key version `blob` is sealed under; None when it is not sealed
        under one (a plaintext from before encryption, a subject key's ciphertext). Lets an
        async backend load that version before the synchronous `decrypt`."""
        header = parse_header(blob)
        return None if header is None or header.kind != KIND_NAMESPACE else header.key_version

    def new_data_key(self, namespace: str, version: int) -> tuple[str, bytes]:
        """(master id, wrapped key) of a fresh data key for a backend that inserts its key
        rows itself (cumulo.store.postgres_keys). Nothing is cached: the row that wins the
        insert is read back and unwrapped, so racing gateways agree on one key."""
        return self._master.key_id, self._master.wrap(os.urandom(KEY_LEN), namespace, version)

    def keyed_hash(self, store: KeyTable, namespace: str, purpose: str, *parts: str) -> str:
        """HMAC-SHA256 (hex) of `parts` under the namespace's index key: what a row that
        must be found by name (a state key) is stored under instead of the name."""
        mac = self._index_macs.get(namespace)
        if mac is None:
            mac = self._index_macs[namespace] = hmac.new(
                self._index_key(store, namespace), digestmod="sha256"
            )
        # On the state hot path: netstrings (unambiguous, one encode) into a copy of the
        # keyed HMAC state (~5x faster than associated_data + hmac.new per call).
        message = "".join([f"{len(p)}:{p}," for p in (purpose, *parts)])
        h = mac.copy()
        h.update(message.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def _index_key(self, store: KeyTable, namespace: str) -> bytes:
        row = store.data_key(namespace, 1)
        if row is None:
            self._active_key(store, namespace, create=not store.db.in_transaction)
            row = store.data_key(namespace, 1)
            if row is None:
                raise CryptoError(f"namespace {namespace!r} has no data key version 1")
        data_key = self._unwrap(row)
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INDEX_INFO).derive(
            data_key
        )
        self._index_keys[namespace] = key
        return key

    # ------------------------------------------------------------ keys
    def _active_key(self, store: KeyTable, namespace: str, *, create: bool) -> tuple[int, AESGCM]:
        version = self._active.get(namespace)
        if version is None:
            version = store.latest_data_key_version(namespace)
            if version is None:
                if not create:
                    raise RuntimeError(f"namespace {namespace!r} has no data key: prepare() it")
                version = self._create_key(store, namespace, 1)
            self._active[namespace] = version
        return version, self._cipher(store, namespace, version)

    def _create_key(self, store: KeyTable, namespace: str, version: int) -> int:
        data_key = os.urandom(KEY_LEN)
        wrapped = self._master.wrap(data_key, namespace, version)
        if store.insert_data_key(namespace, version, self._master.key_id, wrapped, time.time()):
            self._ciphers[(namespace, version)] = AESGCM(data_key)
        # Otherwise another gateway created it first: theirs is loaded on first use.
        return version

    def _cipher(self, store: KeyTable, namespace: str, version: int) -> AESGCM:
        cipher = self._ciphers.get((namespace, version))
        if cipher is None:
            row = store.data_key(namespace, version)
            if row is None:
                raise CryptoError(f"namespace {namespace!r} has no data key version {version}")
            cipher = AESGCM(self._unwrap(row))
            self._ciphers[(namespace, version)] = cipher
        return cipher

    def _unwrap(self, row: DataKeyRecord) -> bytes:
        if row.master_id != self._master.key_id:
            raise CryptoError(
                f"data key {row.namespace!r} v{row.version} is wrapped by master key "
                f"{row.master_id}, not {self._master.key_id}"
            )
        return self._master.unwrap(row.wrapped, row.namespace, row.version)

    def rotate_data_key(self, store: SQLiteStore, namespace: str) -> int:
        """Start a new data key version for `namespace`: new writes use it, values under
        older versions keep decrypting (and move over when next written)."""
        data_key = os.urandom(KEY_LEN)
        with store.transaction():
            version = (store.latest_data_key_version(namespace) or 0) + 1
            wrapped = self._master.wrap(data_key, namespace, version)
            store.insert_data_key(namespace, version, self._master.key_id, wrapped, time.time())
        # Cached only after the commit, so a failed rotation leaves nothing behind.
        self._ciphers[(namespace, version)] = AESGCM(data_key)
        self._active[namespace] = version
        return version

    def namespace_cipher(
        self, store: SQLiteStore, namespace: str, version: int | None = None
    ) -> tuple[int, AESGCM]:
        """The namespace data key (the newest, or `version`) that wraps subject keys
        (privacy.keystore, key kind 1). Store thread, outside a transaction for a new one."""
        if version is None:
            return self._active_key(store, namespace, create=not store.db.in_transaction)
        return version, self._cipher(store, namespace, version)

    def _replace_master(self, master: MasterKey) -> None:
        self._master = master


def _value_aad(header: bytes, namespace: str, purpose: str, item: Sequence[str]) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    return associated_data(b"cumulo value v1", header, namespace, purpose, *item)


# ---------------------------------------------------------------- master rotation
@dataclass(frozen=True, slots=True)
class MasterRotation:
    old_key_id: str
    new_key_id: str
    data_keys: int  # wrapped keys re-wrapped
    audit_heads: int  # chain heads re-authenticated
    key_file: str | None  # where the new master now lives, when it is a file
    env_update_needed: bool  # the master came from CUMULO_MASTER_KEY: set it to the new key

    def public(self) -> dict[str, Any]:
        return {
            "old_key_id": self.old_key_id,
            "new_key_id": self.new_key_id,
            "data_keys": self.data_keys,
            "audit_heads": self.audit_heads,
            "key_file": self.key_file,
            "env_update_needed": self.env_update_needed,
        }


def rotate_master(store: SQLiteStore, new_key: bytes | None = None) -> MasterRotation:
    """Re-wrap every data key (and re-authenticate every audit chain head) under a new
    master, in one transaction. Runs on the store thread: `await store.call(rotate_master,
    store, key)`; a running gateway keeps serving (its data keys are cached unwrapped and
    the wrapped rows change atomically).

    A file master: `new_key` may be None (a random one is made); the new key is written
    to `master.key.next` before the commit and renamed over `master.key` after it, and a
    crash in between is finished at the next start. An env master: pass the new key and
    set CUMULO_MASTER_KEY to it before the next start."""
    encryptor = store.encryptor
    if not isinstance(encryptor, Encryptor):
        raise ConfigError("this store has no encryptor")
    old = encryptor.master
    if new_key is None:
        if old.source == "env":
            raise ConfigError(f"the master key comes from {MASTER_ENV}: pass the new key")
        new_key = generate_master_key()
    new = old.with_key(new_key)
    if new.key_id == old.key_id:
        raise ConfigError("the new master key is the current one")
    pending = _pending_path(old)
    if pending is not None:
        write_key_file(pending, new_key, exclusive=False)
    try:
        old_audit, new_audit = old.audit_key(), new.audit_key()
        with store.transaction():
            rows = store.all_data_keys()
            for row in rows:
                if row.master_id != old.key_id:
                    raise CryptoError(
                        f"data key {row.namespace!r} v{row.version} is wrapped by master key "
                        f"{row.master_id}, not the current {old.key_id}"
                    )
                data_key = old.unwrap(row.wrapped, row.namespace, row.version)
                wrapped = new.wrap(data_key, row.namespace, row.version)
                store.rewrap_data_key(row.namespace, row.version, new.key_id, wrapped)
            heads = 0
            for head in store.audit_heads().values():
                # Only heads that verify now are re-authenticated: a forged one must stay
                # detectable after the rotation, not be laundered by it.
                expected = audit_head_mac(old_audit, head.namespace, head.seq, head.hash)
                if hmac.compare_digest(expected, head.mac):
                    mac = audit_head_mac(new_audit, head.namespace, head.seq, head.hash)
                    store.audit_set_head_mac(head.namespace, mac)
                    heads += 1
            store.crypto_meta_set(_META_MASTER_ID, new.key_id)
    except BaseException:
        if pending is not None:
            with contextlib.suppress(FileNotFoundError):
                pending.unlink()
        raise
    if pending is not None and old.path is not None:
        os.replace(pending, old.path)
        _fsync_dir(old.path.parent)
    encryptor._replace_master(new)
    return MasterRotation(
        old_key_id=old.key_id,
        new_key_id=new.key_id,
        data_keys=len(rows),
        audit_heads=heads,
        key_file=str(old.path) if old.source == "file" else None,
        env_update_needed=old.source == "env",
    )


def rotate_data_key(store: SQLiteStore, namespace: str) -> int:
    """New data key version for a namespace (store thread); returns the version."""
    encryptor = store.encryptor
    if not isinstance(encryptor, Encryptor):
        raise ConfigError("this store has no encryptor")
    return encryptor.rotate_data_key(store, namespace)
