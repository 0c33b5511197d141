"""Attacks on the HTTP edge: oversized heads, slow heads, connection floods (issue 15, 5).

Every attack runs against a real `cumulo up` on loopback, bounded in bytes, connections and
time. A flood comes from 127.0.0.1 (or several 127.0.0.x addresses) and the healthy client
from another loopback address, which Linux routes to the same listener.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import RunningPlatform, start_platform, wait_until

MB = 1024 * 1024
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    """Default size limits, a short header timeout so slow heads are quick to show."""
    running = start_platform(tmp_path_factory.mktemp("edge"), "--header-timeout", "2")
    yield running
    running.stop()


@pytest.fixture(scope="module", autouse=True)
def _enough_fds() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))


def rss_mb(running: RunningPlatform) -> float:
    for line in Path(f"/proc/{running.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def host_port(running: RunningPlatform) -> tuple[str, int]:
    url = httpx.URL(running.url)
    return str(url.host), int(url.port or 80)


def connect(
    running: RunningPlatform, source: str = "127.0.0.1", timeout: float = 10
) -> socket.socket:
    return socket.create_connection(host_port(running), timeout, source_address=(source, 0))


def send_all_then_read(sock: socket.socket | ssl.SSLSocket, data: bytes) -> bytes:
    """Send `data` in 64 KiB pieces until done or the server cuts us off; then read the
    answer until EOF (a server that closes with our bytes unread resets the connection,
    which is fine: what it wrote first is still read)."""
    with contextlib.suppress(OSError):
        for i in range(0, len(data), 64 * 1024):
            sock.sendall(data[i : i + 64 * 1024])
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            answer += chunk
    sock.close()
    return answer


def assert_431(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"connection: close" in head.lower()
    assert orjson.loads(body)["error"]["code"] == "headers_too_large"


def test_sixteen_megabyte_header_gets_431_and_no_memory(edge: RunningPlatform) -> None:
    assert_431(send_all_then_read(connect(edge), HEAD + b"X-Big: " + b"a" * MB + b"\r\n\r\n"))
    before = rss_mb(edge)
    answer = send_all_then_read(connect(edge), HEAD + b"X-Big: " + b"a" * (16 * MB) + b"\r\n\r\n")
    assert_431(answer)
    assert rss_mb(edge) - before < 4, "the gateway buffered the oversized header"
    assert httpx.get(f"{edge.url}/healthz").status_code == 200


def test_hundred_thousand_headers_get_431(edge: RunningPlatform) -> None:
    many = b"".join(b"x%d: y\r\n" % i for i in range(100_000))
    assert_431(send_all_then_read(connect(edge), HEAD + many + b"\r\n"))
    # Under the byte limit but over the count limit (100) is refused as well.
    assert_431(send_all_then_read(connect(edge), HEAD + b"a: b\r\n" * 101 + b"\r\n"))
    # A head just inside both limits is served.
    near = HEAD + b"a: b\r\n" * 90 + b"X-Long: " + b"v" * 60_000 + b"\r\n\r\n"
    assert send_all_then_read(connect(edge), near).startswith(b"HTTP/1.1 200 ")


def test_ten_unterminated_huge_headers_at_once_are_cut_off(edge: RunningPlatform) -> None:
    before = rss_mb(edge)
    answers: list[bytes] = []

    def attack() -> None:
        sock = connect(edge)
        answers.append(send_all_then_read(sock, HEAD + b"X-Big: " + b"a" * (50 * MB)))

    threads = [threading.Thread(target=attack) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "the gateway kept reading a huge header"
    assert len(answers) == 10
    for answer in answers:
        assert_431(answer)
    assert rss_mb(edge) - before < 8, "ten unterminated headers grew the gateway"


def test_slow_loris_head_is_closed_by_the_header_timeout(edge: RunningPlatform) -> None:
    sock = connect(edge)
    sock.settimeout(1.0)
    started = time.monotonic()
    closed_after = None
    request = HEAD + b"X-Slow: " + b"a" * 30
    for i in range(20):  # one byte a second; the platform's timeout is 2 s
        try:
            sock.sendall(request[i : i + 1])
            if sock.recv(1) == b"":
                closed_after = time.monotonic() - started
                break
        except TimeoutError:
            continue
        except OSError:
            closed_after = time.monotonic() - started
            break
    sock.close()
    assert closed_after is not None, "a head sent one byte a second was never cut off"
    assert closed_after < 10


def test_idle_keep_alive_connection_is_closed(edge: RunningPlatform) -> None:
    sock = connect(edge)
    sock.sendall(HEAD + b"\r\n")
    sock.settimeout(10)
    answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    started = time.monotonic()
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass
    sock.close()
    assert time.monotonic() - started < 8, "an idle keep-alive connection stayed open"


def open_flood(
    running: RunningPlatform, sources: list[str], per_source: int
) -> list[socket.socket]:
    """Connections that each send half a request head and then nothing."""
    flood = []
    for source in sources:
        for _ in range(per_source):
            sock = connect(running, source)
            with contextlib.suppress(OSError):
                sock.sendall(b"POST /fn/default/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            flood.append(sock)
    return flood


def refused(flood: list[socket.socket], settle_s: float = 3.0) -> int:
    """How many flood connections the server answered or closed (the rest it holds open)."""
    with selectors.DefaultSelector() as sel:
        for sock in flood:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        seen: set[socket.socket] = set()
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                seen.add(sock)
                sel.unregister(sock)
    for sock in seen:  # what a refused connection read: a 503 in the JSON shape, or nothing
        with contextlib.suppress(OSError):
            data = sock.recv(65536)
            if data:
                assert data.startswith(b"HTTP/1.1 503 "), data[:200]
                assert b'"too_many_connections"' in data
    return len(seen)


def healthy_calls(running: RunningPlatform, source: str, n: int) -> list[int]:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=running.url, transport=transport, timeout=10) as client:
        return [client.get("/healthz").status_code for _ in range(n)]


def close_all(flood: list[socket.socket]) -> None:
    for sock in flood:
        sock.close()


def test_flood_from_one_client_is_capped_while_another_is_served(
    fresh_platform: Callable[..., RunningPlatform],
) -> None:
    running = fresh_platform("--max-connections-per-client", "50", "--header-timeout", "60")
    flood = open_flood(running, ["127.0.0.1"], 2000)
    try:
        assert refused(flood) >= 2000 - 50
        assert healthy_calls(running, "127.0.0.2", 20) == [200] * 20
    finally:
        close_all(flood)
    # Once the flood is gone, its address is served again.
    wait_until(lambda: healthy_calls(running, "127.0.0.1", 1) == [200], 10, "the cap to lift")


def test_flood_over_the_global_cap_is_refused_and_open_clients_stay_served(
    fresh_platform: Callable[..., RunningPlatform],
) -> None:
    running = fresh_platform("--max-connections", "100", "--header-timeout", "60")
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=running.url, transport=transport, timeout=10) as healthy:
        assert healthy.get("/healthz").status_code == 200  # its connection is open before
        flood = open_flood(running, [f"127.0.0.{i}" for i in range(10, 15)], 60)
        try:
            assert refused(flood) >= 300 - 100
            assert [healthy.get("/healthz").status_code for _ in range(20)] == [200] * 20
        finally:
            close_all(flood)
    wait_until(lambda: healthy_calls(running, "127.0.0.3", 1) == [200], 10, "the cap to lift")


def test_oversized_header_over_tls_gets_431(
    fresh_platform: Callable[..., RunningPlatform], tmp_path: Path
) -> None:
    from tests.test_gateway_security import _self_signed

    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    running = fresh_platform("--tls-cert", str(cert), "--tls-key", str(key), verify=context)
    raw = connect(running)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert_431(send_all_then_read(sock, HEAD + b"X-Big: " + b"a" * (4 * MB) + b"\r\n\r\n"))
