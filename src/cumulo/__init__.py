"""cumulo: deploy plain Python functions, get endpoints that scale from zero."""

from cumulo.errors import (
    ApiError,
    BadRequest,
    CircuitOpen,
    ConfigError,
    CumuloError,
    FunctionCrashed,
    FunctionError,
    FunctionTimeout,
    NotFound,
    PayloadTooLarge,
    StateConflict,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from cumulo.sdk.app import app
from cumulo.sdk.context import Context, StateItem, local_context
from cumulo.sdk.decorators import function
from cumulo.sdk.http import Request, Response
from cumulo.sdk.model import model
from cumulo.sdk.on import on
from cumulo.sdk.schedule import schedule
from cumulo.sdk.spec import FunctionConfig

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "BadRequest",
    "CircuitOpen",
    "ConfigError",
    "Context",
    "CumuloError",
    "FunctionConfig",
    "FunctionCrashed",
    "FunctionError",
    "FunctionTimeout",
    "NotFound",
    "PayloadTooLarge",
    "Request",
    "Response",
    "StateConflict",
    "StateItem",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "__version__",
    "app",
    "function",
    "local_context",
    "model",
    "on",
    "schedule",
]
