"""The privacy room's storage seam: subject rows, consent, retention settings and requests.

`PrivacyRepository`'s contract is written here; implementations held to one conformance
suite (tests/store/test_privacy_conformance.py):

- `cumulo.store.sqlite_privacy.SQLitePrivacyRepository`: the embedded default, the
  `privacy_*` tables of cumulo.db on the store's database thread (the reference behaviour);
- `cumulo.store.postgres_privacy.PostgresPrivacyRepository`: PostgreSQL (migration 11);
- `cumulo.store.memory_privacy.MemoryPrivacyRepository`: an in-memory fake for unit tests.

Every value a repository holds for a subject (`blob`, `value`, request `result`) is already
ciphertext under that subject's key (cumulo.privacy.keystore seals it); a repository stores
bytes and never opens them. Rows are found by (namespace, pseudonym): a pseudonym is a
keyed hash of (namespace, subject), so a pseudonym is only ever looked up together with
the namespace it was made in, and a namespace never reads another's rows.

Subject keys live elsewhere (`cumulo.store.subject_keys.SubjectKeyStore`), and other rooms'
rows of a subject are erased through their own repositories.

Errors: a backend that cannot reach its database raises `cumulo.errors.StoreUnavailable`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

__all__ = [
    "ConsentRow",
    "PrivacyRepository",
    "RequestRecord",
    "SealedInvocation",
    "SealedLog",
    "StateRow",
    "StateUpdate",
]

# update(current value or None, current version (0 when none)) -> the new value, or None to
# leave the row as it is. It runs inside the repository's atomic step: no I/O in it.
StateUpdate = Callable[[bytes | None, int], bytes | None]


@dataclass(frozen=True, slots=True)
class StateRow:
    function: str
    key_hash: str
    value: bytes
    version: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class SealedLog:
    namespace: str
    function: str
    pseudonym: str
    invocation_id: str
    ts: float
    blob: bytes


@dataclass(frozen=True, slots=True)
class SealedInvocation:
    id: str
    namespace: str
    function: str
    pseudonym: str
    started_at: float
    blob: bytes


@dataclass(frozen=True, slots=True)
class ConsentRow:
    seq: int
    purpose: str
    blob: bytes


@dataclass(frozen=True, slots=True)
class RequestRecord:
    id: str
    namespace: str
    type: str
    regime: str
    pseudonym: str
    status: str
    received_at: float
    due_at: float
    updated_at: float
    completed_at: float | None
    overdue_alerted: bool
    counts: str | None  # JSON text
    error: str | None
    has_result: bool


UNFINISHED_EXCLUDES = ("completed", "failed")  # request states that are never overdue


class PrivacyRepository(abc.ABC):
    """Where the privacy room's rows live. Every method is one atomic step, also across
    several gateways on one database."""

    async def open(self) -> None:
        """Make the tables ready (SQLite: create them); idempotent."""
        return None

    # ------------------------------------------------------------ subject state
    @abc.abstractmethod
    async def state_get(
        self, namespace: str, function: str, pseudonym: str, key_hash: str
    ) -> tuple[bytes, int] | None:
        """(value, version) of the row, or None."""

    @abc.abstractmethod
    async def state_update(
        self,
        namespace: str,
        function: str,
        pseudonym: str,
        key_hash: str,
        update: StateUpdate,
        now: float,
    ) -> tuple[int, bool]:
        """Read the row (locked against concurrent updates), call `update`, and store its
        value as version + 1 (`updated_at` = now). Returns (version now held, written);
        when `update` returns None nothing is written; when it raises, the exception
        propagates and nothing is written."""

    @abc.abstractmethod
    async def state_delete(
        self, namespace: str, function: str, pseudonym: str, key_hash: str
    ) -> bool:
        """Remove the row; False when there was none."""

    @abc.abstractmethod
    async def subject_state(self, namespace: str, pseudonym: str) -> list[StateRow]:
        """The subject's state rows, by function (code points), then oldest update first."""

    # ------------------------------------------------------------ logs and invocations
    @abc.abstractmethod
    async def append(self, logs: list[SealedLog], invocations: list[SealedInvocation]) -> None:
        """Store all or none. Log lines keep their list order; an invocation whose id is
        stored already replaces it."""

    @abc.abstractmethod
    async def subject_logs(self, namespace: str, pseudonym: str) -> list[SealedLog]:
        """The subject's log lines in the order they were appended."""

    @abc.abstractmethod
    async def subject_invocations(self, namespace: str, pseudonym: str) -> list[SealedInvocation]:
        """The subject's invocation records, oldest `started_at` first."""

    # ------------------------------------------------------------ consent
    @abc.abstractmethod
    async def consent_append(
        self, namespace: str, pseudonym: str, purpose: str, granted: bool, blob: bytes, now: float
    ) -> None:
        """Append one consent event (the ledger is append-only)."""

    @abc.abstractmethod
    async def consent_current(self) -> dict[tuple[str, str, str], bool]:
        """{(namespace, pseudonym, purpose): granted} of the latest event of each."""

    @abc.abstractmethod
    async def consent_of(self, namespace: str, pseudonym: str) -> list[ConsentRow]:
        """The subject's consent events, oldest first (`seq` increasing)."""

    # ------------------------------------------------------------ erasure and retention
    @abc.abstractmethod
    async def erase_subject(self, namespace: str, pseudonym: str) -> dict[str, int]:
        """Delete the subject's state, logs, invocations and consent events, and drop the
        stored exports of its requests (the requests themselves stay: the receipts).
        Returns {"state", "logs", "invocations", "consent": rows deleted}."""

    async def scrub(self) -> None:
        """After an erasure: push deleted bytes out of the database's own logs where the
        backend can (SQLite: checkpoint and truncate the WAL). A no-op by default."""
        return None

    @abc.abstractmethod
    async def purge(self, namespace: str, before: float) -> dict[str, int]:
        """Delete the namespace's subject invocations (`started_at`), log lines (`ts`) and
        state rows (`updated_at`) older than `before`. Returns {"subject_invocations",
        "subject_logs", "subject_state": rows deleted}."""

    @abc.abstractmethod
    async def namespaces(self) -> list[str]:
        """Namespaces with a retention setting or subject state, each once, sorted."""

    @abc.abstractmethod
    async def retention(self) -> dict[str, float]:
        """{namespace: ttl seconds} of every namespace with a setting."""

    @abc.abstractmethod
    async def set_retention(self, namespace: str, ttl_s: float | None) -> None:
        """Set (or with None, remove) the namespace's retention."""

    # ------------------------------------------------------------ requests
    @abc.abstractmethod
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
        """Store a new request (`received_at` = `updated_at` = now) and return it."""

    @abc.abstractmethod
    async def get_request(self, rid: str) -> RequestRecord | None: ...

    @abc.abstractmethod
    async def request_result(self, rid: str) -> bytes | None:
        """The stored (sealed) export of the request, or None."""

    @abc.abstractmethod
    async def list_requests(self, namespace: str | None, limit: int = 500) -> list[RequestRecord]:
        """Requests (of one namespace, or all), newest `received_at` first, at most `limit`."""

    @abc.abstractmethod
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
        """Set status, `updated_at` = now, `completed_at` = now when `finished` else None,
        `error`; `counts` and `result` replace the stored ones only when given."""

    @abc.abstractmethod
    async def newly_overdue(self, now: float) -> list[RequestRecord]:
        """Unfinished requests with `due_at` < now not marked yet; marks them, so each is
        returned once (also across gateways)."""

    # ------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Release what the repository holds; a no-op when it owns nothing."""
        return None

    async def __aenter__(self) -> PrivacyRepository:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
