"""`cumulo.app`: serve a whole ASGI application (FastAPI, Starlette, Litestar) as one function."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from cumulo.sdk.decorators import make_spec
from cumulo.sdk.spec import SPEC_ATTR

A = TypeVar("A")

DEFAULT_APP_CONCURRENCY = 16  # an async app serves many requests at once in one worker


def app(
    application: A,
    /,
    *,
    name: str | None = None,
    memory_mb: int = 256,
    timeout_s: float = 30.0,
    min_instances: int = 0,
    max_instances: int = 10,
    concurrency: int = DEFAULT_APP_CONCURRENCY,
    env: dict[str, str] | None = None,
    secrets: Iterable[str] = (),
    network: bool = False,
    public: bool = False,
    rate_limit: str = "",
) -> A:
    """Mark an ASGI app for deployment: `api = cumulo.app(FastAPI())`.

    The whole app scales from zero as one function; `/fn/{namespace}/{name}/anything`
    reaches its route `/anything`, with `root_path` set to the function's URL."""
    if not callable(application):
        raise TypeError("cumulo.app() takes an ASGI application (a callable)")
    spec = make_spec(
        name,
        asgi=True,
        memory_mb=memory_mb,
        timeout_s=timeout_s,
        min_instances=min_instances,
        max_instances=max_instances,
        concurrency=concurrency,
        env=dict(env or {}),
        secrets=tuple(secrets),
        network=network,
        public=public,
        rate_limit=rate_limit,
    )
    target: Any = application
    setattr(target, SPEC_ATTR, spec)
    return application
