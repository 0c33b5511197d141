"""The gateway's handle on one zygote process: start it, fork workers, learn of exits.

The zygote starts inside the sandbox (sandbox.py) when one can be built: bubblewrap with
its own pid namespace, under a private uid when the gateway is root. Every pid this handle
hands out is a host pid the kernel vouched for (SO_PASSCRED on the control socket), never
one written into a message by the zygote, which has run user code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from cumulo import fds
from cumulo.errors import FunctionCrashed
from cumulo.runtime import cgroups, lambda_events, sandbox, spares
from cumulo.runtime.loader import KIND_LAMBDA
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spares import ENV_ALLOWLIST, base_env
from cumulo.runtime.spec import VersionSpec

__all__ = ["ENV_ALLOWLIST", "ExitInfo", "ZygoteHandle", "recv_packet", "zygote_env"]


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
    env = base_env(str(spec.code_dir))
    if spec.kind == KIND_LAMBDA:
        # Before the user's `env`, which may set its own region.
        env.update(lambda_env(spec))
    env.update(spec.config.env)
    if spec.kind == KIND_LAMBDA:
        env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
    return env


def lambda_env(spec: VersionSpec) -> dict[str, str]:
    """The variables AWS Lambda's runtime sets, which Lambda code and libraries (Powertools,
    the AWS SDKs) read; set in the zygote, so code run at import sees them too."""
    name = spec.function
    return {
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": str(spec.version),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.config.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": lambda_events.log_group(name),
        "AWS_LAMBDA_LOG_STREAM_NAME": lambda_events.log_stream(spec.version, time.time()),
        "AWS_REGION": lambda_events.DEFAULT_REGION,
        "AWS_EXECUTION_ENV": "cumulo",
        "LAMBDA_TASK_ROOT": str(spec.code_dir),
        "_HANDLER": f"{spec.module}.{spec.attr}",
    }


MB = 1024 * 1024
# Room for the worker's socket and the sender's credentials on each control packet.
_ANCILLARY = socket.CMSG_SPACE(4 * 4) + socket.CMSG_SPACE(struct.calcsize("iII"))


def recv_packet(sock: socket.socket) -> tuple[bytes, list[int], int | None]:
    """One control packet: data, the fds it carried (close-on-exec: another tenant's worker
    socket must never reach a later child), and the sender's pid (ours)."""
    return fds.recv_with_fds(sock, 65536, _ANCILLARY)


class ZygoteHandle:
    def __init__(
        self,
        spec: VersionSpec,
        settings: RuntimeSettings,
        on_worker_exit: Callable[[int, ExitInfo], None],
        on_death: Callable[[ZygoteHandle], None],
        on_output: fds.OutputSink | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self._on_worker_exit = on_worker_exit
        self._on_death = on_death
        self.pid: int | None = None
        self.proc: fds.Child | None = None
        # The zygote's (and so its workers') fds 1 and 2: pipes we read into the function's
        # logs, never an fd of the gateway's.
        self._on_output = on_output
        self.output: fds.Output | None = None
        self._ctl: socket.socket | None = None
        self._ready: asyncio.Future[None] | None = None
        self._forks: dict[str, asyncio.Future[tuple[int, socket.socket]]] = {}
        self._wids = itertools.count(1)
        self.alive = False
        self.idle_since: float = 0.0
        # The zygote's pid namespace → ours, for the workers it forked.
        self._host_pids: dict[int, int] = {}
        # A pidfd per worker (by host pid): a pid the zygote reaped may be handed to another
        # process at once (pid_max is often 32768), so a group is only killed by its number
        # while the pidfd shows its leader unreaped, holding the number.
        self._pidfds: dict[int, int] = {}
        self._uid: int | None = None
        self._validate_only = False
        self.validated: list[dict[str, Any]] = []
        # When the adopted spare was started (time.time()); None: started for this version.
        self.prestarted_at: float | None = None
        # The control group holding this zygote's whole tree (set by whoever starts it;
        # cgroups.py), and its memory once ready (what its workers share).
        self.group: cgroups.Group | None = None
        self.baseline = 0

    async def validate(self) -> list[dict[str, Any]]:
        """Import the bundle in a throwaway zygote (same sandbox, uid and filters as a real
        one) and list its handlers; the user's import error comes back as FunctionCrashed
        with the user's traceback in its details."""
        self._validate_only = True
        try:
            await self.start()
            return self.validated
        finally:
            self.kill()
            await self.wait()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        status = sandbox.status(settings)
        if settings.isolation == "strict" and not status.sandboxed:
            raise FunctionCrashed(
                f"the sandbox is unavailable ({status.reason}) and isolation is strict",
                code="sandbox_unavailable",
            )
        spec = self.spec
        memory = max(spec.config.memory_mb, 16) * MB
        if status.drop_uid:
            self._uid = sandbox.uids.acquire()
        spare_pool = spares.current
        spare = None
        tree = -1
        if (
            spare_pool is not None
            and status.sandboxed
            and status.drop_uid
            and not spec.config.network
            and spare_pool.matches(settings, memory, spec.config.env, spec.python(settings.python))
        ):
            tree = spare_pool.code_tree(spec.code_dir)
            spare = spare_pool.take(self.group is not None) if tree >= 0 else None
            if spare is None and tree >= 0:
                os.close(tree)
        spec_message: dict[str, Any] = {
            "parent": 0 if status.sandboxed else os.getpid(),
            "namespace": spec.namespace,
            "function": spec.function,
            "version": spec.version,
            "code_dir": str(spec.code_dir),
            "module": spec.module,
            "attr": spec.attr,
            "config": spec.config.to_dict(),
            "max_response": settings.max_response_bytes,
            "uid": self._uid,
            "sandboxed": status.sandboxed,
            "seccomp": status.seccomp,
            "fsize_bytes": memory,
            "validate": self._validate_only,
            "cgroup": self.group.procs_files if self.group is not None else [],
            "max_pids": settings.max_pids,
        }
        # A spare still starting may not have joined its own group yet, and the adoption
        # moves that group's members into the version's and removes it (the launcher then
        # failed to join: exit 2, and a healthy function's 502): it must say it is ready.
        if (
            spare is not None
            and spare.group is not None
            and not await spares.until_ready(spare, settings.zygote_start_timeout_s)
        ):
            spares.kill(spare)
            os.close(tree)
            spare = None
        self._ready = loop.create_future()
        if spare is not None:
            try:
                self._adopt(spare, spec_message, tree)
            except BaseException:
                self._release_uid()
                raise
            finally:
                os.close(tree)
            ours = spare.ctl
        else:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            # Every packet then carries its sender's pid, translated into our pid namespace.
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            python = spec.python(settings.python)
            argv = [python, "-m", "cumulo.runtime.zygote", str(theirs.fileno())]
            if status.bwrap is not None:
                argv = [
                    *sandbox.bwrap_argv(
                        status.bwrap,
                        settings,
                        spec.code_dir,
                        network=spec.config.network,
                        tmp_bytes=memory,
                        drop_uid=status.drop_uid,
                        # Its virtualenv lives in the (hidden) data dir.
                        ro_paths=(spec.env_dir,) if spec.env_dir is not None else (),
                    ),
                    *argv,
                ]
            output = fds.Output(self._on_output)
            try:
                ours.send(orjson.dumps(spec_message))
                if self.group is not None:
                    argv = self.group.wrap(argv)  # in its group from the first instruction
                self.proc = fds.spawn(
                    argv,
                    keep=[theirs.fileno()],
                    env=zygote_env(spec),
                    cwd=str(spec.code_dir),
                    stdout=output.child_fds[0],
                    stderr=output.child_fds[1],
                )
            except BaseException:
                ours.close()
                output.close()
                self._release_uid()
                raise
            finally:
                theirs.close()
            self.output = output
            output.start()
            ours.setblocking(False)
        # Until `ready` names the zygote itself: the launcher (bwrap), our process group.
        assert self.proc is not None
        self.pid = self.proc.pid
        self._ctl = ours
        self.alive = True
        loop.add_reader(ours.fileno(), self._on_readable)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), settings.zygote_start_timeout_s)
        except TimeoutError:
            self.kill()
            raise FunctionCrashed(
                f"function {spec.function} did not start within "
                f"{settings.zygote_start_timeout_s:.0f}s",
                code="start_timeout",
            ) from None

    def _adopt(self, spare: spares.Spare, spec_message: dict[str, Any], tree: int) -> None:
        """Hand a spare this version: the spec, its environment and the code dir as a
        detached read-only mount (the spare's sandbox was built without it)."""
        self.proc = spare.proc
        self.prestarted_at = spare.started_at
        # The spare's output is the function's from now on.
        self.output = spare.output
        spare.output.rebind(self._on_output)
        message = {**spec_message, "env": zygote_env(self.spec)}
        try:
            if self.group is not None and spare.group is not None:
                # Before the spec: the spare runs no user code until it has it.
                self.group.take_from(spare.group)
                if cgroups.current is not None:
                    cgroups.current.release(spare.group)
            socket.send_fds(spare.ctl, [orjson.dumps(message)], [tree])
        except OSError:
            spares.kill(spare)
            raise FunctionCrashed(
                "a spare zygote could not be adopted", code="zygote_died"
            ) from None

    def _on_readable(self) -> None:
        assert self._ctl is not None
        while True:
            try:
                data, passed, sender = recv_packet(self._ctl)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, passed, sender = b"", [], None
            if not data:
                for fd in passed:
                    os.close(fd)
                self._closed()
                return
            try:
                message = msgpack.unpackb(data, raw=False)
                if not isinstance(message, dict):
                    raise TypeError("not a map")
                self._handle(message, passed, sender)
            except Exception:
                for fd in passed:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _handle(self, message: dict[str, Any], passed: list[int], sender: int | None) -> None:
        op = message.get("op")
        if op == "forked":
            fut = self._forks.pop(str(message.get("wid")), None)
            sock = socket.socket(fileno=passed.pop(0)) if passed else None
            for fd in passed:
                os.close(fd)
            if fut is not None and not fut.done() and sock is not None and sender:
                self._host_pids[int(message["pid"])] = sender
                with contextlib.suppress(OSError):
                    self._pidfds[sender] = os.pidfd_open(sender)
                fut.set_result((sender, sock))
            elif sock is not None:
                sock.close()
        elif op == "fork_failed":
            fut = self._forks.pop(str(message.get("wid")), None)
            if fut is not None and not fut.done():
                fut.set_exception(
                    FunctionCrashed(
                        f"could not start a worker: {str(message.get('message', ''))[:200]}",
                        code="worker_start_failed",
                    )
                )
        elif op == "exit":
            fut = self._forks.pop(str(message.get("wid")), None)
            if fut is not None and not fut.done():
                fut.set_exception(
                    FunctionCrashed("the worker died while starting", code="function_crashed")
                )
            host = self._host_pids.pop(int(message["pid"]), None)
            if host is not None:
                self._close_pidfd(host)
                self._on_worker_exit(host, ExitInfo(message.get("code"), message.get("signal")))
        elif op == "validated":
            self.validated = list(message.get("handlers") or [])
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif op == "ready":
            if sender:
                self.pid = sender
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
            for fd in passed:
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
        # Its workers die with it (parent-death signal); their numbers are not kept.
        for pid in self._host_pids.values():
            self._kill_worker_group(pid)
        self._host_pids.clear()
        for pid in list(self._pidfds):
            self._close_pidfd(pid)
        self._release_uid()
        if cgroups.current is not None:
            cgroups.current.release(self.group)  # whatever the zygote left running dies
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
        """SIGKILL a worker and what it forked, now (its process group: the gateway is its
        grandparent, so it asks the zygote too)."""
        if pid in self._host_pids.values():
            self._kill_worker_group(pid)
        inner = next((i for i, h in self._host_pids.items() if h == pid), None)
        if inner is not None:
            self._send({"op": "kill", "pid": inner})

    def _send(self, message: dict[str, Any]) -> None:
        if self._ctl is None or not self.alive:
            return
        with contextlib.suppress(OSError):
            self._ctl.send(msgpack.packb(message, use_bin_type=True))

    def kill(self) -> None:
        """Stop the zygote and, with it, every worker it forked."""
        if self.proc is not None:
            # The launcher's group: bwrap (whose pid namespace dies with it) or the zygote.
            self.proc.killpg()
        for pid in self._host_pids.values():
            self._kill_worker_group(pid)
        self._host_pids.clear()
        for pid in list(self._pidfds):
            self._close_pidfd(pid)
        if self.alive:
            self._closed()
        elif cgroups.current is not None:
            cgroups.current.release(self.group)  # it never came up

    def _kill_worker_group(self, pid: int) -> None:
        fd = self._pidfds.get(pid)
        if fd is None:
            _kill_group(pid)  # no pidfd (an old kernel): by number, as before
            return
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            return  # reaped already (its group was killed then): the number is not ours
        except OSError:
            return
        _kill_group(pid)  # unreaped: the number is still its group's

    def _close_pidfd(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def _release_uid(self) -> None:
        if self._uid is not None:
            sandbox.uids.release(self._uid)
            self._uid = None

    async def wait(self) -> None:
        if self.proc is not None:
            await self.proc.wait()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, 9)
