"""`@cumulo.schedule(cron)`: run a function on a cron schedule (UTC).

```python
@cumulo.schedule("*/5 * * * *")
def refresh(event: dict, ctx: cumulo.Context) -> None: ...
```

The cron expression is checked when the decorator runs (so a typo fails the deploy with a
clear 400, not silently later) and recorded on the callable; the platform reads it at deploy
time. Stack several `@cumulo.schedule` for several schedules. Without `@cumulo.function` the
function deploys with the default limits. The event is a CloudEvents 1.0 object of type
`dev.cumulo.schedule` whose `data` holds `cron` and `slot` (the scheduled time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from cumulo.errors import BadRequest
from cumulo.sdk.spec import SPEC_ATTR, FunctionConfig, FunctionSpec

F = TypeVar("F", bound=Callable[..., Any])

SCHEDULE_ATTR = "__cumulo_schedules__"
MAX_CRON_LENGTH = 200


def validate_cron(expression: str) -> str:
    """The expression with its whitespace normalised; BadRequest (one line) when croniter
    rejects it. Five fields (minute hour day-of-month month day-of-week) or an alias such as
    `@hourly`; croniter's optional seconds/year fields are refused as ambiguous."""
    if not isinstance(expression, str) or not expression.strip():
        raise BadRequest("a schedule needs a cron expression", code="invalid_cron")
    cron = " ".join(expression.split())
    if len(cron) > MAX_CRON_LENGTH:
        raise BadRequest(
            f"a cron expression is at most {MAX_CRON_LENGTH} characters", code="invalid_cron"
        )
    if not cron.startswith("@") and len(cron.split(" ")) != 5:
        raise BadRequest(
            f"invalid cron expression {cron!r}: use five fields "
            "(minute hour day-of-month month day-of-week), e.g. '*/5 * * * *'",
            code="invalid_cron",
        )
    from croniter import croniter  # here, not at the top: 60 ms of imports few need

    try:
        croniter(cron)
    except (ValueError, KeyError) as exc:
        raise BadRequest(f"invalid cron expression {cron!r}: {exc}", code="invalid_cron") from None
    return cron


def schedule(cron: str) -> Callable[[F], F]:
    """Mark a handler to run on `cron` (UTC). The callable itself is unchanged."""
    validated = validate_cron(cron)

    def mark(target: F) -> F:
        existing = getattr(target, SCHEDULE_ATTR, ())
        if validated not in existing:
            setattr(target, SCHEDULE_ATTR, (*existing, validated))
        if getattr(target, SPEC_ATTR, None) is None:
            # A scheduled function is a function: discoverable even without @cumulo.function
            # (which, applied on top, replaces this default spec with its own).
            setattr(target, SPEC_ATTR, FunctionSpec(name=None, config=FunctionConfig()))
        return target

    return mark


def schedules_of(obj: object) -> tuple[str, ...]:
    crons = getattr(obj, SCHEDULE_ATTR, ())
    return tuple(c for c in crons if isinstance(c, str)) if isinstance(crons, tuple) else ()
