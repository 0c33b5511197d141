"""The secrets room's storage seam: named secret values per namespace.

`SecretRepository`'s contract is written here; implementations held to one conformance
suite (tests/store/test_secrets_conformance.py):

- `cumulo.store.sqlite_secrets.SQLiteSecretRepository`: the embedded default, over
  `SQLiteStore`'s own secret methods on its database thread (the reference behaviour);
- `cumulo.store.postgres_secrets.PostgresSecretRepository`: PostgreSQL (migration 7),
  sealed like SQLite (cumulo.store.postgres_keys);
- `cumulo.store.memory_secrets.MemorySecretRepository`: an in-memory fake for unit tests.

At rest (the real backends, with an encryptor) a value is sealed bound to its name
(purpose "secret"); names are stored in clear (the admin API lists them). A value that
does not open raises `cumulo.security.crypto.CryptoError`. Callers (gateway.admin) check
names and sizes before they reach a repository.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

__all__ = ["SecretInfo", "SecretRepository"]


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """A secret as listed: its name and when it was last set, never its value."""

    name: str
    updated_at: float


class SecretRepository(abc.ABC):
    """Where secrets live. Every method is one atomic step; a namespace never sees
    another's secrets."""

    @abc.abstractmethod
    async def set(self, namespace: str, name: str, value: bytes, now: float) -> None:
        """Create or replace the secret (its `updated_at` becomes `now`); the last of
        concurrent writers wins."""

    @abc.abstractmethod
    async def names(self, namespace: str) -> list[SecretInfo]:
        """The namespace's secrets, by name in code-point order."""

    @abc.abstractmethod
    async def values(self, namespace: str, names: Iterable[str]) -> dict[str, bytes]:
        """{name: value} of those of `names` that are set (unknown names are left out;
        no names, no lookup)."""

    @abc.abstractmethod
    async def delete(self, namespace: str, name: str) -> bool:
        """Remove the secret; False when there was none."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds; a no-op when it owns nothing."""
        return None

    async def __aenter__(self) -> SecretRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
