"""A minimal HTTP/1.1 exchange for the CLI's fast path (`cumulo invoke`, `cumulo login`).

httpx costs ~150 ms to import and http.client ~40 ms (email, ssl): a plain-HTTP call on
a socket costs neither. HTTPS goes through http.client, imported only then.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


class WireError(Exception):
    """The platform could not be reached or answered something that is not HTTP."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def request(
    method: str, base_url: str, path: str, *, api_key: str, body: bytes = b"", timeout: float = 60
) -> Reply:
    parts = urlsplit(base_url)
    headers = {
        "authorization": f"Bearer {api_key}",
        "content-type": "application/json",
        "content-length": str(len(body)),
        "user-agent": "cumulo-cli",
    }
    target = (parts.path.rstrip("/") or "") + path
    if parts.scheme == "https":
        return _https(
            method, parts.hostname or "", parts.port or 443, target, headers, body, timeout
        )
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"{method} {target} HTTP/1.1\r\nhost: {parts.netloc}\r\nconnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(head.encode("latin-1") + body)
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
    except TimeoutError:
        raise WireError(f"{base_url} did not answer in time") from None
    except OSError as exc:
        raise WireError(f"cannot reach {base_url}: {exc.strerror or exc}") from None
    return _parse(b"".join(chunks), base_url)


def _parse(raw: bytes, base_url: str) -> Reply:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise WireError(f"{base_url} did not answer HTTP") from None
    if not sep:
        raise WireError(f"{base_url} closed the connection mid-answer")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        try:
            rest = _dechunk(rest)
        except ValueError:
            raise WireError(f"{base_url} sent a malformed chunked body") from None
    return Reply(status, headers, rest)


def _dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return bytes(out)
        size = int(data[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def _https(
    method: str,
    host: str,
    port: int,
    target: str,
    headers: dict[str, str],
    body: bytes,
    timeout: float,
) -> Reply:
    import http.client

    conn = http.client.HTTPSConnection(host, port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    except TimeoutError:
        raise WireError(f"https://{host}:{port} did not answer in time") from None
    except OSError as exc:
        raise WireError(f"cannot reach https://{host}:{port}: {exc}") from None
    finally:
        conn.close()
