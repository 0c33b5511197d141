"""The state room's storage seam: a function's key/value state, versioned per key.

One small async interface, `StateRepository`, whose contract is written here, and several
implementations held to one conformance suite (tests/store/test_state_conformance.py):

- `cumulo.store.sqlite_state.SQLiteStateRepository`: the embedded default, over
  `SQLiteStore`'s own state methods on its database thread (the reference behaviour);
- `cumulo.store.postgres_state.PostgresStateRepository`: PostgreSQL (migration 7), shared
  by several gateways, sealed like SQLite (cumulo.store.postgres_keys);
- `cumulo.store.memory_state.MemoryStateRepository`: an in-memory fake for unit tests.

A state item is addressed by (namespace, function, key) and holds bytes (the platform
stores JSON) and a version: 1 when the key is first written, +1 on every write, gone with
the key (a key written again after a delete starts at 1). Callers (gateway.platform)
validate keys, values and versions before they reach a repository.

At rest (the real backends, with an encryptor): a row is stored under a keyed hash of
(function, key) (`Encryptor.keyed_hash`, purpose "state-key"), its key name sealed beside
it, its value sealed bound to (function, key) (purpose "state"): a value copied to another
row does not open, and a value that does not open raises `cumulo.security.crypto.CryptoError`.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`.
"""

from __future__ import annotations

import abc
from types import TracebackType

import orjson

from cumulo.store.base import StateRecord

__all__ = ["StateRecord", "StateRepository", "incremented"]


def incremented(current: bytes | None, by: int) -> tuple[int, bytes]:
    """The value `incr` stores: `int()` of the current JSON value (0 when there is none)
    plus `by`, and its JSON. Shared by the backends that compute it outside SQLite, so that
    they take exactly what SQLiteStore.state_incr takes; raises ValueError or TypeError
    when the current value is not one `int()` accepts."""
    value = (int(orjson.loads(current)) if current is not None else 0) + by
    return value, orjson.dumps(value)


class StateRepository(abc.ABC):
    """Where function state lives.

    Every method is one atomic step, also across several gateways on one database:
    compare-and-set and increments never lose a concurrent write. Reads in one
    (namespace, function) never see another's keys.
    """

    @abc.abstractmethod
    async def get(self, namespace: str, function: str, key: str) -> StateRecord | None:
        """The key's value and version, or None when the key is not set."""

    @abc.abstractmethod
    async def put(
        self,
        namespace: str,
        function: str,
        key: str,
        value: bytes,
        expected_version: int | None,
        now: float,
    ) -> tuple[bool, int]:
        """Write `value` (updated at `now`) and return (True, its new version).

        Compare-and-set: with `expected_version` not None the write happens only when the
        key's current version equals it (0 meaning "not set"); otherwise nothing is written
        and (False, the current version) comes back (0 when the key is not set)."""

    @abc.abstractmethod
    async def delete(
        self, namespace: str, function: str, key: str, expected_version: int | None
    ) -> tuple[bool, int]:
        """Remove the key: (True, the version it had). (False, 0) when it was not set.
        With `expected_version` not None it is removed only at that version; otherwise it
        is kept and (False, its current version) comes back. A value that no longer
        decrypts can still be deleted (only its version is read)."""

    @abc.abstractmethod
    async def incr(
        self, namespace: str, function: str, key: str, by: int, now: float
    ) -> tuple[int, int]:
        """Atomically add `by` to the key's value and return (new value, new version).
        An unset key counts as 0 (the result is then at version 1). The value is taken as
        `int()` of its JSON (today's behaviour: an integer; a float is truncated, a numeric
        string or a boolean is accepted); anything else raises ValueError or TypeError and
        nothing is written. The new value is stored as a JSON integer."""

    @abc.abstractmethod
    async def list_keys(self, namespace: str, function: str, prefix: str, limit: int) -> list[str]:
        """The function's key names that start with `prefix` (case-sensitive, "%" and "_"
        literal; "" matches all), in code-point order, at most `limit` of them."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds; a no-op when it owns nothing."""
        return None

    async def __aenter__(self) -> StateRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
