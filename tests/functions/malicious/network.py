"""Open a TCP connection to a listener the test runs on the host's loopback."""

import socket

import cumulo


def _connect(port: int) -> dict:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"exfiltrated")
        return {"connected": True, "error": None}
    except OSError as exc:
        return {"connected": False, "error": f"{type(exc).__name__}: {exc}"}


@cumulo.function(timeout_s=10)
def offline(event: dict, ctx: cumulo.Context) -> dict:
    return _connect(int(event["port"]))


@cumulo.function(timeout_s=10, network=True)
def online(event: dict, ctx: cumulo.Context) -> dict:
    return _connect(int(event["port"]))
