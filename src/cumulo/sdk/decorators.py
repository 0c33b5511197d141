"""`@cumulo.function`: attach a FunctionSpec to a plain callable, changing nothing else."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from cumulo.sdk.spec import SPEC_ATTR, FunctionConfig, FunctionSpec, validate_name

F = TypeVar("F", bound=Callable[..., Any])


@overload
def function(fn: F, /) -> F: ...


@overload
def function(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    memory_mb: int = 256,
    timeout_s: float = 30.0,
    min_instances: int = 0,
    max_instances: int = 10,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    secrets: Iterable[str] = (),
    network: bool = False,
    public: bool = False,
    rate_limit: str = "",
    max_attempts: int = 3,
    requires_consent: str = "",
    data_categories: Iterable[str] = (),
) -> Callable[[F], F]: ...


def function(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    memory_mb: int = 256,
    timeout_s: float = 30.0,
    min_instances: int = 0,
    max_instances: int = 10,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    secrets: Iterable[str] = (),
    network: bool = False,
    public: bool = False,
    rate_limit: str = "",
    max_attempts: int = 3,
    requires_consent: str = "",
    data_categories: Iterable[str] = (),
) -> F | Callable[[F], F]:
    """Mark a handler `def f(event, ctx)` (or `def f(request: cumulo.Request, ctx)`) as a
    cumulo function. The callable stays a plain function: call it directly in unit tests."""
    spec = make_spec(
        name,
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
        max_attempts=max_attempts,
        requires_consent=requires_consent,
        data_categories=tuple(data_categories),
    )

    def mark(target: F) -> F:
        setattr(target, SPEC_ATTR, spec)
        return target

    if fn is not None:
        return mark(fn)
    return mark


def make_spec(
    name: str | None, *, asgi: bool = False, model: bool = False, **config: Any
) -> FunctionSpec:
    """Validate at decoration time: a bad name or limit fails the import, not the deploy."""
    if name is not None:
        validate_name(name)
    return FunctionSpec(name=name, config=FunctionConfig(**config), asgi=asgi, model=model)


def spec_of(obj: object) -> FunctionSpec | None:
    spec = getattr(obj, SPEC_ATTR, None)
    return spec if isinstance(spec, FunctionSpec) else None
