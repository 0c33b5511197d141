"""The zygote: imports one function version once, then forks a worker per request.

Started by the gateway as `python -m cumulo.runtime.zygote CTL_FD` (inside bubblewrap when
the sandbox is on, see sandbox.py) with a SOCK_SEQPACKET control socket on CTL_FD. The first
packet on it is the spec (JSON: the version, its config, the uid to run as); it travels on
the socket rather than the command line, which every process on the machine may read.
Control messages are msgpack maps, one per packet:

gateway → zygote   {op: fork, wid}   {op: kill, pid}   {op: stop}
zygote → gateway   {op: ready, pid}  {op: error, message, traceback}
spare → gateway    {op: spare}; then the spec comes with the code dir as a mount fd (spares.py)
worker → gateway   {op: forked, wid, pid} + the worker's socket as SCM_RIGHTS
zygote → gateway   {op: exit, pid, code, signal}

The worker's end of a fresh socketpair is passed to the gateway, so workers need no
listening socket and no path: whatever the sandbox hides, the inherited fd still works.
`forked` is sent by the new worker itself: the gateway reads the sender's pid from the
kernel (SO_PASSCRED), translated into its own pid namespace, and never trusts a pid a
zygote (which has run user code) writes into a message. Pids in `exit` and `kill` are the
zygote's own (its pid namespace); the gateway maps them.

Start-up order matters: read the spec, set rlimits, drop to the private uid, set
NO_NEW_PRIVS and install the seccomp filter, and only then import the user's module.
Each worker leads its own process group (then may create no other), so killing the group
kills whatever the worker forked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

import msgpack
import orjson

from cumulo import fds
from cumulo.runtime import cgroups, limits, sandbox
from cumulo.runtime.loader import KIND_MODEL, FoundHandler, UserCodeError, resolve
from cumulo.runtime.validate import validate
from cumulo.runtime.wire import BlockingChannel
from cumulo.runtime.worker import Worker, WorkerMeta
from cumulo.sdk.model import load_model
from cumulo.sdk.spec import FunctionConfig

SPEC_MAX = 1 << 20


def _send(ctl: socket.socket, message: dict[str, Any], passed: list[int] | None = None) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    if passed:
        socket.send_fds(ctl, [data], passed)
    else:
        ctl.send(data)


class Zygote:
    def __init__(
        self,
        ctl: socket.socket,
        handler: FoundHandler,
        meta: WorkerMeta,
        worker_filter: bytes | None = None,
    ) -> None:
        self.ctl = ctl
        self.handler = handler
        self.meta = meta
        self.worker_filter = worker_filter
        # pid → the wid the gateway asked for (to fail that fork if the child dies first).
        self.children: dict[int, str] = {}
        self.baseline = limits.virtual_size()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    def run(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: self.stop(0))
        _send(self.ctl, {"op": "ready", "pid": os.getpid()})
        while True:
            try:
                readable, _, _ = select.select([self.ctl.fileno(), self.wake_r], [], [])
            except InterruptedError:
                continue
            if self.wake_r in readable:
                os.read(self.wake_r, 512)
                self.reap()
            if self.ctl.fileno() in readable:
                data = self.ctl.recv(65536)
                if not data:
                    self.stop(0)
                self.handle(msgpack.unpackb(data, raw=False))

    def handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "fork":
            self.fork(str(message["wid"]))
        elif op == "kill":
            pid = int(message["pid"])
            if pid in self.children:
                kill_group(pid)
        elif op == "stop":
            self.stop(0)

    def fork(self, wid: str) -> None:
        # A fork the kernel refuses (the version's pids or memory limit, its descriptors)
        # fails this worker only: the zygote lives on for the workers it can still start.
        try:
            gateway_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            self._fork_failed(wid, exc)
            return
        zygote_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            gateway_end.close()
            worker_end.close()
            self._fork_failed(wid, exc)
            return
        if pid == 0:
            code = 0
            try:
                # The kernel's OOM killer takes a worker before the zygote that serves the
                # others (a version over its memory loses one worker, not all of them).
                limits.oom_first()
                # Its own process group first: the gateway and the zygote kill the group.
                os.setpgid(0, 0)
                if self.worker_filter is not None:
                    sandbox.load_bpf(self.worker_filter)
                # Sent by the worker itself, so the kernel vouches for the pid.
                forked = {"op": "forked", "wid": wid, "pid": os.getpid()}
                _send(self.ctl, forked, [gateway_end.fileno()])
                gateway_end.close()
                self.ctl.close()
                signal.set_wakeup_fd(-1)
                os.close(self.wake_r)
                os.close(self.wake_w)
                for sig in (signal.SIGCHLD, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                limits.die_with_parent(zygote_pid)
                limits.limit_memory(
                    self.baseline, self.meta.config.memory_mb, self.meta.config.concurrency
                )
                Worker(BlockingChannel(worker_end), self.handler, self.meta).serve()
            except BaseException:
                code = 1
                with contextlib.suppress(BaseException):
                    os.write(2, f"cumulo worker died:\n{traceback.format_exc()}".encode())
            finally:
                os._exit(code)
        self.children[pid] = wid
        worker_end.close()
        gateway_end.close()

    def _fork_failed(self, wid: str, exc: OSError) -> None:
        message = {"op": "fork_failed", "wid": wid, "message": exc.strerror or str(exc)}
        with contextlib.suppress(OSError):
            _send(self.ctl, message)

    def reap(self) -> None:
        while self.children:
            try:
                # Peek first: while the worker is a zombie its pid (= its group) cannot be
                # reused, so whatever it left running in its group is killed, nothing else.
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                self.children.clear()
                return
            if info is None or info.si_pid == 0:
                return
            kill_group(info.si_pid)
            pid, status = os.waitpid(info.si_pid, 0)
            if pid not in self.children:
                continue  # an orphan of the zygote's own (user code at import)
            wid = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            message = {
                "op": "exit",
                "pid": pid,
                "wid": wid,
                "code": code if code >= 0 else None,
                "signal": -code if code < 0 else None,
            }
            with contextlib.suppress(OSError):
                _send(self.ctl, message)

    def stop(self, code: int) -> None:
        for pid in list(self.children):
            kill_group(pid)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        os._exit(code)


def kill_group(pid: int) -> None:
    """SIGKILL a worker and everything it forked (its process group)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def confine(spec: dict[str, Any], code_dir: Path) -> tuple[Path, bytes | None]:
    """Everything that must happen before user code: rlimits, uid, NO_NEW_PRIVS, seccomp.

    Returns the code dir as the dropped uid reaches it and the worker's seccomp filter."""
    config = spec["config"]
    limits.no_core_dumps()
    limits.limit_files(int(spec.get("fsize_bytes") or 0))
    keep: list[int] = []
    uid = spec.get("uid")
    if uid is not None and os.geteuid() == 0:
        # Without bubblewrap the interpreter or the code may lie where the new uid cannot
        # reach (/root, the 0700 data dir): keep a descriptor to each such directory.
        if not spec.get("sandboxed"):
            sandbox.reroute_imports(keep)
            code_dir = Path(sandbox.reachable_path(str(code_dir), keep))
        sandbox.drop_privileges(int(uid), int(uid))
    # Credentials changed: the parent-death signal was reset with them.
    limits.die_with_parent(os.getppid())
    limits.limit_processes(
        int(config.get("max_instances") or 1),
        int(config.get("concurrency") or 1),
        int(spec.get("max_pids") or 0),
    )
    sandbox.no_new_privs()
    worker_filter = None
    if spec.get("seccomp", True):
        worker_filter = sandbox.install_filter(network=bool(config.get("network")))
    return code_dir, worker_filter


def wait_for_adoption(ctl: socket.socket) -> dict[str, Any]:
    """A spare (spares.py): announce readiness, block until a gateway hands over a version.

    The spec comes with the function's code dir as a detached read-only mount (this sandbox
    was built before the function was known); it is attached at the code dir's own path, so
    paths, the working directory and tracebacks are those of any zygote. The spare still
    has CAP_SYS_ADMIN for this one mount; the uid drop in `confine` takes every capability."""
    # `python -m` put the start directory (/) first on sys.path; user code must come from
    # its own directory only.
    if sys.path and sys.path[0] in ("", "/"):
        del sys.path[0]
    limits.die_with_parent(os.getppid())
    _send(ctl, {"op": "spare"})
    data, tree, _sender = fds.recv_with_fds(ctl, SPEC_MAX, socket.CMSG_SPACE(4))
    if not data or not tree:
        os._exit(0)
    try:
        spec: dict[str, Any] = orjson.loads(data)
        if spec.get("uid") is None:
            raise OSError(errno.EPERM, "a spare needs a uid to drop to")
        sandbox.attach_tree(tree[0], Path(spec["code_dir"]))
    except OSError as exc:
        _send(ctl, {"op": "error", "message": f"the sandbox could not be set up: {exc}"})
        os._exit(1)
    finally:
        for fd in tree:
            os.close(fd)
    os.environ.clear()
    os.environ.update(spec["env"])
    return spec


def main() -> None:
    ctl_fd = int(sys.argv[1])
    # Before anything else: this process keeps its stdio (/dev/null and the gateway's
    # output pipes) and its control socket, and nothing a launcher passed on by mistake.
    fds.keep_only([ctl_fd])
    ctl = socket.socket(fileno=ctl_fd)
    spare = "--spare" in sys.argv[2:]
    if spare:
        spec = wait_for_adoption(ctl)
    else:
        spec = orjson.loads(ctl.recv(SPEC_MAX))
        parent = int(spec.get("parent") or 0)
        limits.die_with_parent(parent if parent > 0 else os.getppid())
    code_dir = Path(spec["code_dir"])
    os.chdir(code_dir)
    try:
        # The version's control group (cgroups.py) holds us before any user code runs.
        cgroups.verify_member(list(spec.get("cgroup") or []))
        code_dir, worker_filter = confine(spec, code_dir)
        if spare and sandbox.capabilities_left():
            # The mount needed CAP_SYS_ADMIN; user code must never run with it.
            raise OSError(errno.EPERM, "capabilities left after the uid drop")
    except OSError as exc:
        _send(ctl, {"op": "error", "message": f"the sandbox could not be set up: {exc}"})
        os._exit(1)
    if spec.get("validate"):
        # Deploy-time check: import in the same sandbox a zygote gets, report, exit.
        result = validate(code_dir, spec["module"], spec["attr"] or None)
        if result["ok"]:
            _send(ctl, {"op": "validated", "handlers": result["handlers"]})
        else:
            _send(
                ctl, {"op": "error", "message": result["message"], "traceback": result["traceback"]}
            )
        os._exit(0)
    meta = WorkerMeta(
        namespace=spec["namespace"],
        function=spec["function"],
        version=int(spec["version"]),
        code_dir=code_dir,
        config=FunctionConfig.from_dict(spec["config"]),
        max_response=int(spec["max_response"]),
    )
    try:
        handler = resolve(code_dir, spec["module"], spec["attr"])
        if handler.kind == KIND_MODEL:
            # load() runs here, once: forked workers share the weights copy-on-write.
            handler = load_model(handler, meta.config, code_dir)
    except UserCodeError as exc:
        _send(ctl, {"op": "error", "message": str(exc), "traceback": exc.user_traceback})
        os._exit(1)
    try:
        Zygote(ctl, handler, meta, worker_filter).run()
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.ECONNRESET):
            os._exit(0)
        raise


if __name__ == "__main__":
    main()
