"""Lists every fd it can see: its own (/proc/self/fd) and every other visible pid's."""

import gc
import os
import socket


def _listing(pid: str) -> dict[str, str] | str:
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError as exc:
        return type(exc).__name__
    targets = {}
    for name in names:
        try:
            targets[name] = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # the listing's own fd, closed again
    return targets


def handler(event, ctx):
    own = [s.fileno() for s in gc.get_objects() if isinstance(s, socket.socket)]
    others = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            others[pid] = _listing(pid)
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "own_sockets": [fd for fd in own if fd >= 0],
        "self": _listing("self"),
        "others": others,
    }
