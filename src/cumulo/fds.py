"""File descriptors across process boundaries: what a child keeps, and who owns its output.

Three rules (docs/sandbox.md, "File descriptors and output"):

- Every fd the platform opens is close-on-exec. Python makes that the default (PEP 446)
  for everything but fds received as SCM_RIGHTS: `recv_with_fds` asks the kernel for
  MSG_CMSG_CLOEXEC, so a worker's socket end in the gateway never reaches a later child.
- Every child starts with an explicit allow-list. Children that run our Python call
  `keep_only` first thing; children that are not ours, or that run behind bubblewrap (a C
  program that passes on whatever it inherited), are started by `spawn`, which closes
  every other fd between fork and exec whatever event loop the gateway runs (uvloop's own
  spawn closes nothing and relies on close-on-exec alone).
- A function's output never reaches a platform fd: a sandboxed child's fds 1 and 2 are
  pipes the gateway reads (`OutputPipe`), line by line and bounded, into the function's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import struct
import subprocess
from collections.abc import Callable, Iterable, Sequence

log = logging.getLogger("cumulo.fds")

# The longest line kept from a child's output (the worker's own log-frame cap); the rest
# of an overlong line is dropped up to its newline and the line is marked.
MAX_LINE = 16 * 1024
TRUNCATED = " …[truncated]"
READ_CHUNK = 64 * 1024

# stream ("stdout"/"stderr"), line
OutputSink = Callable[[str, str], None]


# ---------------------------------------------------------------- receiving fds
def recv_with_fds(
    sock: socket.socket, bufsize: int, ancillary: int
) -> tuple[bytes, list[int], int | None]:
    """One packet: data, the fds it carried (close-on-exec), the sender's pid if the
    kernel attached credentials (SO_PASSCRED)."""
    data, ancdata, _flags, _addr = sock.recvmsg(bufsize, ancillary, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    pid = None
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
        elif kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
            pid = struct.unpack("iII", payload[:12])[0]
    return data, fds, pid


# ---------------------------------------------------------------- the child's side
def open_fds() -> list[int]:
    """This process's open fds (from /proc; every fd up to the limit without it)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return list(range(min(soft, 1 << 20)))
    # The listing's own directory fd is among them, already closed: harmless below.
    return sorted(int(n) for n in names if n.isdigit())


def keep_only(keep: Iterable[int] = ()) -> None:
    """Close every fd but 0, 1, 2 and `keep`: the first thing a child entry point does, so
    nothing it inherited by mistake (another tenant's worker socket) outlives this call.
    The kept ones become close-on-exec: whatever this process execs (a function's own
    subprocess) gets stdio only."""
    allowed = {0, 1, 2, *keep}
    for fd in open_fds():
        if fd not in allowed:
            with contextlib.suppress(OSError):
                os.close(fd)
    for fd in allowed - {0, 1, 2}:
        os.set_inheritable(fd, False)


# ---------------------------------------------------------------- the gateway's side
class Child:
    """A child started by `spawn`: its pid, its exit status, an awaitable wait.

    The exit is learnt from a pidfd, so it needs no child watcher of the event loop; made
    inside a running loop."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self._waiters: list[asyncio.Future[int]] = []
        self._pidfd = -1
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:  # pragma: no cover - pidfds are Linux >= 5.3
            self._pidfd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        # Reaped as soon as it exits, awaited or not (a killed zygote nobody waits for
        # must not stay a zombie, nor its pidfd stay open).
        self._watch()

    def _watch(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._pidfd >= 0:
            self._loop.add_reader(self._pidfd, self._exited)
        else:  # pragma: no cover - only without pidfds
            self._poll()

    def _poll(self) -> None:  # pragma: no cover - only without pidfds
        if self.poll() is None:
            assert self._loop is not None
            self._loop.call_later(0.05, self._poll)
        else:
            self._resolve()

    def _exited(self) -> None:
        if self.poll() is None:
            return
        self._resolve()

    def _resolve(self) -> None:
        if self._pidfd >= 0 and self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                assert self.returncode is not None
                fut.set_result(self.returncode)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._popen.poll()
        return self.returncode

    async def wait(self) -> int:
        if self.poll() is not None:
            self._resolve()
            assert self.returncode is not None
            return self.returncode
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._watch()
        return await fut

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def killpg(self) -> None:
        """SIGKILL the child's process group (it leads one: `spawn` starts a session), only
        while the child is unreaped: a reaped pid may already be another process's (with
        pid_max at 32768 it comes round in seconds under load), and so its group number."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


def spawn(
    argv: Sequence[str],
    *,
    keep: Sequence[int] = (),
    env: dict[str, str],
    cwd: str,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = None,
    stderr: int | None = None,
    new_session: bool = True,
) -> Child:
    """Start `argv` with fds 0-2 and `keep` only (subprocess closes every other fd between
    fork and exec, with close_range where the kernel has it). stdin/stdout/stderr: an fd,
    subprocess.DEVNULL, or None (the gateway's own: only for platform children)."""
    popen = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(keep),
        close_fds=True,
        env=env,
        cwd=cwd,
        start_new_session=new_session,
    )
    return Child(popen)


def _run_blocking(
    argv: Sequence[str], env: dict[str, str] | None, cwd: str | None, timeout: float, merge: bool
) -> tuple[int, bytes, bytes]:
    with subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        close_fds=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Its whole session: what a build script started goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"{argv[0]} ran longer than {timeout:g}s") from None
        return proc.returncode, out, err or b""


async def run(
    argv: Sequence[str],
    *,
    limit_s: float,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    merge_stderr: bool = False,
) -> tuple[int, bytes, bytes]:
    """Run a command that is not ours (pip, uv, venv) to completion in its own session with
    stdin /dev/null, its output captured and no other fd of the gateway's: (status, stdout,
    stderr). TimeoutError after `limit_s`, its session killed."""
    return await asyncio.to_thread(_run_blocking, argv, env, cwd, limit_s, merge_stderr)


class OutputPipe:
    """The gateway's read end of a child's fd 1 or 2: complete lines go to `sink`.

    Bounded: at most MAX_LINE bytes of a line are held; the rest is dropped up to its
    newline and the line ends with TRUNCATED. `sink` may change while it runs (a spare
    zygote's output belongs to the platform until a version adopts it)."""

    def __init__(self, fd: int, stream: str, sink: OutputSink | None) -> None:
        self.fd = fd
        self.stream = stream
        self.sink = sink
        self.max_line = MAX_LINE
        self.marker = TRUNCATED
        self._buf = bytearray()
        self._dropping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        os.set_blocking(fd, False)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            if self._buf and not self._dropping:
                self._emit(bytes(self._buf), False)
            self._buf.clear()
            self.close()
            return
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not self._dropping:
                room = self.max_line - len(self._buf)
                self._buf += piece[:room]
                if len(piece) > room:
                    self._emit(bytes(self._buf), True)
                    self._buf.clear()
                    self._dropping = True
            if end < 0:
                return
            if self._dropping:
                self._dropping = False
            else:
                self._emit(bytes(self._buf), False)
                self._buf.clear()
            start = end + 1

    def _emit(self, raw: bytes, truncated: bool) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        if truncated:
            line += self.marker
        if self.sink is not None:
            try:
                self.sink(self.stream, line)
            except Exception:  # a sink's failure must not stop the reading
                log.exception("a function's output line could not be logged")

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1


class Output:
    """A child's stdout and stderr pipes: `child_fds` for spawn, then `start` to read."""

    def __init__(self, sink: OutputSink | None) -> None:
        out_r, self._out_w = os.pipe()
        err_r, self._err_w = os.pipe()
        self.pipes = (OutputPipe(out_r, "stdout", sink), OutputPipe(err_r, "stderr", sink))

    @property
    def child_fds(self) -> tuple[int, int]:
        return self._out_w, self._err_w

    def start(self) -> None:
        """Once the child has its copies: close ours of the write ends, read the others."""
        self.close_child_ends()
        for pipe in self.pipes:
            pipe.start()

    def close_child_ends(self) -> None:
        for fd in (self._out_w, self._err_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._out_w = self._err_w = -1

    def rebind(self, sink: OutputSink | None) -> None:
        for pipe in self.pipes:
            pipe.sink = sink

    def close(self) -> None:
        self.close_child_ends()
        for pipe in self.pipes:
            pipe.close()
