"""The executor seam: what the platform asks of wherever workers run.

Two implementations: `LocalExecutor` (runtime/executor.py: zygotes and workers on this
machine, the embedded default) and `RayExecutor` (runtime/ray_executor.py: the same on
every node of a Ray cluster, through one agent per node). Errors are `ApiError`s carrying
their status and code (node_lost, executor_unavailable, ...), mapped to HTTP once, in the
gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from cumulo.runtime.pool import InvokeResult, VersionPool
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.timings import Timings
from cumulo.runtime.ws_session import WsSession


class Executor(Protocol):
    settings: RuntimeSettings

    @property
    def pools(self) -> Mapping[tuple[str, str, int], VersionPool]:
        """This process's own pools by (namespace, function, version); empty when every
        worker is on another machine."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> bool:
        """Whether invocations can be placed now (`/readyz`)."""
        ...

    async def invoke(
        self, spec: VersionSpec, frame: dict[str, Any], timings: Timings | None = None
    ) -> InvokeResult: ...

    async def connect(self, spec: VersionSpec, frame: dict[str, Any]) -> WsSession: ...

    def prewarm(self, spec: VersionSpec) -> None: ...

    def prewarm_floor(self, spec: VersionSpec, workers: int, hold_s: float) -> int: ...

    async def retire(self, namespace: str, function: str, keep: set[int] | None = None) -> None: ...

    def describe(self, namespace: str, function: str) -> list[dict[str, Any]]: ...

    async def describe_workers(self, namespace: str, function: str) -> list[dict[str, Any]]:
        """The function's pools wherever they run (a remote executor asks its nodes)."""
        ...
