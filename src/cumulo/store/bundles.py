"""The bundle room's storage seam: function bundles (the `.tar.gz` a deploy uploads) kept
where every gateway can fetch them, for gateways that share a database but no disk.

On the embedded default the bundles are files in the data dir (`control.bundle.BundleStore`)
and several gateways on one machine share that directory: no repository is used. With
PostgreSQL, a deploy stores its bundle here too, and a gateway that routes to a version
whose bundle it lacks on disk fetches it from here (verifying its sha-256 before unpacking
it: a row that does not match its address is refused, never run).

- `cumulo.store.postgres_bundles.PostgresBundleRepository`: the `bundles` table (migration 10);
- `cumulo.store.memory_bundles.MemoryBundleRepository`: an in-memory fake for unit tests.

Both are held to tests/store/test_bundles_conformance.py.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`
(503 `store_unavailable`) from the driver's error; nothing driver-specific escapes.
"""

from __future__ import annotations

import abc

__all__ = ["BundleRepository"]


class BundleRepository(abc.ABC):
    """Bundles by their address (the hex sha-256 of their bytes).

    Each method is one atomic step, safe from several gateways at once. The repository does
    not check that `sha` is the digest of `data`: the caller computed it, and a reader
    verifies what it fetched before using it.
    """

    @abc.abstractmethod
    async def put(self, sha: str, data: bytes, now: float) -> None:
        """Store a bundle; storing one already there only refreshes its `now` (so a
        collection that runs meanwhile on another gateway keeps it: see `collect`)."""

    @abc.abstractmethod
    async def get(self, sha: str) -> bytes | None:
        """The bundle's bytes, or None when it is not stored."""

    @abc.abstractmethod
    async def collect(self, referenced: set[str], older_than: float) -> list[str]:
        """Delete the bundles not in `referenced` whose last `put` was before `older_than`,
        and return their shas (sorted). The grace period covers a deploy on another
        gateway that stored its bundle but has not yet written the version naming it."""
