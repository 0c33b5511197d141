"""The local executor: a pool per deployed version, and the reaper that scales them down."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cumulo.errors import BadRequest
from cumulo.runtime import cgroups
from cumulo.runtime.container_pool import ContainerPool, stop_spare_relays
from cumulo.runtime.loader import KIND_CONTAINER, KIND_PROCESS
from cumulo.runtime.pool import Clock, InvokeResult, LogSink, RpcHandler, VersionPool
from cumulo.runtime.process_pool import ProcessPool
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spares import SparePool
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.timings import Timings
from cumulo.runtime.ws_session import WsSession
from cumulo.tasks import cancel_and_wait


class LocalExecutor:
    def __init__(
        self,
        settings: RuntimeSettings,
        rpc: RpcHandler,
        log_sink: LogSink,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self._rpc = rpc
        self._log_sink = log_sink
        self._clock = clock
        self.pools: dict[tuple[str, str, int], VersionPool] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.spares = SparePool(settings)

    async def start(self) -> None:
        # The platform's parent control group (stale ones of killed platforms swept).
        groups = cgroups.setup(self.settings.data_dir)
        logging.getLogger("cumulo.cgroups").info("limits: %s", groups.describe())
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())
        # Started in the background: the first spare is ready about when an interpreter
        # with cumulo imported is (~0.1 s); cold starts before that take the old path.
        self.spares.start()

    async def stop(self) -> None:
        await cancel_and_wait(self._reaper)
        await self.spares.stop()
        pools, self.pools = list(self.pools.values()), {}
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)
        stop_spare_relays()
        cgroups.shutdown()

    def ready(self) -> bool:
        return True

    def pool_for(self, spec: VersionSpec) -> VersionPool:
        pool = self.pools.get(spec.key)
        if pool is None or pool.closed:
            # A process function (any language) proxies to its command instead of forking.
            kind = ProcessPool if spec.kind == KIND_PROCESS else VersionPool
            if spec.kind == KIND_CONTAINER:
                kind = ContainerPool  # a container image: a process function run by crun
            pool = kind(spec, self.settings, self._rpc, self._log_sink, self._clock)
            self.pools[spec.key] = pool
        return pool

    async def invoke(
        self, spec: VersionSpec, frame: dict[str, Any], timings: Timings | None = None
    ) -> InvokeResult:
        return await self.pool_for(spec).invoke(frame, timings)

    async def connect(self, spec: VersionSpec, frame: dict[str, Any]) -> WsSession:
        """Open a WebSocket to an app (`frame`: ws_open); it holds a worker slot until it ends."""
        pool = self.pool_for(spec)
        if isinstance(pool, ProcessPool):
            raise BadRequest("WebSockets reach only cumulo.app functions", code="not_an_app")
        return await pool.connect(frame)

    def prewarm(self, spec: VersionSpec) -> None:
        """Start min_instances workers now instead of at the next reaper tick."""
        if spec.config.min_instances > 0:
            pool = self.pool_for(spec)
            pool.draining = False
            pool.tick()

    def prewarm_floor(self, spec: VersionSpec, workers: int, hold_s: float) -> int:
        """Predicted load (cumulo.ai.prewarm): hold `workers` warm for `hold_s` seconds."""
        if spec.kind in (KIND_PROCESS, KIND_CONTAINER):
            return 0  # a process function proxies to its own command: nothing to fork
        return self.pool_for(spec).prewarm(workers, self._clock() + hold_s)

    async def retire(self, namespace: str, function: str, keep: set[int] | None = None) -> None:
        """Stop the pools of a function's versions, except those in `keep`."""
        doomed = [
            key
            for key in self.pools
            if key[0] == namespace and key[1] == function and (keep is None or key[2] not in keep)
        ]
        pools = [self.pools.pop(key) for key in doomed]
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)

    def tick(self) -> None:
        for key, pool in list(self.pools.items()):
            pool.tick()
            if pool.is_idle and (pool.draining or pool.config.min_instances == 0):
                del self.pools[key]

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_s)
            self.tick()

    def describe(self, namespace: str, function: str) -> list[dict[str, Any]]:
        return [
            pool.describe()
            for key, pool in sorted(self.pools.items())
            if key[0] == namespace and key[1] == function
        ]

    async def describe_workers(self, namespace: str, function: str) -> list[dict[str, Any]]:
        return self.describe(namespace, function)
