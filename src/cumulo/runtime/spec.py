"""What the runtime needs to know about one deployed version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cumulo.sdk.spec import FunctionConfig


@dataclass(frozen=True, slots=True)
class VersionSpec:
    namespace: str
    function: str
    version: int
    code_dir: Path
    module: str
    attr: str
    kind: str
    config: FunctionConfig
    # The version's own virtualenv (control/deps.py), built from its requirements.txt; None:
    # the platform's interpreter.
    env_dir: Path | None = None
    # A process function's command (kind "process", runtime/process_pool.py).
    command: tuple[str, ...] = ()

    def python(self, default: str) -> str:
        """The interpreter this version's zygote runs: its virtualenv's, else `default`."""
        return str(self.env_dir / "bin" / "python") if self.env_dir is not None else default

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.namespace, self.function, self.version)
