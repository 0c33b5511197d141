"""Subject data: sealed writes, exports, erasure and retention purges, over repositories.

The privacy room's own rows go through `PrivacyRepository`; rows of a subject held by other
rooms (job bodies sealed to it, plain invocation records of its invocations, old log lines)
are reached through those rooms' repositories: erasure asks each room to erase the subject.
Values are sealed here, under the subject key (keystore.SubjectKeys), before a repository
sees them."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from cumulo.privacy.keystore import SubjectKeys
from cumulo.privacy.subjects import Pseudonymizer
from cumulo.security.crypto import CryptoError
from cumulo.store.base import InvocationRecord, LogRecord
from cumulo.store.control import ControlRepository
from cumulo.store.invocations import InvocationRepository
from cumulo.store.jobs import JobQueueRepository
from cumulo.store.logs import LogRepository
from cumulo.store.privacy import PrivacyRepository, SealedInvocation, SealedLog

JOB_MAGIC = b"\xffCJ"  # a job body sealed to a subject: magic, raw pseudonym, ciphertext
PSEUDONYM_BYTES = 32
JOB_PREFIX_LEN = len(JOB_MAGIC) + PSEUDONYM_BYTES
EXPORT_PARTS = ("state", "invocations", "logs", "jobs", "consent")


@dataclass(frozen=True, slots=True)
class SubjectLog:
    record: LogRecord
    subject: str


@dataclass(frozen=True, slots=True)
class SubjectInvocation:
    record: InvocationRecord
    subject: str


@dataclass(frozen=True, slots=True)
class Rooms:
    """The other rooms' repositories an erasure, export or purge reaches. `jobs` is a
    callable: the composition root builds the job queue after the privacy room."""

    invocations: InvocationRepository
    logs: LogRepository
    control: ControlRepository
    jobs: Callable[[], JobQueueRepository]


def job_prefix(pseudonym: str) -> bytes:
    return JOB_MAGIC + bytes.fromhex(pseudonym)


class SubjectData:
    def __init__(self, repo: PrivacyRepository, keys: SubjectKeys, rooms: Rooms) -> None:
        self.repo = repo
        self.keys = keys
        self.rooms = rooms
        self.pseudo = Pseudonymizer(b"")  # replaced in open()

    async def open(self) -> None:
        self.pseudo = Pseudonymizer(await self.keys.open())
        await self.repo.open()

    async def close(self) -> None:
        await self.keys.close()

    # ------------------------------------------------------------ sealing helpers
    def _seal(self, ns: str, p: str, purpose: str, item: tuple[str, ...], data: Any) -> bytes:
        return self.keys.seal(ns, p, purpose, item, orjson.dumps(data))

    def _open(self, ns: str, p: str, purpose: str, item: tuple[str, ...], blob: bytes) -> Any:
        return orjson.loads(self.keys.open_value(ns, p, purpose, item, blob))

    def _ids(self, ns: str, fn: str, subject: str, key: str) -> tuple[str, str]:
        p = self.pseudo.pseudonym(ns, subject)
        return p, self.pseudo.item_hash(ns, fn, p, key)

    # ------------------------------------------------------------ state
    async def state_get(self, ns: str, fn: str, subject: str, key: str) -> dict[str, Any] | None:
        p, kh = self._ids(ns, fn, subject, key)
        found = await self.repo.state_get(ns, fn, p, kh)
        if found is None:
            return None
        try:
            await self.keys.load(ns, p, create=False)
            payload = self._open(ns, p, "state", (fn, kh), found[0])
        except CryptoError:
            return None  # erased while the row was being written: gone for good
        return {"value": payload["value"], "version": found[1]}

    async def state_put(
        self,
        ns: str,
        fn: str,
        subject: str,
        key: str,
        value: Any,
        expected: int | None,
        now: float,
    ) -> dict[str, Any]:
        p, kh = self._ids(ns, fn, subject, key)
        await self.keys.load(ns, p, create=True)  # outside the atomic step
        blob = self._seal(
            ns, p, "state", (fn, kh), {"subject": subject, "key": key, "value": value}
        )

        def update(_current: bytes | None, version: int) -> bytes | None:
            return None if expected is not None and expected != version else blob

        version, written = await self.repo.state_update(ns, fn, p, kh, update, now)
        return {"version": version} if written else {"conflict": True, "version": version}

    async def state_incr(
        self, ns: str, fn: str, subject: str, key: str, by: int, now: float
    ) -> int:
        p, kh = self._ids(ns, fn, subject, key)
        await self.keys.load(ns, p, create=True)
        total = 0

        def update(current: bytes | None, _version: int) -> bytes:
            nonlocal total
            value = 0
            if current is not None:
                value = self._open(ns, p, "state", (fn, kh), current)["value"]
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError("not an integer")
            total = value + by
            return self._seal(
                ns, p, "state", (fn, kh), {"subject": subject, "key": key, "value": total}
            )

        await self.repo.state_update(ns, fn, p, kh, update, now)
        return total

    async def state_delete(self, ns: str, fn: str, subject: str, key: str) -> bool:
        p, kh = self._ids(ns, fn, subject, key)
        return await self.repo.state_delete(ns, fn, p, kh)

    # ------------------------------------------------------------ logs and invocations
    async def append(self, logs: list[SubjectLog], invocations: list[SubjectInvocation]) -> None:
        owners = {(x.record.namespace, x.subject) for x in logs}
        owners |= {(x.record.namespace, x.subject) for x in invocations}
        for ns, subject in owners:
            await self.keys.load(ns, self.pseudo.pseudonym(ns, subject), create=True)
        sealed_logs = []
        for entry in logs:
            r = entry.record
            p = self.pseudo.pseudonym(r.namespace, entry.subject)
            payload = {
                "subject": entry.subject,
                "function": r.function,
                "version": r.version,
                "invocation_id": r.invocation_id,
                "ts": r.ts,
                "level": r.level,
                "message": r.message,
                "fields": r.fields,
            }
            blob = self._seal(r.namespace, p, "log", (r.invocation_id,), payload)
            sealed_logs.append(SealedLog(r.namespace, r.function, p, r.invocation_id, r.ts, blob))
        sealed_invocations = []
        for inv in invocations:
            i = inv.record
            p = self.pseudo.pseudonym(i.namespace, inv.subject)
            blob = self._seal(
                i.namespace, p, "invocation", (i.id,), {"subject": inv.subject, **i.public()}
            )
            sealed_invocations.append(
                SealedInvocation(i.id, i.namespace, i.function, p, i.started_at, blob)
            )
        await self.repo.append(sealed_logs, sealed_invocations)

    # ------------------------------------------------------------ async job bodies
    async def seal_job(self, ns: str, function: str, subject: str, body: bytes) -> bytes:
        p = self.pseudo.pseudonym(ns, subject)
        sealed = await self.keys.sealed(
            ns, p, "job", (function,), subject.encode() + b"\0" + body, deterministic=True
        )
        return job_prefix(p) + sealed

    async def open_job(self, ns: str, function: str, blob: bytes) -> tuple[str, bytes]:
        p = blob[len(JOB_MAGIC) : JOB_PREFIX_LEN].hex()
        plain = await self.keys.opened(ns, p, "job", (function,), blob[JOB_PREFIX_LEN:])
        subject, _, body = plain.partition(b"\0")
        return subject.decode(), body

    # ------------------------------------------------------------ consent
    async def consent_append(
        self, ns: str, subject: str, purpose: str, granted: bool, source: str, now: float
    ) -> None:
        p = self.pseudo.pseudonym(ns, subject)
        payload = {
            "subject": subject,
            "purpose": purpose,
            "granted": granted,
            "source": source,
            "ts": now,
        }
        blob = await self.keys.sealed(ns, p, "consent", (purpose,), orjson.dumps(payload))
        await self.repo.consent_append(ns, p, purpose, granted, blob, now)

    async def consent_current(self) -> dict[tuple[str, str, str], bool]:
        """The latest event per (namespace, pseudonym, purpose): the hot path's cache."""
        return await self.repo.consent_current()

    async def consent_history(self, ns: str, subject: str) -> list[dict[str, Any]]:
        p = self.pseudo.pseudonym(ns, subject)
        rows = await self.repo.consent_of(ns, p)
        if not rows:
            return []
        await self.keys.load(ns, p, create=False)
        return self._consent_of(ns, p, rows)

    def _consent_of(self, ns: str, p: str, rows: list[Any]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            event = self._open(ns, p, "consent", (row.purpose,), row.blob)
            out.append({"seq": row.seq, **{k: v for k, v in event.items() if k != "subject"}})
        return out

    # ------------------------------------------------------------ export
    async def export(self, ns: str, p: str) -> dict[str, Any]:
        """Everything held about one subject, decrypted: the access/portability answer."""
        if not await self.keys.has_key(ns, p):
            return {k: [] for k in EXPORT_PARTS}
        await self.keys.load(ns, p, create=False)
        state = []
        for row in await self.repo.subject_state(ns, p):
            payload = self._open(ns, p, "state", (row.function, row.key_hash), row.value)
            state.append(
                {
                    "function": row.function,
                    "key": payload["key"],
                    "value": payload["value"],
                    "version": row.version,
                    "updated_at": row.updated_at,
                }
            )
        invocations = [
            {
                k: v
                for k, v in self._open(ns, p, "invocation", (i.id,), i.blob).items()
                if k != "subject"
            }
            for i in await self.repo.subject_invocations(ns, p)
        ]
        logs = [
            {
                k: v
                for k, v in self._open(ns, p, "log", (x.invocation_id,), x.blob).items()
                if k != "subject"
            }
            for x in await self.repo.subject_logs(ns, p)
        ]
        jobs = []
        for j in await self.rooms.jobs().subject_jobs(ns, job_prefix(p)):
            _, raw = await self.open_job(ns, j.function, j.body)
            job: dict[str, Any] = {
                "id": j.id,
                "function": j.function,
                "status": j.status,
                "created_at": j.created_at,
            }
            try:
                job["payload"] = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                job["payload_base64"] = base64.b64encode(raw).decode()
            jobs.append(job)
        consent = self._consent_of(ns, p, await self.repo.consent_of(ns, p))
        return {
            "state": state,
            "invocations": invocations,
            "logs": logs,
            "jobs": jobs,
            "consent": consent,
        }

    # ------------------------------------------------------------ erasure
    async def erase(self, ns: str, p: str) -> dict[str, int]:
        """Ask each room to erase the subject, then destroy its key (crypto-shredding):
        copies of the rows elsewhere (backups, freed pages) stay ciphertext with no key. The
        key goes last: a step that fails leaves the request failed and the data still
        erasable by a retry."""
        records = await self.repo.subject_invocations(ns, p)
        await self.rooms.invocations.delete(ns, [r.id for r in records])
        counts = await self.repo.erase_subject(ns, p)
        counts["jobs"] = await self.rooms.jobs().erase_subject(ns, job_prefix(p))
        counts["subject_keys_destroyed"] = int(await self.keys.destroy(ns, p))
        await self.repo.scrub()
        return counts

    # ------------------------------------------------------------ retention
    async def namespaces(self) -> list[str]:
        found = set(await self.rooms.control.namespaces())
        found |= set(await self.rooms.invocations.namespaces())
        found |= set(await self.repo.namespaces())
        return sorted(found)

    async def purge(self, ns: str, cutoff: float) -> dict[str, int]:
        """Delete what is older than `cutoff` in one namespace; counts per table."""
        counts = {
            "invocations": await self.rooms.invocations.purge(ns, cutoff),
            "logs": await self.rooms.logs.purge(ns, cutoff),
        }
        counts.update(await self.repo.purge(ns, cutoff))
        counts["finished_jobs"] = await self.rooms.jobs().purge_finished(ns, cutoff)
        return counts

    async def retention_get(self) -> dict[str, float]:
        return await self.repo.retention()

    async def retention_set(self, ns: str, ttl_s: float | None) -> None:
        await self.repo.set_retention(ns, ttl_s)

    async def subject_counts(self) -> dict[str, int]:
        return await self.keys.count()

    async def functions(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(namespace, function, config of its newest version) for the processing report."""
        control = self.rooms.control
        out = []
        for ns in await control.namespaces():
            for fn in await control.list_functions(ns):
                versions = await control.list_versions(ns, fn.name)
                if versions:
                    out.append((ns, fn.name, versions[-1].config))
        return out
