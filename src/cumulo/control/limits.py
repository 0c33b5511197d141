"""The operator's ceilings on what a deploy may ask for (`cumulo up --max-…`).

Checked on the merged config (decorator, cumulo.toml and deploy flags) in the control
plane, never trusting the bundle; a version stored before the ceilings were lowered runs
clamped to them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cumulo.errors import BadRequest
from cumulo.runtime.settings import RuntimeSettings
from cumulo.sdk.spec import FunctionConfig


def _ceilings(settings: RuntimeSettings) -> tuple[tuple[str, float, str], ...]:
    return (
        ("memory_mb", settings.max_memory_mb, "--max-memory-mb"),
        ("max_instances", settings.max_instances, "--max-instances"),
        ("min_instances", settings.max_instances, "--max-instances"),
        ("concurrency", settings.max_concurrency, "--max-concurrency"),
        ("timeout_s", settings.max_timeout_s, "--max-timeout-s"),
    )


def check_ceilings(config: FunctionConfig, settings: RuntimeSettings) -> None:
    """400 `over_ceiling`, one line naming the first ceiling the config exceeds."""
    for name, ceiling, flag in _ceilings(settings):
        value = getattr(config, name)
        if value > ceiling:
            raise BadRequest(
                f"{name}={value:g} is above this platform's ceiling of {ceiling:g} "
                f"(set by the operator with cumulo up {flag})",
                code="over_ceiling",
            )


def clamp(config: FunctionConfig, settings: RuntimeSettings) -> FunctionConfig:
    """`config` within the ceilings (a version deployed under higher ones)."""
    changes: dict[str, Any] = {}
    for name, ceiling, _flag in _ceilings(settings):
        value = getattr(config, name)
        if value > ceiling:
            changes[name] = type(value)(ceiling)
    return replace(config, **changes) if changes else config
