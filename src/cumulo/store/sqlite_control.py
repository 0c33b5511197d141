"""`ControlRepository` over `SQLiteStore`: each call runs the store's own method on its
database thread (`store.call`), so the embedded backend behaves exactly as before."""

from __future__ import annotations

import sqlite3
from typing import Any

from cumulo.errors import Conflict
from cumulo.store.base import ApiKeyRecord, FunctionRecord, VersionRecord
from cumulo.store.control import ControlRepository
from cumulo.store.sqlite import SQLiteStore


class SQLiteControlRepository(ControlRepository):
    """The embedded backend. The store is opened and closed by its owner, not here."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def insert_key(self, record: ApiKeyRecord) -> None:
        try:
            await self.store.call(self.store.insert_key, record)
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"API key {record.id!r} exists already", code="key_exists") from exc

    async def all_keys(self) -> list[ApiKeyRecord]:
        return await self.store.call(self.store.all_keys)

    async def revoke_key(self, key_id: str, now: float) -> bool:
        return await self.store.call(self.store.revoke_key, key_id, now)

    async def get_function(self, namespace: str, name: str) -> FunctionRecord | None:
        return await self.store.call(self.store.get_function, namespace, name)

    async def list_functions(self, namespace: str) -> list[FunctionRecord]:
        return await self.store.call(self.store.list_functions, namespace)

    async def namespaces(self) -> list[str]:
        return await self.store.call(self.store.function_namespaces)

    async def delete_function(self, namespace: str, name: str) -> bool:
        return await self.store.call(self.store.delete_function, namespace, name)

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
        return await self.store.call(
            self.store.add_version,
            namespace,
            name,
            bundle_sha=bundle_sha,
            module=module,
            attr=attr,
            kind=kind,
            config=config,
            promote=promote,
            now=now,
        )

    async def get_version(self, namespace: str, name: str, version: int) -> VersionRecord | None:
        return await self.store.call(self.store.get_version, namespace, name, version)

    async def list_versions(self, namespace: str, name: str) -> list[VersionRecord]:
        return await self.store.call(self.store.list_versions, namespace, name)

    async def bundle_shas(self) -> list[str]:
        return await self.store.call(self.store.bundle_shas)

    async def bundle_in_use(self, sha: str) -> bool:
        return await self.store.call(self.store.bundle_in_use, sha)

    async def set_traffic(self, namespace: str, name: str, traffic: dict[int, int]) -> bool:
        return await self.store.call(self.store.set_traffic, namespace, name, traffic)

    async def rollback(self, namespace: str, name: str) -> dict[int, int] | None:
        return await self.store.call(self.store.rollback, namespace, name)
