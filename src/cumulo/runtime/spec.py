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

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.namespace, self.function, self.version)
