"""`ControlRepository` in memory: a fake for unit tests (no database, no thread), held to
the same conformance suite as the real backends."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson

from cumulo.errors import Conflict
from cumulo.store.base import ApiKeyRecord, FunctionRecord, VersionRecord
from cumulo.store.control import ControlRepository


@dataclass
class _Function:
    created_at: float
    traffic: dict[int, int]
    next_version: int
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    history: list[dict[int, int]] = field(default_factory=list)  # oldest first


class MemoryControlRepository(ControlRepository):
    """Everything in dicts. Each method runs without awaiting, so it is atomic on its
    event loop, as the contract asks. Configs pass through JSON, as on a real backend."""

    def __init__(self) -> None:
        self._keys: dict[str, ApiKeyRecord] = {}  # insertion order
        self._functions: dict[tuple[str, str], _Function] = {}

    # ------------------------------------------------------------ API keys
    async def insert_key(self, record: ApiKeyRecord) -> None:
        if record.id in self._keys or any(
            k.key_hash == record.key_hash for k in self._keys.values()
        ):
            raise Conflict(f"API key {record.id!r} exists already", code="key_exists")
        self._keys[record.id] = record

    async def all_keys(self) -> list[ApiKeyRecord]:
        return sorted(self._keys.values(), key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str, now: float) -> bool:
        key = self._keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self._keys[key_id] = dataclasses.replace(key, revoked_at=now)
        return True

    # ------------------------------------------------------------ functions
    def _record(self, namespace: str, name: str, fn: _Function) -> FunctionRecord:
        return FunctionRecord(namespace, name, fn.created_at, dict(fn.traffic))

    async def get_function(self, namespace: str, name: str) -> FunctionRecord | None:
        fn = self._functions.get((namespace, name))
        return None if fn is None else self._record(namespace, name, fn)

    async def list_functions(self, namespace: str) -> list[FunctionRecord]:
        return [
            self._record(ns, name, fn)
            for (ns, name), fn in sorted(self._functions.items())
            if ns == namespace
        ]

    async def namespaces(self) -> list[str]:
        return sorted({ns for ns, _ in self._functions})

    async def delete_function(self, namespace: str, name: str) -> bool:
        return self._functions.pop((namespace, name), None) is not None

    # ------------------------------------------------------------ versions
    async def add_version(
        self,
        namespace: str,
        name: str,
        *,
        bundle_sha: str,
        module: str,
        attr: str,
        kind: str,
        config: dict[str, Any],
        promote: bool,
        now: float,
    ) -> VersionRecord:
        stored_config = orjson.loads(orjson.dumps(config))
        fn = self._functions.get((namespace, name))
        if fn is None:
            fn = self._functions[(namespace, name)] = _Function(now, {}, 1)
        version = fn.next_version
        fn.next_version += 1
        record = VersionRecord(
            namespace, name, version, bundle_sha, module, attr, kind, stored_config, now
        )
        fn.versions[version] = record
        if promote or not fn.traffic:
            self._move(fn, {version: 100})
        return self._copy(record)

    @staticmethod
    def _copy(record: VersionRecord) -> VersionRecord:
        return dataclasses.replace(record, config=orjson.loads(orjson.dumps(record.config)))

    async def get_version(self, namespace: str, name: str, version: int) -> VersionRecord | None:
        fn = self._functions.get((namespace, name))
        record = None if fn is None else fn.versions.get(version)
        return None if record is None else self._copy(record)

    async def list_versions(self, namespace: str, name: str) -> list[VersionRecord]:
        fn = self._functions.get((namespace, name))
        if fn is None:
            return []
        return [self._copy(fn.versions[v]) for v in sorted(fn.versions)]

    async def bundle_shas(self) -> list[str]:
        return list(
            {v.bundle_sha: None for fn in self._functions.values() for v in fn.versions.values()}
        )

    async def bundle_in_use(self, sha: str) -> bool:
        return any(
            v.bundle_sha == sha for fn in self._functions.values() for v in fn.versions.values()
        )

    # ------------------------------------------------------------ traffic
    @staticmethod
    def _move(fn: _Function, new: dict[int, int]) -> None:
        if fn.traffic:
            fn.history.append(fn.traffic)
        fn.traffic = dict(new)

    async def set_traffic(self, namespace: str, name: str, traffic: dict[int, int]) -> bool:
        fn = self._functions.get((namespace, name))
        if fn is None:
            return False
        if fn.traffic != traffic:
            self._move(fn, traffic)
        return True

    async def rollback(self, namespace: str, name: str) -> dict[int, int] | None:
        fn = self._functions.get((namespace, name))
        if fn is None:
            return None
        while fn.history:
            previous = fn.history.pop()
            if previous != fn.traffic:
                fn.traffic = previous
                return dict(previous)
        return None
