"""The way into a container's network: a Unix socket relayed to 127.0.0.1:$PORT inside it.

`python container_relay.py READY_FD` is started by container_pool.py ahead of need (a
spare: its interpreter start is then off the cold start) and told `PID_FILE PORT SOCKET
UID` on stdin when a container starts. It waits for the OCI runtime's pid file, enters
the container's network namespace (only that one: it keeps the host's filesystem, which
the container never sees), listens on SOCKET (a path: Unix sockets are reached through the
filesystem, whatever network namespace made them), drops to the container's host uid, and
writes `ready` to READY_FD once something accepts connections on PORT. It exits when the
container's init does. A container without `network` has only loopback in that namespace,
so the gateway reaches it through this relay and nothing else reaches it at all.

Only the standard library, and no asyncio (importing it takes ~40 ms on a loaded 2-core
host, most of a cold start): blocking sockets and two threads per connection.
"""

from __future__ import annotations

import contextlib

# Imported now, not lazily by the first connect (socket encodes hosts with it): after the
# drop to the container's uid the interpreter's stdlib may be out of reach (/root/.pyenv).
import encodings.idna  # noqa: F401
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path
from queue import SimpleQueue

BUFFER = 64 * 1024
POLL_S = 0.001
PID_WAIT_S = 60.0
CLONE_NEWNET = 0x40000000


def _serve(client: socket.socket, port: int) -> None:
    """Both directions of one connection in one thread (select, then blocking sends): a
    second thread per connection halved the relay's rate. A peer that stops reading stalls
    only its own connection, which the gateway's timeout ends."""
    try:
        server = socket.create_connection(("127.0.0.1", port))
    except OSError:
        client.close()
        return
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    peer = {client: server, server: client}
    reading = [client, server]
    try:
        while reading:
            for sock in select.select(reading, [], [])[0]:
                chunk = sock.recv(BUFFER)
                if chunk:
                    peer[sock].sendall(chunk)
                else:
                    reading.remove(sock)
                    with contextlib.suppress(OSError):
                        peer[sock].shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        server.close()
        client.close()


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port)).close()
    except OSError:
        return False
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


def run(pid: int, port: int, socket_path: str, uid: int | None, ready_fd: int) -> None:
    pidfd = os.pidfd_open(pid)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(1024)
    if uid is not None:
        # Nothing of root is needed past this point: the namespace is entered, the socket
        # bound (the gateway, root, connects to it whatever its owner).
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    while not _port_open(port):
        if select.select([pidfd], [], [], POLL_S)[0]:
            return  # the container exited before it listened
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(0)  # the container is gone: so is its relay, with every connection

    threading.Thread(target=watch, daemon=True).start()
    # Threads are kept and reused (starting one per connection cost a fifth of the rate);
    # one more starts whenever none is idle, so a long connection never blocks the next.
    jobs: SimpleQueue[socket.socket] = SimpleQueue()
    idle = [0]
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                idle[0] += 1
            client = jobs.get()
            with lock:
                idle[0] -= 1
            _serve(client, port)

    while True:
        client, _ = listener.accept()
        with lock:
            needed = idle[0] == 0
        if needed:
            threading.Thread(target=worker, daemon=True).start()
        jobs.put(client)


def _setns(fd: int, nstype: int) -> None:
    # os.setns arrived in Python 3.12; libc's is the same call.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def main() -> None:
    # Started ahead of need (a spare, container_pool.py): what to serve arrives on stdin as
    # one line, when a container starts; EOF (the gateway is gone) ends it unused.
    ready_fd = sys.argv[1]
    line = sys.stdin.readline().split()
    if len(line) != 4:
        raise SystemExit(0)
    pid_file, port, socket_path, uid_arg = line
    pid = _wait_pid(Path(pid_file))
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    _setns(fd, CLONE_NEWNET)
    os.close(fd)
    uid = int(uid_arg) if uid_arg != "-" else None
    with contextlib.suppress(ProcessLookupError):
        run(pid, int(port), socket_path, uid, int(ready_fd))


if __name__ == "__main__":
    main()
