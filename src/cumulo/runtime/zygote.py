"""The zygote: imports one function version once, then forks a worker per request.

Started by the gateway as `python -m cumulo.runtime.zygote SPEC_JSON` with a SOCK_SEQPACKET
control socket on fd 3. Control messages are msgpack maps, one per packet:

gateway → zygote   {op: fork, wid}   {op: kill, pid}   {op: stop}
zygote → gateway   {op: ready, pid}  {op: error, message, traceback}
                   {op: forked, wid, pid} + the worker's socket as SCM_RIGHTS
                   {op: exit, pid, code, signal}

The worker's end of a fresh socketpair is passed to the gateway, so workers need no
listening socket and no path: whatever the sandbox hides, the inherited fd still works.
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

from cumulo.runtime import limits
from cumulo.runtime.loader import FoundHandler, UserCodeError, resolve
from cumulo.runtime.wire import BlockingChannel
from cumulo.runtime.worker import Worker, WorkerMeta
from cumulo.sdk.spec import FunctionConfig


def _send(ctl: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    if fds:
        socket.send_fds(ctl, [data], fds)
    else:
        ctl.send(data)


class Zygote:
    def __init__(self, ctl: socket.socket, handler: FoundHandler, meta: WorkerMeta) -> None:
        self.ctl = ctl
        self.handler = handler
        self.meta = meta
        self.children: set[int] = set()
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
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        elif op == "stop":
            self.stop(0)

    def fork(self, wid: str) -> None:
        gateway_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        zygote_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
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
        self.children.add(pid)
        worker_end.close()
        try:
            _send(self.ctl, {"op": "forked", "wid": wid, "pid": pid}, [gateway_end.fileno()])
        finally:
            gateway_end.close()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            message = {
                "op": "exit",
                "pid": pid,
                "code": code if code >= 0 else None,
                "signal": -code if code < 0 else None,
            }
            with contextlib.suppress(OSError):
                _send(self.ctl, message)

    def stop(self, code: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        os._exit(code)


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    limits.die_with_parent(int(spec["parent"]))
    limits.no_core_dumps()
    ctl = socket.socket(fileno=int(spec["ctl_fd"]))
    code_dir = Path(spec["code_dir"])
    os.chdir(code_dir)
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
    except UserCodeError as exc:
        _send(ctl, {"op": "error", "message": str(exc), "traceback": exc.user_traceback})
        os._exit(1)
    try:
        Zygote(ctl, handler, meta).run()
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.ECONNRESET):
            os._exit(0)
        raise


if __name__ == "__main__":
    main()
