"""`StateRepository` in memory: a fake for unit tests (no database, no thread, nothing
sealed), held to the same conformance suite as the real backends."""

from __future__ import annotations

from cumulo.store.base import StateRecord
from cumulo.store.state import StateRepository, incremented

_Key = tuple[str, str, str]  # namespace, function, key


class MemoryStateRepository(StateRepository):
    """Items in a dict. Each method runs without awaiting, so it is atomic on its event
    loop, as the contract asks."""

    def __init__(self) -> None:
        self._items: dict[_Key, tuple[bytes, int, float]] = {}  # value, version, updated_at

    def _version(self, item: _Key) -> int:
        found = self._items.get(item)
        return 0 if found is None else found[1]

    async def get(self, namespace: str, function: str, key: str) -> StateRecord | None:
        found = self._items.get((namespace, function, key))
        return None if found is None else StateRecord(found[0], found[1])

    async def put(
        self,
        namespace: str,
        function: str,
        key: str,
        value: bytes,
        expected_version: int | None,
        now: float,
    ) -> tuple[bool, int]:
        item = (namespace, function, key)
        version = self._version(item)
        if expected_version is not None and expected_version != version:
            return False, version
        self._items[item] = (bytes(value), version + 1, now)
        return True, version + 1

    async def delete(
        self, namespace: str, function: str, key: str, expected_version: int | None
    ) -> tuple[bool, int]:
        item = (namespace, function, key)
        version = self._version(item)
        if expected_version is not None and expected_version != version:
            return False, version
        return self._items.pop(item, None) is not None, version

    async def incr(
        self, namespace: str, function: str, key: str, by: int, now: float
    ) -> tuple[int, int]:
        item = (namespace, function, key)
        found = self._items.get(item)
        value, stored = incremented(None if found is None else found[0], by)
        version = self._version(item) + 1
        self._items[item] = (stored, version, now)
        return value, version

    async def list_keys(self, namespace: str, function: str, prefix: str, limit: int) -> list[str]:
        names = sorted(
            k
            for ns, fn, k in self._items
            if ns == namespace and fn == function and k.startswith(prefix)
        )
        return names[:limit]
