"""`BundleRepository` in memory: the fake for unit tests (one process, no durability)."""

from __future__ import annotations

from cumulo.store.bundles import BundleRepository


class MemoryBundleRepository(BundleRepository):
    def __init__(self) -> None:
        self._rows: dict[str, tuple[bytes, float]] = {}

    async def put(self, sha: str, data: bytes, now: float) -> None:
        stored = self._rows.get(sha)
        self._rows[sha] = (stored[0] if stored else bytes(data), now)

    async def get(self, sha: str) -> bytes | None:
        stored = self._rows.get(sha)
        return None if stored is None else stored[0]

    async def collect(self, referenced: set[str], older_than: float) -> list[str]:
        gone = sorted(
            sha for sha, (_, at) in self._rows.items() if sha not in referenced and at < older_than
        )
        for sha in gone:
            del self._rows[sha]
        return gone
