"""The gateway's end of the insights sidecar (cumulo.ai.sidecar): started on first use,
restarted after a crash (at most once per `RESTART_BACKOFF_S`), stopped with the platform.

Calls are serialised (one request in flight): the callers are two loops that run once per
bucket or window, never the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import sys
import time
from typing import Any

import msgpack

log = logging.getLogger("cumulo.insights")

HEADER = struct.Struct(">I")
RESTART_BACKOFF_S = 5.0
CALL_TIMEOUT_S = 60.0  # the first call pays the sidecar's imports (~1-2 s)
# Only what an interpreter needs: no keys or tokens from the gateway's environment.
ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


class SidecarError(Exception):
    pass


class SidecarClient:
    def __init__(self, min_train: int, python: str = sys.executable) -> None:
        self._argv = [python, "-m", "cumulo.ai.sidecar", str(min_train)]
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._ids = 0
        self._last_start = -RESTART_BACKOFF_S
        self.starts = 0  # how many sidecars were started (restarts included)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    async def call(self, op: str, args: dict[str, Any], wait_s: float = CALL_TIMEOUT_S) -> Any:
        async with self._lock:
            proc = await self._ensure()
            assert proc.stdin is not None
            assert proc.stdout is not None
            self._ids += 1
            body = msgpack.packb({"id": self._ids, "op": op, "args": args}, use_bin_type=True)
            try:
                proc.stdin.write(HEADER.pack(len(body)) + body)
                await proc.stdin.drain()
                head = await asyncio.wait_for(proc.stdout.readexactly(HEADER.size), wait_s)
                (size,) = HEADER.unpack(head)
                reply = msgpack.unpackb(
                    await asyncio.wait_for(proc.stdout.readexactly(size), wait_s), raw=False
                )
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                await self._kill()
                raise SidecarError(f"the insights sidecar failed: {type(exc).__name__}") from exc
            if not reply.get("ok"):
                raise SidecarError(str(reply.get("error")))
            return reply.get("value")

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        now = time.monotonic()
        if now - self._last_start < RESTART_BACKOFF_S:
            raise SidecarError("the insights sidecar is restarting")
        self._last_start = now
        env = {k: v for k, v in os.environ.items() if k in ENV_KEEP}
        env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        self.starts += 1
        log.info("insights sidecar started (pid %d)", self._proc.pid)
        return self._proc

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        async with self._lock:
            proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the sidecar exits at end of input
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
