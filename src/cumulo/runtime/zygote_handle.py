"""The gateway's handle on one zygote process: start it, fork workers, learn of exits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from cumulo.errors import FunctionCrashed
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spec import VersionSpec

# Variables a zygote inherits from the gateway; everything else (keys, tokens) stays behind.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass(slots=True)
class ExitInfo:
    code: int | None
    signal: int | None

    def describe(self) -> str:
        if self.signal is not None:
            names = {9: "SIGKILL", 11: "SIGSEGV", 6: "SIGABRT", 7: "SIGBUS", 4: "SIGILL"}
            return f"killed by signal {self.signal} ({names.get(self.signal, 'signal')})"
        return f"exited with code {self.code}"


def zygote_env(spec: VersionSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWLIST}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        {
            "HOME": str(spec.code_dir),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            # glibc reserves 64 MB of address space per thread arena; the memory limit counts it.
            "MALLOC_ARENA_MAX": "2",
        }
    )
    env.update(spec.config.env)
    return env


class ZygoteHandle:
    def __init__(
        self,
        spec: VersionSpec,
        settings: RuntimeSettings,
        on_worker_exit: Callable[[int, ExitInfo], None],
        on_death: Callable[[ZygoteHandle], None],
    ) -> None:
        self.spec = spec
        self.settings = settings
        self._on_worker_exit = on_worker_exit
        self._on_death = on_death
        self.pid: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._ctl: socket.socket | None = None
        self._ready: asyncio.Future[None] | None = None
        self._forks: dict[str, asyncio.Future[tuple[int, socket.socket]]] = {}
        self._wids = itertools.count(1)
        self.alive = False
        self.idle_since: float = 0.0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = self.spec
        payload = orjson.dumps(
            {
                "parent": os.getpid(),
                "ctl_fd": theirs.fileno(),
                "namespace": spec.namespace,
                "function": spec.function,
                "version": spec.version,
                "code_dir": str(spec.code_dir),
                "module": spec.module,
                "attr": spec.attr,
                "config": spec.config.to_dict(),
                "max_response": self.settings.max_response_bytes,
            }
        ).decode()
        self._ready = loop.create_future()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.settings.python,
                "-m",
                "cumulo.runtime.zygote",
                payload,
                pass_fds=[theirs.fileno()],
                env=zygote_env(spec),
                cwd=str(spec.code_dir),
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            theirs.close()
        self.pid = self.proc.pid
        ours.setblocking(False)
        self._ctl = ours
        self.alive = True
        loop.add_reader(ours.fileno(), self._on_readable)
        try:
            await asyncio.wait_for(
                asyncio.shield(self._ready), self.settings.zygote_start_timeout_s
            )
        except TimeoutError:
            self.kill()
            raise FunctionCrashed(
                f"function {spec.function} did not start within "
                f"{self.settings.zygote_start_timeout_s:.0f}s",
                code="start_timeout",
            ) from None

    def _on_readable(self) -> None:
        assert self._ctl is not None
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._ctl, 65536, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._closed()
                return
            self._handle(msgpack.unpackb(data, raw=False), fds)

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        if op == "forked":
            fut = self._forks.pop(str(message["wid"]), None)
            sock = socket.socket(fileno=fds[0]) if fds else None
            if fut is not None and not fut.done() and sock is not None:
                fut.set_result((int(message["pid"]), sock))
            elif sock is not None:
                sock.close()
        elif op == "exit":
            self._on_worker_exit(
                int(message["pid"]), ExitInfo(message.get("code"), message.get("signal"))
            )
        elif op == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif op == "error":
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(
                    FunctionCrashed(
                        str(message.get("message", "the function failed to start")),
                        code="start_failed",
                        details={"traceback": message.get("traceback", "")},
                    )
                )
        else:
            for fd in fds:
                os.close(fd)

    def _closed(self) -> None:
        if not self.alive:
            return
        self.alive = False
        loop = asyncio.get_running_loop()
        if self._ctl is not None:
            loop.remove_reader(self._ctl.fileno())
            self._ctl.close()
        error = FunctionCrashed(
            f"the zygote of {self.spec.function} v{self.spec.version} exited", code="zygote_died"
        )
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        for fut in self._forks.values():
            if not fut.done():
                fut.set_exception(error)
        self._forks.clear()
        self._on_death(self)

    async def fork(self) -> tuple[int, socket.socket]:
        if not self.alive or self._ctl is None:
            raise FunctionCrashed("the zygote is not running", code="zygote_died")
        wid = str(next(self._wids))
        fut: asyncio.Future[tuple[int, socket.socket]] = asyncio.get_running_loop().create_future()
        self._forks[wid] = fut
        self._send({"op": "fork", "wid": wid})
        return await fut

    def kill_worker(self, pid: int) -> None:
        """SIGKILL a worker now (the gateway is its grandparent, so it asks the zygote too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 9)
        self._send({"op": "kill", "pid": pid})

    def _send(self, message: dict[str, Any]) -> None:
        if self._ctl is None or not self.alive:
            return
        with contextlib.suppress(OSError):
            self._ctl.send(msgpack.packb(message, use_bin_type=True))

    def kill(self) -> None:
        """Stop the zygote and, with it, every worker it forked."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, 9)
        if self.alive:
            self._closed()

    async def wait(self) -> None:
        if self.proc is not None:
            await self.proc.wait()
