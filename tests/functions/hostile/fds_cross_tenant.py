"""Tenant A's attack on tenant B's worker: every fd it has (but its own channel to the
gateway) gets an invocation frame for B's worker, and is read for B's frames."""

import contextlib
import errno
import gc
import os
import socket
import stat
import struct

import msgpack


def _frame(message):
    body = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _fds(pid):
    try:
        return [int(n) for n in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return []


def handler(event, ctx):
    own = {s.fileno() for s in gc.get_objects() if isinstance(s, socket.socket)}
    inv = _frame({"t": "inv", "id": "stolen-1", "ev": {"from": "tenant-a"}, "deadline": 0})
    report = {"tried": [], "sent": 0, "read": 0, "read_sample": "", "opened": []}
    for fd in _fds("self"):
        if fd in own or fd < 0:
            continue
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        kind = "socket" if stat.S_ISSOCK(mode) else "fifo" if stat.S_ISFIFO(mode) else "other"
        report["tried"].append([fd, kind, os.readlink(f"/proc/self/fd/{fd}")])
        if kind == "socket":
            sock = socket.socket(fileno=os.dup(fd))
            try:
                with contextlib.suppress(OSError):
                    report["sent"] += sock.send(inv, socket.MSG_DONTWAIT) > 0
                try:
                    data = sock.recv(65536, socket.MSG_DONTWAIT)
                    report["read"] += len(data)
                    report["read_sample"] += data[:200].hex()
                except OSError:
                    pass
            finally:
                sock.close()
        elif fd > 2:
            with contextlib.suppress(OSError):  # an O_PATH fd takes neither
                os.set_blocking(fd, False)
                report["read"] += len(os.read(fd, 65536))
    # Other pids' fds: through /proc (a socket cannot be opened so; anything else might).
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for fd in _fds(pid):
            try:
                got = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.ENXIO, errno.EPERM, errno.ENOENT):
                    report["opened"].append([pid, fd, exc.errno])
                continue
            report["opened"].append([pid, fd, os.readlink(f"/proc/self/fd/{got}")])
            os.close(got)
    return report


def victim(event, ctx):
    """Tenant B: counts the invocations that reached it, and keeps a secret in state."""
    ctx.state.put("secret", "tenant-b-secret")
    return {"runs": ctx.state.incr("runs"), "event": event}
