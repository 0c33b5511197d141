"""A 1 GB response: honestly returned, or written as one raw frame around the worker's check."""

import os
import socket
import stat
import struct

import cumulo


def as_json(event, ctx):
    """1 GB of JSON: within the default 256 MB the worker cannot even build it."""
    return "x" * (1024**3)


def honest(event, ctx):
    """1 GB of bytes, with the memory to hold them: the worker's own size check answers."""
    return cumulo.Response(bytes(1024**3))


def _worker_socket() -> socket.socket:
    for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                sock = socket.socket(fileno=os.dup(fd))
                if sock.family == socket.AF_UNIX:
                    return sock
                sock.close()
        except OSError:
            continue
    raise RuntimeError("no socket")


def raw(event, ctx):
    sock = _worker_socket()
    size = 1024**3
    sock.sendall(struct.pack(">I", size))
    chunk = b"\x00" * (1024 * 1024)
    for _ in range(size // len(chunk)):
        sock.sendall(chunk)
    return "sent"
