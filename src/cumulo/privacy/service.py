"""The privacy room as one object the platform holds: hot-path hooks (consent gate, log
redaction and diversion), worker rpc (`privacy.*`), subject requests, consent, retention.

Hot-path cost: an invocation without a subject of a function without `requires_consent`
adds one attribute test in Platform.invoke and one empty-dict test in the recorder. Consent
checks read an in-memory map (refreshed from the ledger at start, updated on every change).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

from cumulo.errors import BadRequest, Conflict, Forbidden, NotFound
from cumulo.privacy.data import JOB_MAGIC, Rooms, SubjectData, SubjectInvocation, SubjectLog
from cumulo.privacy.keystore import SubjectKeys
from cumulo.privacy.redact import KINDS, Redactor
from cumulo.privacy.requests import (
    COMPLETED,
    FAILED,
    FINISHED,
    PROCESSING,
    RECEIVED,
    REGIMES,
    TYPES,
    deadline,
    new_request_id,
    public,
)
from cumulo.privacy.subjects import Pseudonymizer, check_subject, make_clock
from cumulo.security.crypto import CryptoError
from cumulo.store.base import InvocationRecord, LogRecord
from cumulo.store.changes import Change, ChangeFeed
from cumulo.store.privacy import PrivacyRepository
from cumulo.store.subject_keys import NamespaceKeys, SubjectKeyStore
from cumulo.tasks import cancel_and_wait

if TYPE_CHECKING:
    from cumulo.runtime.spec import VersionSpec
    from cumulo.security.audit import AuditLog

log = logging.getLogger("cumulo.privacy")

FLUSH_INTERVAL_S = 0.2
RECENT = 4096  # finished invocations whose late log lines (a last stdout flush) still divert
PURPOSE_RE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
MAX_SOURCE = 200
ACTOR = "cumulo"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """ "30d", "12h", "90m", "45s", "2w" → seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30d, 12h, 90m or 45s")
    return float(match.group(1)) * _UNITS[match.group(2)]


def check_purpose(purpose: object) -> str:
    if not isinstance(purpose, str) or not PURPOSE_RE.fullmatch(purpose):
        raise BadRequest(
            "a consent purpose is 1-64 characters from a-z 0-9 _.:- (e.g. marketing)",
            code="invalid_purpose",
        )
    return purpose


@dataclass(frozen=True, slots=True)
class PrivacySettings:
    retention_s: float | None = None  # default TTL of every namespace; None: keep forever
    redact: tuple[str, ...] = KINDS
    purge_interval_s: float = 3600.0


class PrivacyService:
    """The room over its repositories: `repo` (its own rows), `key_store` (subject keys:
    not the main database), `namespace_keys` (the data keys that wrap them) and `rooms`
    (the other rooms an erasure, export or purge reaches)."""

    def __init__(
        self,
        repo: PrivacyRepository,
        key_store: SubjectKeyStore,
        namespace_keys: NamespaceKeys,
        rooms: Rooms,
        audit: AuditLog,
        settings: PrivacySettings | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings or PrivacySettings()
        self.repo = repo
        self.audit = audit
        self.keys = SubjectKeys(key_store, namespace_keys)
        self.data = SubjectData(repo, self.keys, rooms)
        self.redactor = Redactor(self.settings.redact)
        self.clock = clock or make_clock()
        self._active: dict[str, str] = {}  # invocation id -> subject, while it runs
        self._recent: dict[str, str] = {}
        self._consent: dict[tuple[str, str, str], bool] = {}
        self._retention: dict[str, float] = {}
        self._logs: list[SubjectLog] = []
        self._invocations: list[SubjectInvocation] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()  # one request processed at a time
        # Told of consent, erasure and retention changes, for the other gateways' caches.
        self.changes: ChangeFeed | None = None

    @property
    def pseudo(self) -> Pseudonymizer:
        return self.data.pseudo

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.data.open()
        self._consent = await self.data.consent_current()
        self._retention = await self.data.retention_get()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._flush_forever()),
            loop.create_task(self._sweep_forever()),
        ]

    async def reload(self) -> None:
        """Another gateway changed consent, erased a subject or set a retention
        (store/changes.py): the hot path's caches are read again."""
        self._consent = await self.data.consent_current()
        self._retention = await self.data.retention_get()

    async def _announce(self, namespace: str) -> None:
        if self.changes is not None:
            await self.changes.publish(Change("privacy", namespace))

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        await self.flush()
        await self.data.close()

    # ------------------------------------------------------------ hot path
    def enter(self, spec: VersionSpec, frame: dict[str, Any], subject: str | None) -> None:
        """Before an invocation: the consent gate, and the subject into the frame (the
        worker's ctx.subject) and into the map that routes its log lines."""
        purpose = spec.config.requires_consent
        if purpose and (subject is None or not self.has_consent(spec.namespace, subject, purpose)):
            raise Forbidden(
                f"this function requires the subject's consent to {purpose!r}",
                code="consent_required",
            )
        if subject is not None:
            frame["sj"] = subject
            self._active[frame["id"]] = subject

    def has_consent(self, namespace: str, subject: str, purpose: str) -> bool:
        key = (namespace, self.pseudo.pseudonym(namespace, subject), purpose)
        return self._consent.get(key, False)

    def log(self, record: LogRecord) -> LogRecord | None:
        """The recorder's guard: redact, and keep a subject's lines for sealed storage."""
        if self.redactor.enabled:
            record = replace(
                record,
                message=self.redactor.text(record.message),
                fields=self.redactor.value(record.fields) if record.fields else record.fields,
            )
        if self._active or self._recent:
            iid = record.invocation_id
            subject = self._active.get(iid) or self._recent.get(iid)
            if subject is not None:
                self._logs.append(SubjectLog(record, subject))
                return None
        return record

    def invocation(self, record: InvocationRecord) -> None:
        if not self._active:
            return
        subject = self._active.pop(record.id, None)
        if subject is not None:
            self._invocations.append(SubjectInvocation(record, subject))
            self._recent[record.id] = subject
            if len(self._recent) > RECENT:
                del self._recent[next(iter(self._recent))]

    async def flush(self) -> None:
        logs, self._logs = self._logs, []
        invocations, self._invocations = self._invocations, []
        if logs or invocations:
            await self.data.append(logs, invocations)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception:
                log.exception("privacy: flushing subject logs failed")

    # ------------------------------------------------------------ worker rpc
    async def handle_rpc(self, spec: VersionSpec, op: str, args: dict[str, Any]) -> Any:
        ns, fn = spec.namespace, spec.function
        subject = check_subject(args.get("subject"))
        if op == "privacy.has_consent":
            return self.has_consent(ns, subject, check_purpose(args.get("purpose")))
        key = args.get("key")
        if not isinstance(key, str) or not 0 < len(key) <= 512:
            raise BadRequest("state keys are non-empty strings of at most 512 characters")
        now = self.clock()
        if op == "privacy.state.get":
            return await self.data.state_get(ns, fn, subject, key)
        if op == "privacy.state.put":
            value = args.get("value")
            if len(orjson.dumps(value)) > 1024 * 1024:
                raise BadRequest("state values are limited to 1048576 bytes")
            expected = args.get("expected_version")
            if expected is not None and (not isinstance(expected, int) or expected < 0):
                raise BadRequest("expected_version must be a non-negative integer")
            return await self.data.state_put(ns, fn, subject, key, value, expected, now)
        if op == "privacy.state.incr":
            by = args.get("by", 1)
            if not isinstance(by, int) or isinstance(by, bool):
                raise BadRequest("incr takes an integer")
            try:
                return await self.data.state_incr(ns, fn, subject, key, by, now)
            except ValueError as exc:
                raise BadRequest(f"state key {key!r} does not hold an integer") from exc
        if op == "privacy.state.delete":
            return await self.data.state_delete(ns, fn, subject, key)
        raise BadRequest(f"unknown operation {op!r}")

    # ------------------------------------------------------------ async jobs
    async def seal_job(self, namespace: str, function: str, subject: str, body: bytes) -> bytes:
        return await self.data.seal_job(namespace, function, subject, body)

    @staticmethod
    def is_subject_job(body: bytes) -> bool:
        return body[:3] == JOB_MAGIC

    async def open_job(self, namespace: str, function: str, body: bytes) -> tuple[str, bytes]:
        try:
            return await self.data.open_job(namespace, function, body)
        except CryptoError:
            raise NotFound("the job's data subject was erased", code="subject_erased") from None

    # ------------------------------------------------------------ consent
    async def set_consent(
        self, namespace: str, subject: str, purpose: str, granted: bool, source: str
    ) -> dict[str, Any]:
        check_subject(subject)
        check_purpose(purpose)
        now = self.clock()
        source = source[:MAX_SOURCE]
        await self.data.consent_append(namespace, subject, purpose, granted, source, now)
        pseudonym = self.pseudo.pseudonym(namespace, subject)
        self._consent[(namespace, pseudonym, purpose)] = granted
        await self._announce(namespace)
        self.audit.record(
            namespace,
            ACTOR,
            "privacy.consent.grant" if granted else "privacy.consent.withdraw",
            purpose,
            details={"pseudonym": pseudonym, "purpose": purpose},
        )
        return {"purpose": purpose, "granted": granted, "ts": now}

    async def consent_of(self, namespace: str, subject: str) -> dict[str, Any]:
        check_subject(subject)
        try:
            history = await self.data.consent_history(namespace, subject)
        except CryptoError:
            history = []
        current: dict[str, Any] = {}
        for event in history:
            current[event["purpose"]] = {"granted": event["granted"], "ts": event["ts"]}
        return {"namespace": namespace, "purposes": current, "history": history}

    # ------------------------------------------------------------ requests
    async def create_request(
        self, namespace: str, kind: str, regime: str, subject: str, *, process: bool = True
    ) -> dict[str, Any]:
        if kind not in TYPES:
            raise BadRequest(f"type must be one of {', '.join(TYPES)}", code="invalid_type")
        if regime not in REGIMES:
            raise BadRequest(f"regime must be one of {', '.join(REGIMES)}", code="invalid_regime")
        check_subject(subject)
        pseudonym = self.pseudo.pseudonym(namespace, subject)
        now = self.clock()
        row = await self.repo.create_request(
            new_request_id(now),
            namespace,
            kind,
            regime,
            pseudonym,
            RECEIVED,
            now,
            deadline(regime, now),
        )
        self.audit.record(
            namespace,
            ACTOR,
            "privacy.request.received",
            row.id,
            details={"request_id": row.id, "type": kind, "regime": regime, "due_at": row.due_at},
        )
        if process:
            return await self.process(row.id, subject)
        return public(row, self.clock())

    async def get_request(self, rid: str) -> dict[str, Any]:
        row = await self.repo.get_request(rid)
        if row is None:
            raise NotFound(f"request {rid!r} not found", code="request_not_found")
        return public(row, self.clock())

    async def list_requests(self, namespace: str | None) -> list[dict[str, Any]]:
        await self.check_overdue()
        now = self.clock()
        return [public(r, now) for r in await self.repo.list_requests(namespace)]

    async def process(self, rid: str, subject: str) -> dict[str, Any]:
        async with self._lock:
            row = await self.repo.get_request(rid)
            if row is None:
                raise NotFound(f"request {rid!r} not found", code="request_not_found")
            check_subject(subject)
            pseudonym = self.pseudo.pseudonym(row.namespace, subject)
            if pseudonym != row.pseudonym:
                raise Forbidden("the subject does not match the request", code="subject_mismatch")
            if row.status in FINISHED:
                raise Conflict(f"request {rid!r} is {row.status}", code="request_finished")
            ns = row.namespace
            await self._set_status(rid, PROCESSING)
            try:
                if row.type == "erasure":
                    await self.flush()  # lines still buffered are erased too
                    counts = await self.data.erase(ns, pseudonym)
                    self._forget(ns, pseudonym)
                    await self._announce(ns)
                    await self._set_status(rid, COMPLETED, counts=counts)
                    # The receipt: no personal data, only the pseudonym and counts.
                    self.audit.record(
                        ns,
                        ACTOR,
                        "privacy.erasure.completed",
                        rid,
                        details={"request_id": rid, "pseudonym": pseudonym, "deleted": counts},
                    )
                else:
                    await self.flush()
                    exported = await self.data.export(ns, pseudonym)
                    manifest = {name: len(items) for name, items in exported.items()}
                    document = {
                        "format": "cumulo-privacy-export/1",
                        "request_id": rid,
                        "type": row.type,
                        "regime": row.regime,
                        "namespace": ns,
                        "subject": subject,
                        "generated_at": self.clock(),
                        "manifest": manifest,
                        **exported,
                    }
                    blob = await self.keys.sealed(
                        ns, pseudonym, "export", (rid,), orjson.dumps(document)
                    )
                    await self._set_status(rid, COMPLETED, counts=manifest, result=blob)
                    self.audit.record(
                        ns,
                        ACTOR,
                        f"privacy.{row.type}.completed",
                        rid,
                        details={"request_id": rid, "pseudonym": pseudonym, "items": manifest},
                    )
            except Exception as exc:
                log.exception("privacy: request %s failed", rid)
                await self._set_status(rid, FAILED, error=type(exc).__name__)
                self.audit.record(
                    ns,
                    ACTOR,
                    "privacy.request.failed",
                    rid,
                    "error",
                    details={"request_id": rid, "error": type(exc).__name__},
                )
            return await self.get_request(rid)

    async def _set_status(
        self,
        rid: str,
        status: str,
        *,
        counts: dict[str, int] | None = None,
        error: str | None = None,
        result: bytes | None = None,
    ) -> None:
        await self.repo.set_request_status(
            rid,
            status,
            self.clock(),
            finished=status in FINISHED,
            counts=orjson.dumps(counts).decode() if counts is not None else None,
            error=error,
            result=result,
        )

    def _forget(self, namespace: str, pseudonym: str) -> None:
        """Erasure purges the caches: consent, and the subject key (done by the keystore)."""
        for key in [k for k in self._consent if k[0] == namespace and k[1] == pseudonym]:
            del self._consent[key]

    async def export(self, rid: str) -> dict[str, Any]:
        row = await self.repo.get_request(rid)
        if row is None:
            raise NotFound(f"request {rid!r} not found", code="request_not_found")
        blob = await self.repo.request_result(rid)
        if row.type == "erasure" or row.status != COMPLETED or blob is None:
            raise NotFound(f"request {rid!r} has no export", code="export_not_found")
        try:
            raw = await self.keys.opened(row.namespace, row.pseudonym, "export", (rid,), blob)
        except CryptoError:
            raise NotFound("the subject was erased since", code="subject_erased") from None
        document: dict[str, Any] = orjson.loads(raw)
        return document

    async def check_overdue(self) -> int:
        rows = await self.repo.newly_overdue(self.clock())
        for row in rows:
            log.warning("privacy: request %s (%s) is past its deadline", row.id, row.type)
            self.audit.record(
                row.namespace,
                ACTOR,
                "privacy.request.overdue",
                row.id,
                "alert",
                details={
                    "request_id": row.id,
                    "type": row.type,
                    "regime": row.regime,
                    "due_at": row.due_at,
                    "pseudonym": row.pseudonym,
                },
            )
        return len(rows)

    # ------------------------------------------------------------ retention
    def ttl_of(self, namespace: str) -> float | None:
        return self._retention.get(namespace, self.settings.retention_s)

    async def set_retention(self, namespace: str, ttl_s: float | None) -> None:
        await self.data.retention_set(namespace, ttl_s)
        if ttl_s is None:
            self._retention.pop(namespace, None)
        else:
            self._retention[namespace] = ttl_s
        await self._announce(namespace)
        self.audit.record(
            namespace, ACTOR, "privacy.retention.set", namespace, details={"ttl_s": ttl_s}
        )

    async def retention(self) -> dict[str, Any]:
        namespaces = await self.data.namespaces()
        return {
            "default_s": self.settings.retention_s,
            "namespaces": {ns: self.ttl_of(ns) for ns in namespaces},
        }

    async def purge(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Delete what is past each namespace's TTL (only `namespace`'s when given); the
        evidence (cut-off and counts per table) goes to the audit log and is returned."""
        await self.flush()
        now = self.clock()
        evidence = []
        for ns in await self.data.namespaces():
            if namespace is not None and ns != namespace:
                continue
            ttl = self.ttl_of(ns)
            if ttl is None:
                continue
            cutoff = now - ttl
            counts = await self.data.purge(ns, cutoff)
            item = {"namespace": ns, "cutoff": cutoff, "ttl_s": ttl, "purged": counts}
            self.audit.record(ns, ACTOR, "privacy.retention.purge", ns, details=item)
            evidence.append(item)
        return evidence

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.purge_interval_s)
            try:
                await self.purge()
                await self.check_overdue()
            except Exception:
                log.exception("privacy: the retention sweep failed")

    # ------------------------------------------------------------ records of processing
    async def report(self, namespace: str | None) -> dict[str, Any]:
        functions = [
            {
                "namespace": ns,
                "function": fn,
                "data_categories": list(config.get("data_categories") or []),
                "requires_consent": config.get("requires_consent") or None,
            }
            for ns, fn, config in await self.data.functions()
            if namespace is None or ns == namespace
        ]
        subjects = await self.data.subject_counts()
        retention = await self.retention()
        if namespace is not None:
            subjects = {k: v for k, v in subjects.items() if k == namespace}
            retention["namespaces"] = {
                k: v for k, v in retention["namespaces"].items() if k == namespace
            }
        return {
            "functions": functions,
            "subjects": subjects,
            "retention": retention,
            "redaction": list(self.redactor.kinds),
        }
