"""Import a user's module from its bundle and find its handlers.

Used by the throwaway validation process (deploy) and by the zygote (serve); both must
agree on what a handler is, so the rules live here only.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
import sysconfig
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cumulo.sdk.decorators import spec_of
from cumulo.sdk.http import Request
from cumulo.sdk.on import topics_of
from cumulo.sdk.schedule import schedules_of
from cumulo.sdk.spec import FunctionConfig, default_name

# Frames from these paths are the platform's, not the user's: stdlib, importlib, cumulo
# (as imported, which in a requirements.txt env is a symlink in its `cumulo-platform/`, and
# as resolved).
_PACKAGE = Path(__file__).parent.parent
_PLATFORM_PATHS = tuple(
    dict.fromkeys(
        (
            "<frozen",
            sysconfig.get_paths()["stdlib"],
            f"{_PACKAGE}/",
            f"{_PACKAGE.resolve()}/",
        )
    )
)

KIND_EVENT = "event"  # f(event: dict, ctx)
KIND_REQUEST = "request"  # f(request: cumulo.Request, ctx)
KIND_LAMBDA = "lambda"  # undecorated AWS-style handler(event, context)
KIND_ASGI = "asgi"  # a whole ASGI application (cumulo.app)
KIND_PROCESS = "process"  # any-language HTTP server started from a command (cumulo.toml)
KIND_CONTAINER = "container"  # an OCI image serving HTTP on $PORT (runtime/container_pool.py)
KIND_MODEL = "model"  # a @cumulo.model class: load() in the zygote, predict(batch) per frame


@dataclass(frozen=True, slots=True)
class FoundHandler:
    attr: str
    name: str
    kind: str
    is_async: bool
    config: FunctionConfig | None
    func: Callable[..., Any]
    schedules: tuple[str, ...] = ()  # @cumulo.schedule cron expressions
    topics: tuple[str, ...] = ()  # @cumulo.on topic names
    # A Lambda handler written as AWS's are, `(event, context)`: over HTTP it gets API
    # Gateway's event unless deployed with another --event-format (control/service.py).
    aws_style: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "attr": self.attr,
            "name": self.name,
            "kind": self.kind,
            "is_async": self.is_async,
            "config": self.config.to_dict() if self.config else None,
            "schedules": list(self.schedules),
            "topics": list(self.topics),
            "aws_style": self.aws_style,
        }


class UserCodeError(Exception):
    """Importing or resolving the user's code failed; carries the user's own traceback."""

    def __init__(self, message: str, user_traceback: str) -> None:
        super().__init__(message)
        self.user_traceback = user_traceback


def _code_roots(code_dir: Path) -> tuple[str, ...]:
    """Prefixes of the user's own files: the code dir as given (/proc/self/fd/N in an
    adopted spare) and as resolved (a server path)."""
    roots = [str(code_dir)]
    with contextlib.suppress(OSError, RuntimeError):
        roots.append(str(code_dir.resolve()))
    return tuple(dict.fromkeys(root.rstrip("/") + "/" for root in roots))


def _relative(filename: str, roots: tuple[str, ...]) -> str | None:
    for root in roots:
        if filename.startswith(root):
            return filename[len(root) :]
    return None


def _import_relative(filename: str) -> str:
    roots = sorted((p.rstrip("/") + "/" for p in sys.path if p), key=len, reverse=True)
    found = _relative(filename, tuple(roots))
    return found if found is not None else Path(filename).name


def user_traceback(exc: BaseException, code_dir: Path) -> str:
    """The traceback with platform and importlib frames removed: only the user's lines, their
    files named relative to the code dir (`boom.py`), never by a server path."""
    roots = _code_roots(code_dir)
    frames: list[traceback.FrameSummary] = []
    for frame in traceback.extract_tb(exc.__traceback__):
        relative = _relative(frame.filename, roots)
        if relative is not None:
            # Load the source line through the real path before the file is renamed.
            _ = frame.line
            frame.filename = relative
        elif frame.filename.startswith(_PLATFORM_PATHS):
            continue
        else:
            # A dependency's frame (a requirements.txt package): named from its import
            # root (`humanize/number.py`), never by the server path it is installed at.
            _ = frame.line
            frame.filename = _import_relative(frame.filename)
        frames.append(frame)
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    if isinstance(exc, SyntaxError) and exc.filename:
        relative = _relative(exc.filename, roots)
        if relative is not None:
            exc.filename = relative
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def import_module(code_dir: Path, module: str) -> Any:
    code = str(code_dir)
    if code not in sys.path:
        sys.path.insert(0, code)
    try:
        return importlib.import_module(module)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserCodeError(
            f"importing {module} failed: {type(exc).__name__}: {exc}", user_traceback(exc, code_dir)
        ) from exc


def classify(func: Callable[..., Any], decorated: bool) -> str:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        params = []
    if params:
        annotation = params[0].annotation
        if annotation is Request or annotation in ("Request", "cumulo.Request"):
            return KIND_REQUEST
    return KIND_EVENT if decorated else KIND_LAMBDA


def _check_arity(func: Callable[..., Any], attr: str) -> None:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(None, None)
    except TypeError:
        raise UserCodeError(
            f"handler {attr} must accept two arguments (event, ctx); its signature is {attr}{sig}",
            "",
        ) from None


def aws_style(func: Callable[..., Any]) -> bool:
    """`def handler(event, context)`: AWS's own convention (every Lambda blueprint, every
    Powertools example). cumulo's undecorated handlers call it `ctx` and take the JSON body;
    the name tells the two apart so neither has to change."""
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 and params[1] == "context"


def found(module: Any, attr: str) -> FoundHandler:
    obj = getattr(module, attr, None)
    if obj is None:
        raise UserCodeError(f"module {module.__name__} has no attribute {attr!r}", "")
    if not callable(obj):
        raise UserCodeError(f"{module.__name__}.{attr} is not callable", "")
    spec = spec_of(obj)
    if spec is None or not (spec.asgi or spec.model):
        _check_arity(obj, attr)
    name = (spec.name if spec else None) or default_name(attr)
    if spec is not None and spec.model:
        kind = KIND_MODEL
    else:
        kind = KIND_ASGI if spec is not None and spec.asgi else classify(obj, spec is not None)
    return FoundHandler(
        attr=attr,
        name=name,
        kind=kind,
        is_async=inspect.iscoroutinefunction(obj),
        config=spec.config if spec else None,
        func=obj,
        schedules=schedules_of(obj),
        topics=topics_of(obj),
        aws_style=kind == KIND_LAMBDA and aws_style(obj),
    )


def discover(module: Any) -> list[FoundHandler]:
    """Every `@cumulo.function` defined in the module itself (not ones it imported)."""
    handlers = []
    for attr, obj in vars(module).items():
        spec = spec_of(obj)
        # An app object's __module__ is its framework's; it counts where it was marked.
        if spec is not None and (spec.asgi or getattr(obj, "__module__", None) == module.__name__):
            handlers.append(found(module, attr))
    return handlers


def resolve(code_dir: Path, module: str, attr: str) -> FoundHandler:
    return found(import_module(code_dir, module), attr)
