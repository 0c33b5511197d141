"""`PrivacyRepository` in memory: a fake for unit tests, held to the same conformance suite
as the real backends. Each method runs without awaiting (atomic on its event loop)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cumulo.store.privacy import (
    ConsentRow,
    PrivacyRepository,
    RequestRecord,
    SealedInvocation,
    SealedLog,
    StateRow,
    StateUpdate,
)


@dataclass(slots=True)
class _Consent:
    seq: int
    namespace: str
    pseudonym: str
    purpose: str
    granted: bool
    blob: bytes


class MemoryPrivacyRepository(PrivacyRepository):
    def __init__(self) -> None:
        self._state: dict[tuple[str, str, str, str], StateRow] = {}
        self._logs: list[SealedLog] = []
        self._invocations: dict[str, SealedInvocation] = {}
        self._consent: list[_Consent] = []
        self._retention: dict[str, float] = {}
        self._requests: dict[str, RequestRecord] = {}
        self._results: dict[str, bytes] = {}

    async def state_get(
        self, namespace: str, function: str, pseudonym: str, key_hash: str
    ) -> tuple[bytes, int] | None:
        row = self._state.get((namespace, function, pseudonym, key_hash))
        return None if row is None else (row.value, row.version)

    async def state_update(
        self,
        namespace: str,
        function: str,
        pseudonym: str,
        key_hash: str,
        update: StateUpdate,
        now: float,
    ) -> tuple[int, bool]:
        key = (namespace, function, pseudonym, key_hash)
        row = self._state.get(key)
        version = row.version if row else 0
        value = update(row.value if row else None, version)
        if value is None:
            return version, False
        self._state[key] = StateRow(function, key_hash, bytes(value), version + 1, now)
        return version + 1, True

    async def state_delete(
        self, namespace: str, function: str, pseudonym: str, key_hash: str
    ) -> bool:
        return self._state.pop((namespace, function, pseudonym, key_hash), None) is not None

    async def subject_state(self, namespace: str, pseudonym: str) -> list[StateRow]:
        rows = [r for k, r in self._state.items() if k[0] == namespace and k[2] == pseudonym]
        return sorted(rows, key=lambda r: (r.function.encode(), r.updated_at))

    async def append(self, logs: list[SealedLog], invocations: list[SealedInvocation]) -> None:
        self._logs.extend(logs)
        for inv in invocations:
            self._invocations.pop(inv.id, None)
            self._invocations[inv.id] = inv

    async def subject_logs(self, namespace: str, pseudonym: str) -> list[SealedLog]:
        return [x for x in self._logs if x.namespace == namespace and x.pseudonym == pseudonym]

    async def subject_invocations(self, namespace: str, pseudonym: str) -> list[SealedInvocation]:
        rows = [
            x
            for x in self._invocations.values()
            if x.namespace == namespace and x.pseudonym == pseudonym
        ]
        return sorted(rows, key=lambda x: x.started_at)

    async def consent_append(
        self, namespace: str, pseudonym: str, purpose: str, granted: bool, blob: bytes, now: float
    ) -> None:
        seq = self._consent[-1].seq + 1 if self._consent else 1
        self._consent.append(_Consent(seq, namespace, pseudonym, purpose, granted, bytes(blob)))

    async def consent_current(self) -> dict[tuple[str, str, str], bool]:
        return {(c.namespace, c.pseudonym, c.purpose): c.granted for c in self._consent}

    async def consent_of(self, namespace: str, pseudonym: str) -> list[ConsentRow]:
        return [
            ConsentRow(c.seq, c.purpose, c.blob)
            for c in self._consent
            if c.namespace == namespace and c.pseudonym == pseudonym
        ]

    async def erase_subject(self, namespace: str, pseudonym: str) -> dict[str, int]:
        def mine(ns: str, p: str) -> bool:
            return ns == namespace and p == pseudonym

        state = [k for k in self._state if mine(k[0], k[2])]
        for k in state:
            del self._state[k]
        logs = len(self._logs)
        self._logs = [x for x in self._logs if not mine(x.namespace, x.pseudonym)]
        invs = [i for i, x in self._invocations.items() if mine(x.namespace, x.pseudonym)]
        for i in invs:
            del self._invocations[i]
        consent = len(self._consent)
        self._consent = [c for c in self._consent if not mine(c.namespace, c.pseudonym)]
        for rid, req in self._requests.items():
            if mine(req.namespace, req.pseudonym):
                self._results.pop(rid, None)
                self._requests[rid] = replace(req, has_result=False)
        return {
            "state": len(state),
            "logs": logs - len(self._logs),
            "invocations": len(invs),
            "consent": consent - len(self._consent),
        }

    async def purge(self, namespace: str, before: float) -> dict[str, int]:
        invs = [
            i
            for i, x in self._invocations.items()
            if x.namespace == namespace and x.started_at < before
        ]
        for i in invs:
            del self._invocations[i]
        logs = len(self._logs)
        self._logs = [x for x in self._logs if not (x.namespace == namespace and x.ts < before)]
        state = [k for k, r in self._state.items() if k[0] == namespace and r.updated_at < before]
        for k in state:
            del self._state[k]
        return {
            "subject_invocations": len(invs),
            "subject_logs": logs - len(self._logs),
            "subject_state": len(state),
        }

    async def namespaces(self) -> list[str]:
        return sorted(set(self._retention) | {k[0] for k in self._state})

    async def retention(self) -> dict[str, float]:
        return dict(self._retention)

    async def set_retention(self, namespace: str, ttl_s: float | None) -> None:
        if ttl_s is None:
            self._retention.pop(namespace, None)
        else:
            self._retention[namespace] = ttl_s

    async def create_request(
        self,
        rid: str,
        namespace: str,
        kind: str,
        regime: str,
        pseudonym: str,
        status: str,
        now: float,
        due_at: float,
    ) -> RequestRecord:
        record = RequestRecord(
            rid, namespace, kind, regime, pseudonym, status, now, due_at, now, None, False,
            None, None, False,
        )  # fmt: skip
        self._requests[rid] = record
        return record

    async def get_request(self, rid: str) -> RequestRecord | None:
        return self._requests.get(rid)

    async def request_result(self, rid: str) -> bytes | None:
        return self._results.get(rid)

    async def list_requests(self, namespace: str | None, limit: int = 500) -> list[RequestRecord]:
        rows = [r for r in self._requests.values() if namespace is None or r.namespace == namespace]
        return sorted(rows, key=lambda r: -r.received_at)[:limit]

    async def set_request_status(
        self,
        rid: str,
        status: str,
        now: float,
        *,
        finished: bool,
        counts: str | None = None,
        error: str | None = None,
        result: bytes | None = None,
    ) -> None:
        req = self._requests.get(rid)
        if req is None:
            return
        if result is not None:
            self._results[rid] = bytes(result)
        self._requests[rid] = replace(
            req,
            status=status,
            updated_at=now,
            completed_at=now if finished else None,
            counts=counts if counts is not None else req.counts,
            error=error,
            has_result=rid in self._results,
        )

    async def newly_overdue(self, now: float) -> list[RequestRecord]:
        out = []
        for rid, req in self._requests.items():
            unfinished = req.status not in ("completed", "failed")
            if unfinished and req.due_at < now and not req.overdue_alerted:
                out.append(req)
                self._requests[rid] = replace(req, overdue_alerted=True)
        return out
