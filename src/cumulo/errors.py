"""Every error cumulo raises, in one place.

The hierarchy::

    CumuloError                      base of everything below
    ├── ConfigError                  bad local configuration (credentials, flags)
    ├── ApiError                     the platform answered with an error (status, code, message)
    │   ├── BadRequest           400
    │   ├── Unauthorized         401
    │   ├── Forbidden            403
    │   ├── NotFound             404
    │   ├── Conflict             409
    │   ├── PayloadTooLarge      413
    │   ├── Unprocessable        422
    │   ├── TooManyRequests      429
    │   ├── FunctionError        500  the user's handler raised
    │   ├── FunctionCrashed      502  the worker died (crash, memory limit)
    │   ├── Unavailable          503
    │   │   ├── CircuitOpen      503  a service call's target is failing: not invoked
    │   │   └── StoreUnavailable 503  the database cannot be reached (store_unavailable)
    │   └── FunctionTimeout      504
    ├── TransportError               the platform could not be reached
    └── StateConflict                optimistic concurrency check failed (inside a function)

Platform code raises `ApiError` subclasses; the gateway turns each into the JSON error body
`{"error": {"code": ..., "message": ...}}` with its status. Lower-layer errors (sockets,
sqlite, httpx) are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class CumuloError(Exception):
    """Base class of all cumulo errors."""


class ConfigError(CumuloError):
    """Local configuration is missing or malformed."""


class TransportError(CumuloError):
    """The platform could not be reached."""


class StateConflict(CumuloError):
    """A state write carried a version that is no longer current."""

    def __init__(self, key: str, expected: int | None, actual: int | None) -> None:
        super().__init__(
            f"state key {key!r} is at version {actual}, not the expected version {expected}"
        )
        self.key = key
        self.expected = expected
        self.actual = actual


class ApiError(CumuloError):
    """An error with an HTTP status, a stable machine code and a one-line message."""

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details or {}
        if status is not None:
            self.status = status  # type: ignore[misc]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class BadRequest(ApiError):
    status = 400
    default_code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    default_code = "forbidden"


class NotFound(ApiError):
    status = 404
    default_code = "not_found"


class Conflict(ApiError):
    status = 409
    default_code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    default_code = "payload_too_large"


class Unprocessable(ApiError):
    status = 422
    default_code = "unprocessable"


class TooManyRequests(ApiError):
    status = 429
    default_code = "too_many_requests"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class FunctionError(ApiError):
    status = 500
    default_code = "function_error"


class FunctionCrashed(ApiError):
    status = 502
    default_code = "function_crashed"


class Unavailable(ApiError):
    status = 503
    default_code = "unavailable"


class CircuitOpen(Unavailable):
    """`ctx.call` refused without invoking: the target failed repeatedly and its circuit
    breaker is open (or a probe is already testing it). `retry_after` is when it may pass."""

    default_code = "circuit_open"

    @property
    def retry_after(self) -> float:
        return float(self.details.get("retry_after", 0.0))


class StoreUnavailable(Unavailable):
    """The platform's database cannot be reached (down, restarting, refusing connections,
    no pooled connection within the timeout). Store backends raise it from the driver's
    error; it is transient: the same call may succeed once the database is back."""

    default_code = "store_unavailable"


class FunctionTimeout(ApiError):
    status = 504
    default_code = "function_timeout"


_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        Unprocessable,
        TooManyRequests,
        FunctionError,
        FunctionCrashed,
        Unavailable,
        FunctionTimeout,
    )
}


# Subclasses that share a status with a more general class are told apart by their code.
_BY_CODE: dict[str, type[ApiError]] = {
    "circuit_open": CircuitOpen,
    "store_unavailable": StoreUnavailable,
}


def api_error_for(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> ApiError:
    """The ApiError subclass for an HTTP status and code (client side, and `ctx.call`)."""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, ApiError)
    if cls is TooManyRequests:
        return TooManyRequests(message, code=code)
    return cls(message, code=code, status=status, details=details)


def load_json(body: bytes) -> Any:
    """A request body decoded, or 400 `invalid_json` naming what is wrong with it."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None


def require_json(body: bytes) -> None:
    """A request body an event handler will decode: refuse malformed JSON at the edge."""
    load_json(body)
