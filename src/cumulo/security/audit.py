"""The tamper-evident audit log: admin actions and auth failures, hash-chained per namespace.

- Rows: ``hash = sha256(prev_hash || canonical_json(row))``, where the first row of a
  namespace chains from ``sha256("cumulo audit genesis" || namespace)`` and the canonical
  row holds namespace, seq, ts, actor, action, target, result, source and details. An edited,
  deleted or reordered row breaks the chain at that row.
- Heads: one per namespace (seq, hash) in `audit_heads`, apart from the rows and written in
  the same transaction, authenticated by an HMAC under a key derived from the master key.
  Deleting the newest rows (truncation) leaves the chain shorter than its head; rewriting the
  whole chain with recomputed hashes leaves it ending somewhere else than its head; a forged
  head fails its HMAC (forging one needs the master key).
- Registry: a head under the reserved namespace "" counts the namespaces ever recorded, so
  deleting a namespace's whole chain, head included, is detected.
- Anchor: `<data-dir>/audit.anchor` keeps every head's high-water mark outside the database,
  so restoring an older, validly authenticated head together with truncating the rows after
  it (a rollback) is detected too. It only ever adds alarms: it is not trusted to clear one.
- Details are redacted before they are buffered: fields named like secret, value, key,
  token, password or authorization keep no value, strings shaped like API keys or bearer
  credentials are scrubbed anywhere, and the caller passes metadata only.

`record()` only appends to a buffer (cheap on the request path); a task flushes batches
every 0.2 s and `stop()` flushes the rest, like observability.logs.Recorder.

Storage is an `AuditRepository` (cumulo.store.audit). Several gateways may append to one
chain: a flush hands the repository a `link` function, which chains the batch onto the
heads the repository reads inside its atomic step (holding those chains), so nothing a
gateway saw before (no head, no seq) is trusted. The anchor file is re-read at each flush
for the same reason (another gateway on the data dir may have moved it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cumulo.security.crypto import Encryptor, audit_head_mac
from cumulo.store.audit import (
    REGISTRY,
    AuditAppend,
    AuditHeadRecord,
    AuditRepository,
    AuditRowRecord,
    AuditView,
    ChainLink,
)
from cumulo.tasks import cancel_and_wait

log = logging.getLogger("cumulo.audit")

FLUSH_INTERVAL_S = 0.2
MAX_BUFFER = 100_000
PAGE = 5000
ANCHOR_FILE = "audit.anchor"

REDACTED = "[redacted]"
MAX_TEXT = 512
MAX_ITEMS = 50
MAX_DEPTH = 4
_SENSITIVE = re.compile(
    r"secret|value|key|token|passw|pwd|authori[sz]|credential|cookie|private|signature", re.I
)
# Names that merely point at a sensitive thing are metadata, not the thing: key_id, secret_name.
_SAFE_SUFFIXES = ("_id", "_ids", "_name", "_names", "_count", "_scopes")
# API keys, bearer credentials and JWTs, wherever they turn up in a string.
_CREDENTIAL = re.compile(r"cmo_[0-9A-Za-z]{8,}|(?i:bearer)\s+\S+|eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*")


# ---------------------------------------------------------------- redaction
def _sensitive(name: str) -> bool:
    lowered = name.lower()
    return bool(_SENSITIVE.search(lowered)) and not lowered.endswith(_SAFE_SUFFIXES)


def scrub(text: str, limit: int = MAX_TEXT) -> str:
    """A string with anything shaped like a credential removed, cut to `limit`."""
    return _CREDENTIAL.sub(REDACTED, text)[:limit]


def redact(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """Details safe to keep forever: sensitive fields emptied, credentials scrubbed, only
    plain JSON types (anything else becomes its type name: a repr may hold a secret)."""
    if not details:
        return {}
    cleaned = _clean(details, 0)
    return cleaned if isinstance(cleaned, dict) else {}


def _clean(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if depth >= MAX_DEPTH:
        return "<nested>"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in list(value.items())[:MAX_ITEMS]:
            name = scrub(str(key), 64)
            out[name] = REDACTED if _sensitive(str(key)) else _clean(item, depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(item, depth + 1) for item in list(value)[:MAX_ITEMS]]
    return f"<{type(value).__name__}>"


# ---------------------------------------------------------------- chain arithmetic
@dataclass(frozen=True, slots=True)
class AuditEvent:
    ts: float
    namespace: str
    actor: str
    action: str
    target: str
    result: str
    source: str
    details: str  # canonical JSON of the redacted details


def genesis(namespace: str) -> bytes:
    return hashlib.sha256(b"cumulo audit genesis\x00" + namespace.encode()).digest()


def canonical(row: AuditRowRecord) -> bytes:
    """The hashed form of a row: sorted-key JSON, details embedded as their stored text."""
    return orjson.dumps(
        {
            "namespace": row.namespace,
            "seq": row.seq,
            "ts": row.ts,
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "result": row.result,
            "source": row.source,
            "details": row.details,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def row_hash(prev_hash: bytes, row: AuditRowRecord) -> bytes:
    return hashlib.sha256(prev_hash + canonical(row)).digest()


def _names_hash(names: Sequence[str]) -> bytes:
    return hashlib.sha256("\x00".join(sorted(names)).encode()).digest()


# ---------------------------------------------------------------- reports
@dataclass(frozen=True, slots=True)
class ChainReport:
    namespace: str
    ok: bool
    rows: int  # rows checked before the first problem (all of them when ok)
    head_seq: int | None
    first_bad_seq: int | None = None
    reason: str | None = None  # edited, deleted, reordered, truncated, appended, rewritten, ...
    message: str = "intact"

    def public(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "ok": self.ok,
            "rows": self.rows,
            "head_seq": self.head_seq,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class AuditReport:
    ok: bool
    chains: list[ChainReport]
    problems: list[str] = field(default_factory=list)  # not tied to one namespace

    def public(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chains": [c.public() for c in self.chains],
            "problems": list(self.problems),
        }

    def first_problem(self) -> str | None:
        """One line for the CLI: the first broken chain or log-wide problem."""
        for chain in self.chains:
            if not chain.ok:
                where = f" at seq {chain.first_bad_seq}" if chain.first_bad_seq else ""
                return f"namespace {chain.namespace!r}: {chain.reason}{where}: {chain.message}"
        return self.problems[0] if self.problems else None


# ---------------------------------------------------------------- the log
class AuditLog:
    def __init__(
        self,
        repo: AuditRepository,
        encryptor: Encryptor,
        *,
        anchor_path: Path | None = None,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        self.repo = repo
        self._encryptor = encryptor
        self._anchor_path = anchor_path
        self._interval = flush_interval_s
        self._max_buffer = max_buffer
        self._buffer: list[AuditEvent] = []
        self._dropped: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._order: asyncio.Lock | None = None
        self._order_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ request path
    def record(
        self,
        namespace: str,
        actor: str | None,
        action: str,
        target: str = "",
        result: str | int = "ok",
        source: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Buffer one event; never blocks, never touches the database.

        namespace: the tenant acted on ("*" for platform-wide or unknown); actor: the key id
        (None: anonymous); action: e.g. "secret.set", "key.create", "auth.failure"; target:
        what was acted on (a name, never a value); result: "ok", "denied", "error" or a
        status; source: the client address; details: metadata only (redacted anyway)."""
        # Never raises on the request path: an unknown namespace goes to the "*" chain.
        namespace = scrub(namespace, 128) or "*"
        if len(self._buffer) >= self._max_buffer:
            # Shedding under a flood (say, of auth failures) is itself recorded at the flush;
            # counted under "*" once many namespaces shed, so the counters stay bounded too.
            if namespace not in self._dropped and len(self._dropped) >= 100:
                namespace = "*"
            self._dropped[namespace] = self._dropped.get(namespace, 0) + 1
            return
        self._buffer.append(
            AuditEvent(
                ts=time.time(),
                namespace=namespace,
                actor=scrub(actor or "anonymous", 128),
                action=scrub(action, 128),
                target=scrub(target),
                result=scrub(str(result), 64),
                source=scrub(source or "", 128),
                details=orjson.dumps(redact(details), option=orjson.OPT_SORT_KEYS).decode(),
            )
        )

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self.flush()

    def _ordered(self) -> asyncio.Lock:
        # One lock per event loop (a lock that ever waited is bound to its loop, and tests
        # drive one log from several `asyncio.run`s).
        loop = asyncio.get_running_loop()
        if self._order is None or self._order_loop is not loop:
            self._order, self._order_loop = asyncio.Lock(), loop
        return self._order

    async def flush(self) -> None:
        """Append what is buffered; returns once it is committed (raises when it could not
        be, keeping the events for the next flush)."""
        events, self._buffer = self._buffer, []
        for namespace, count in self._dropped.items():
            details = orjson.dumps({"count": count}).decode()
            events.append(
                AuditEvent(
                    time.time(), namespace, "cumulo", "audit.dropped", "", "error", "", details
                )
            )
        self._dropped = {}
        if not events:
            return
        committed = False
        try:
            # Batches are taken and queued for the lock in one step of the event loop, and
            # the lock is FIFO: this gateway's batches get their seqs in the order recorded.
            async with self._ordered():
                done = await self.repo.append([ev.namespace for ev in events], self._link(events))
                committed = True
                await asyncio.to_thread(self._advance_anchor, done)
        except BaseException:
            if not committed:
                # Kept for the next flush rather than lost; the buffer bound still applies.
                self._buffer[:0] = events[: self._max_buffer]
            raise

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:
                log.exception("audit flush failed; retrying")

    async def verify_async(self, namespace: str | None = None) -> AuditReport:
        """Flush what is buffered, then verify."""
        await self.flush()
        return await self.verify(namespace)

    # ------------------------------------------------------------ appending
    def _link(self, events: Sequence[AuditEvent]) -> ChainLink:
        """The chain link of a batch, computed by the repository inside its atomic step
        from the heads it read there (the seqs and previous hashes are never guessed)."""

        def link(
            current: Mapping[str, AuditHeadRecord],
        ) -> tuple[list[AuditRowRecord], list[AuditHeadRecord]]:
            audit_key = self._encryptor.master.audit_key()
            heads = dict(current)
            rows: list[AuditRowRecord] = []
            for ev in events:
                head = heads.get(ev.namespace)
                prev = head.hash if head is not None else genesis(ev.namespace)
                seq = head.seq + 1 if head is not None else 1
                row = AuditRowRecord(
                    ev.namespace,
                    seq,
                    ev.ts,
                    ev.actor,
                    ev.action,
                    ev.target,
                    ev.result,
                    ev.source,
                    ev.details,
                    prev,
                    b"",
                )
                digest = row_hash(prev, row)
                rows.append(dataclasses.replace(row, hash=digest))
                mac = audit_head_mac(audit_key, ev.namespace, seq, digest)
                heads[ev.namespace] = AuditHeadRecord(ev.namespace, seq, digest, mac)
            changed = [heads[ns] for ns in dict.fromkeys(ev.namespace for ev in events)]
            new = [h.namespace for h in changed if h.namespace not in current]
            if new:
                # The registry only counts up: a chain deleted earlier stays missing from
                # it. A chain starting means `current` holds every head (the contract).
                old = current.get(REGISTRY)
                count = (old.seq if old is not None else 0) + len(new)
                digest = _names_hash([n for n in heads if n != REGISTRY])
                mac = audit_head_mac(audit_key, REGISTRY, count, digest)
                changed.append(AuditHeadRecord(REGISTRY, count, digest, mac))
            return rows, changed

        return link

    # ------------------------------------------------------------ verification
    async def verify(self, namespace: str | None = None) -> AuditReport:
        """Check one namespace's chain, or every chain and the registry (namespace=None),
        in one committed state of the log (appends landing meanwhile are not seen)."""
        audit_key = self._encryptor.master.audit_key()
        problems: list[str] = []
        anchor: dict[str, tuple[int, bytes]] = {}
        try:
            # Before the snapshot: a mark is written after its rows commit, so every mark
            # read now is within the state the snapshot sees (no false rollback alarm).
            anchor = await asyncio.to_thread(self._read_anchor)
        except ValueError as exc:
            problems.append(str(exc))
        async with self.repo.snapshot() as view:
            heads = await view.heads()
            if namespace is not None:
                names = [namespace]
            else:
                recorded = set(await view.namespaces())
                names = sorted((set(heads) | recorded | set(anchor)) - {REGISTRY})
                problems += self._check_registry(heads, audit_key)
            chains = [
                await self._verify_chain(view, ns, heads.get(ns), anchor.get(ns), audit_key)
                for ns in names
            ]
        return AuditReport(
            ok=not problems and all(c.ok for c in chains), chains=chains, problems=problems
        )

    def _check_registry(self, heads: dict[str, AuditHeadRecord], audit_key: bytes) -> list[str]:
        names = [n for n in heads if n != REGISTRY]
        registry = heads.get(REGISTRY)
        if registry is None:
            return ["the namespace registry head is missing"] if names else []
        mac = audit_head_mac(audit_key, REGISTRY, registry.seq, registry.hash)
        if not hmac.compare_digest(mac, registry.mac):
            return ["the namespace registry head fails its HMAC"]
        if registry.seq > len(names):
            return [
                f"{registry.seq - len(names)} namespace chain(s) were deleted "
                f"({registry.seq} recorded, {len(names)} present)"
            ]
        if registry.seq < len(names) or registry.hash != _names_hash(names):
            return ["namespace chains were added or renamed outside the audit log"]
        return []

    async def _verify_chain(
        self,
        view: AuditView,
        namespace: str,
        head: AuditHeadRecord | None,
        mark: tuple[int, bytes] | None,
        audit_key: bytes,
    ) -> ChainReport:
        head_seq = head.seq if head is not None else None

        def bad(seq: int | None, reason: str, message: str) -> ChainReport:
            return ChainReport(namespace, False, checked, head_seq, seq, reason, message)

        prev, expected, checked = genesis(namespace), 1, 0
        hash_at_mark: bytes | None = None
        after = 0
        while rows := await view.rows(namespace, after, PAGE):
            for row in rows:
                if row.seq != expected:
                    gap = (
                        f"row {expected}"
                        if row.seq == expected + 1
                        else (f"rows {expected}..{row.seq - 1}")
                    )
                    return bad(expected, "deleted", f"{gap} of the chain are missing")
                if row.prev_hash != prev:
                    return await self._broken_link(view, namespace, row, checked, head_seq)
                if row_hash(prev, row) != row.hash:
                    return bad(row.seq, "edited", f"row {row.seq} was altered after it was written")
                if mark is not None and row.seq == mark[0]:
                    hash_at_mark = row.hash
                prev, expected, checked = row.hash, expected + 1, checked + 1
            after = rows[-1].seq
        last = expected - 1
        if head is None:
            if last:
                return bad(1, "unauthenticated", "the chain has rows but no authenticated head")
        else:
            mac = audit_head_mac(audit_key, namespace, head.seq, head.hash)
            if not hmac.compare_digest(mac, head.mac):
                return bad(head.seq, "head_forged", "the chain head fails its HMAC")
            if last < head.seq:
                return bad(
                    last + 1, "truncated", f"rows {last + 1}..{head.seq} were removed from the end"
                )
            if last > head.seq:
                return bad(
                    head.seq + 1, "appended", f"rows after {head.seq} were added outside the log"
                )
            if prev != head.hash:
                return bad(
                    None,
                    "rewritten",
                    "the chain no longer ends in its authenticated head: rows were rewritten "
                    "with recomputed hashes",
                )
        if mark is not None:
            if mark[0] > last:
                return bad(
                    last + 1,
                    "truncated",
                    f"the chain reached seq {mark[0]} (per {ANCHOR_FILE}) but now ends at "
                    f"{last}: rows and head were rolled back",
                )
            if hash_at_mark != mark[1]:
                return bad(
                    None,
                    "rewritten",
                    f"row {mark[0]} differs from the one recorded in {ANCHOR_FILE}",
                )
        return ChainReport(namespace, True, checked, head_seq)

    async def _broken_link(
        self,
        view: AuditView,
        namespace: str,
        row: AuditRowRecord,
        checked: int,
        head_seq: int | None,
    ) -> ChainReport:
        """Why `row` does not follow the row before it."""
        other = await view.seq_of_hash(namespace, row.prev_hash)
        if other is not None:
            reason, message = "reordered", f"row {row.seq} was written after row {other}"
        elif row_hash(row.prev_hash, row) == row.hash:
            # The row itself is intact, so what it chained to was removed.
            reason, message = "deleted", f"the row written before row {row.seq} is missing"
        else:
            reason, message = "edited", f"row {row.seq} was altered after it was written"
        return ChainReport(namespace, False, checked, head_seq, row.seq, reason, message)

    # ------------------------------------------------------------ the anchor file
    def _read_anchor(self) -> dict[str, tuple[int, bytes]]:
        if self._anchor_path is None:
            return {}
        try:
            raw = orjson.loads(self._anchor_path.read_bytes())
            return {
                str(ns): (int(seq), bytes.fromhex(str(digest)))
                for ns, (seq, digest) in dict(raw["heads"]).items()
            }
        except FileNotFoundError:
            return {}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self._anchor_path} is unreadable: {type(exc).__name__}") from None

    def _advance_anchor(self, done: AuditAppend) -> None:
        """Move the marks of the heads an append wrote (on a worker thread)."""
        if self._anchor_path is None:
            return
        try:
            # Read again each time, not cached: another gateway on this data dir may have
            # moved marks since, and a stale copy written back would move them back.
            anchor = self._read_anchor()
        except ValueError:
            # Left as it is for an operator to inspect; verify reports it.
            log.warning("%s is unreadable; it is not updated", self._anchor_path)
            return
        before, after = done.before, done.after
        for namespace, head in after.items():
            if namespace == REGISTRY:
                continue
            old, mark = before.get(namespace), anchor.get(namespace)
            if mark is not None and (
                old is None or mark[0] > old.seq or (mark[0] == old.seq and mark[1] != old.hash)
            ):
                # The database is behind its own high-water mark (rolled back), or another
                # gateway's later append marked it already: keep the mark.
                continue
            anchor[namespace] = (head.seq, head.hash)
        data = orjson.dumps(
            {"version": 1, "heads": {ns: [seq, h.hex()] for ns, (seq, h) in anchor.items()}}
        )
        # Per process and thread, so two writers never share one temporary file.
        tmp = self._anchor_path.with_name(
            f"{self._anchor_path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        )
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self._anchor_path)
        except OSError as exc:
            # The rows are committed: failing here would have the flush write them twice.
            # A lagging anchor only weakens the rollback check until the next flush.
            log.warning("could not update %s: %s", self._anchor_path, exc.strerror)
