"""`@cumulo.on(topic)`: run a function for every event published to a topic.

```python
@cumulo.on("orders.created")
def ship(event: dict, ctx: cumulo.Context) -> None:
    order = event["data"]                 # event: a CloudEvents 1.0 object (structured JSON)
```

The topic name is checked when the decorator runs (so a typo fails the deploy with a clear
400) and recorded on the callable; the platform reads it at deploy time and subscribes the
function's newest live version. Stack several `@cumulo.on` for several topics. Without
`@cumulo.function` the function deploys with the default limits. Topics are per namespace:
an event published in one namespace never reaches another's subscribers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from cumulo.errors import BadRequest
from cumulo.sdk.spec import SPEC_ATTR, FunctionConfig, FunctionSpec

F = TypeVar("F", bound=Callable[..., Any])

TOPICS_ATTR = "__cumulo_topics__"
MAX_TOPIC_LENGTH = 128
_TOPIC = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def validate_topic(topic: object) -> str:
    """The topic name itself; BadRequest (one line) unless it is 1 to 128 characters of
    lowercase letters, digits, '.', '_' and '-', starting with a letter or digit."""
    if not isinstance(topic, str) or _TOPIC.fullmatch(topic) is None:
        shown = repr(topic)[:80]
        raise BadRequest(
            f"invalid topic {shown}: use 1 to {MAX_TOPIC_LENGTH} characters of a-z, 0-9, "
            "'.', '_' and '-', starting with a letter or digit (e.g. 'orders.created')",
            code="invalid_topic",
        )
    return topic


def on(topic: str) -> Callable[[F], F]:
    """Subscribe a handler to `topic`. The callable itself is unchanged."""
    validated = validate_topic(topic)

    def mark(target: F) -> F:
        existing = getattr(target, TOPICS_ATTR, ())
        if validated not in existing:
            setattr(target, TOPICS_ATTR, (*existing, validated))
        if getattr(target, SPEC_ATTR, None) is None:
            # A subscriber is a function: discoverable even without @cumulo.function (which,
            # applied on top, replaces this default spec with its own).
            setattr(target, SPEC_ATTR, FunctionSpec(name=None, config=FunctionConfig()))
        return target

    return mark


def topics_of(obj: object) -> tuple[str, ...]:
    """The valid topic names recorded on `obj` (anything else set there is ignored)."""
    topics = getattr(obj, TOPICS_ATTR, ())
    if not isinstance(topics, tuple):
        return ()
    return tuple(t for t in topics if isinstance(t, str) and _TOPIC.fullmatch(t))
