"""The way into a container's network: a Unix socket relayed to 127.0.0.1:$PORT inside it.

`python -m cumulo.runtime.container_relay READY_FD PID_FILE PORT SOCKET UID` is started by
container_pool.py next to the container. It waits for the OCI runtime's pid file, enters
the container's network namespace (only that one: it keeps the host's filesystem, which
the container never sees), listens on SOCKET (a path: Unix sockets are reached through the
filesystem, whatever network namespace made them), drops to the container's host uid, and
writes `ready` to READY_FD once something accepts connections on PORT. It exits when the
container's init does. A container without `network` has only loopback in that namespace,
so the gateway reaches it through this relay and nothing else reaches it at all.

Only the standard library: this starts while the container does, on every cold start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

BUFFER = 64 * 1024
POLL_S = 0.002
PORT_POLL_S = 0.005
PID_WAIT_S = 60.0
CLONE_NEWNET = 0x40000000


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(BUFFER):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _relay(port: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
    finally:
        server_w.close()
        client_w.close()


async def _port_open(port: int) -> bool:
    try:
        _r, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def _wait_pid(pid_file: Path) -> int:
    deadline = time.monotonic() + PID_WAIT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            text = pid_file.read_text().strip()
            if text:
                return int(text)
        time.sleep(POLL_S)
    raise SystemExit(1)


async def run(pid: int, port: int, socket_path: str, uid: int | None, ready_fd: int) -> None:
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    pidfd = os.pidfd_open(pid)
    loop.add_reader(pidfd, gone.set)
    server = await asyncio.start_unix_server(
        lambda r, w: _relay(port, r, w), path=socket_path, limit=BUFFER
    )
    if uid is not None:
        # Nothing of root is needed past this point: the namespace is entered, the socket
        # bound (the gateway, root, connects to it whatever its owner).
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    async with server:
        while not await _port_open(port):
            if gone.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), PORT_POLL_S)
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
        await gone.wait()


def _setns(fd: int, nstype: int) -> None:
    # os.setns arrived in Python 3.12; libc's is the same call.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def main() -> None:
    ready_fd, pid_file, port, socket_path, uid_arg = sys.argv[1:6]
    pid = _wait_pid(Path(pid_file))
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    _setns(fd, CLONE_NEWNET)
    os.close(fd)
    uid = int(uid_arg) if uid_arg != "-" else None
    with contextlib.suppress(ProcessLookupError):
        asyncio.run(run(pid, int(port), socket_path, uid, int(ready_fd)))


if __name__ == "__main__":
    main()
