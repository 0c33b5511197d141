"""The CLI's fast-path HTTP reader (cumulo.cli.wire): answers it must read, and what it
must refuse with one clear line instead of a traceback."""

from __future__ import annotations

import pytest

from cumulo.cli.wire import WireError, _parse

URL = "http://127.0.0.1:1"


def test_a_chunked_answer_is_joined() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = head + b"4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\n"
    reply = _parse(raw, URL)
    assert (reply.status, reply.body) == (200, b"abcdef")
    assert reply.headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", f"{URL} did not answer HTTP"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n", f"{URL} closed the connection mid-answer"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
            f"{URL} sent a malformed chunked body",
        ),
    ],
)
def test_what_is_not_a_readable_answer_is_one_clear_error(raw: bytes, message: str) -> None:
    with pytest.raises(WireError) as info:
        _parse(raw, URL)
    assert str(info.value) == message
