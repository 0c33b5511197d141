"""The control room's storage seam: functions, versions, the `live` traffic split and its
history, and API keys.

The shape of httpx's transports: one small async interface, `ControlRepository`, whose
contract is written here, and several implementations that all pass one conformance suite
(tests/store/test_control_conformance.py):

- `cumulo.store.sqlite_control.SQLiteControlRepository`: the embedded default, over
  `SQLiteStore` (its database thread does the work; its behaviour is the reference);
- `cumulo.store.postgres.PostgresControlRepository`: PostgreSQL through a psycopg pool,
  shared by several gateways;
- `cumulo.store.memory_control.MemoryControlRepository`: an in-memory fake for unit tests.

Records are the plain types of `cumulo.store.base`. A traffic split is `{version: percent}`;
callers (control.service) validate splits, names and versions before they reach a
repository, which stores what it is given.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`
(503 `store_unavailable`) from the driver's error; nothing driver-specific escapes.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Any

from cumulo.store.base import ApiKeyRecord, FunctionRecord, VersionRecord

__all__ = ["ControlRepository"]


class ControlRepository(abc.ABC):
    """Where functions, versions, traffic and API keys live.

    Every method is one atomic step: concurrent calls (from one process or from several
    gateways on one database) each see the state before or after another, never half of
    it. Returned records and dicts are the caller's own (mutating them changes nothing
    stored). Reads in one namespace never see another namespace's rows.
    """

    # ------------------------------------------------------------ API keys
    @abc.abstractmethod
    async def insert_key(self, record: ApiKeyRecord) -> None:
        """Store a new key as given. Raises `cumulo.errors.Conflict` (code `key_exists`)
        when a key with that id or that hash exists already."""

    @abc.abstractmethod
    async def all_keys(self) -> list[ApiKeyRecord]:
        """Every key of every namespace, revoked and expired ones included, oldest
        `created_at` first (keys created at the same instant in insertion order)."""

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, now: float) -> bool:
        """Mark the key revoked at `now`. False when there is no such key or it was
        revoked already (its `revoked_at` is kept)."""

    # ------------------------------------------------------------ functions
    @abc.abstractmethod
    async def get_function(self, namespace: str, name: str) -> FunctionRecord | None:
        """The function with its current `live` split, or None."""

    @abc.abstractmethod
    async def list_functions(self, namespace: str) -> list[FunctionRecord]:
        """The namespace's functions ordered by name (code points, not a locale's order)."""

    @abc.abstractmethod
    async def namespaces(self) -> list[str]:
        """Every namespace that holds at least one function, each once, in code-point
        order (what start-up walks to warm pools, schedules and topics)."""

    @abc.abstractmethod
    async def delete_function(self, namespace: str, name: str) -> bool:
        """Remove the function with all its versions and its traffic history. False when
        there was no such function. A later deploy of that name starts again at version 1.
        (The SQLite backend also deletes the function's state rows, kept in the same
        database; elsewhere state belongs to the state repository.)"""

    # ------------------------------------------------------------ versions
    @abc.abstractmethod
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
        """Create the function's next immutable version, and the function itself on its
        first deploy (`created_at` = `now`, versions from 1).

        Versions are numbered 1, 2, 3, … per function and never reused while the function
        exists, even when concurrent calls race: each gets its own number. `config` must be
        JSON-serialisable; it is stored as JSON and read back as JSON gives it.

        Traffic: with `promote`, or when the split is empty (the first version), the split
        becomes `{version: 100}` and the split it replaces (when not empty) is pushed onto
        the traffic history. Without `promote` the split is left as it is.
        """

    @abc.abstractmethod
    async def get_version(self, namespace: str, name: str, version: int) -> VersionRecord | None:
        """One version, or None."""

    @abc.abstractmethod
    async def list_versions(self, namespace: str, name: str) -> list[VersionRecord]:
        """The function's versions, lowest number first ([] for an unknown function)."""

    @abc.abstractmethod
    async def bundle_shas(self) -> list[str]:
        """Every bundle sha any version of any namespace references, each once, in no
        particular order (what bundle collection keeps)."""

    @abc.abstractmethod
    async def bundle_in_use(self, sha: str) -> bool:
        """Whether any version of any namespace references the bundle."""

    # ------------------------------------------------------------ traffic
    @abc.abstractmethod
    async def set_traffic(self, namespace: str, name: str, traffic: dict[int, int]) -> bool:
        """Replace the `live` split. When it differs from the current one, the current one
        (when not empty) is pushed onto the traffic history; setting the same split again
        changes nothing. False when there is no such function."""

    @abc.abstractmethod
    async def rollback(self, namespace: str, name: str) -> dict[int, int] | None:
        """Restore the most recent earlier split that differs from the current one and
        return it. History entries are consumed as they are passed over (equal ones
        included), so repeated rollbacks walk back in time. None when the function does
        not exist or no earlier, different split remains (the history is then empty)."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds (a pool); a no-op when it owns nothing."""
        return None

    async def __aenter__(self) -> ControlRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
