"""The gateway's own stdout/stderr never reach a function (finding 2 of issue 15).

A function's fds 1 and 2 are pipes the gateway reads into `cumulo logs`; the gateway's log
(RunningPlatform.log_path, its redirected stdout) is out of reach, and holds no live
credential: the first start's admin key is printed only to a terminal.
"""

from __future__ import annotations

import itertools
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumulo.client import Client
from cumulo.fds import MAX_LINE, TRUNCATED
from cumulo.runtime import sandbox
from cumulo.runtime.settings import RuntimeSettings
from tests.conftest import (
    CUMULO,
    FUNCTIONS,
    RunningPlatform,
    free_port,
    wait_until,
)
from tests.security.conftest import platform_as

HOSTILE = FUNCTIONS / "hostile"
STATUS = sandbox.status(RuntimeSettings())
_ns = itertools.count(1)


@pytest.fixture(scope="module", params=["root", "nonroot"])
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPlatform]:
    """The corpus runs against a root gateway and an unprivileged one."""
    with platform_as(request.param, tmp_path_factory.mktemp("gwlog")) as platform:
        yield platform


def _tenant(running: RunningPlatform) -> Client:
    return running.client(f"log-{next(_ns)}")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _cli_logs(running: RunningPlatform, client: Client, name: str) -> str:
    result = running.cli("logs", name, "--namespace", client.namespace)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_function_cannot_read_truncate_or_forge_the_gateway_log(
    running: RunningPlatform,
) -> None:
    client = _tenant(running)
    client.deploy(HOSTILE / "fds_log_forge.py", name="forger", handler="fds_log_forge.handler")
    before = running.log_path.read_bytes()
    report = client.invoke("forger", {})
    for fd in ("1", "2"):
        entry = report[fd]
        # A pipe of the function's own, not the gateway's log file.
        assert entry["target"].startswith("pipe:["), entry
        assert str(running.log_path) not in entry["target"]
        assert "truncated" not in entry, entry
        assert "truncated_fd" not in entry, entry
        assert running.api_key not in entry.get("read", "")
    time.sleep(0.5)  # anything it managed to write would have landed by now
    after = running.log_path.read_bytes()
    # Unchanged by the attack: the gateway may only have added lines of its own.
    assert after.startswith(before)
    assert b"FORGED" not in after
    assert running.api_key.encode() not in after
    if any(report[fd].get("forged") for fd in ("1", "2")):
        # Re-opened (a gateway of the function's own uid): its own pipe, its own log.
        wait_until(lambda: "FORGED" in _cli_logs(running, client, "forger"), 10, "its lines")
    else:
        # The pipes belong to the gateway's uid: not even re-opened.
        assert all("open" in report[fd] for fd in ("1", "2")), report


def test_print_and_raw_writes_to_fd_1_and_2_show_up_in_cumulo_logs(
    running: RunningPlatform,
) -> None:
    client = _tenant(running)
    client.deploy(HOSTILE / "fds_log_forge.py", name="talker", handler="fds_log_forge.talk")
    tag = uuid.uuid4().hex[:8]
    assert client.invoke("talker", {"tag": tag}) == {"ok": True}
    wanted = [f"print-{tag}", f"fd1-{tag}", f"fd2-{tag}"]
    wait_until(
        lambda: all(w in _cli_logs(running, client, "talker") for w in wanted),
        10,
        "print() and os.write output in cumulo logs",
    )
    records = {r["message"]: r for r in client.logs("talker")}
    # print() belongs to its invocation; a raw write to fd 1/2 to the version only.
    assert records[f"print-{tag}"]["invocation_id"]
    assert not records[f"fd1-{tag}"]["invocation_id"]
    assert records[f"fd1-{tag}"]["level"] == "stdout"
    assert records[f"fd2-{tag}"]["level"] == "stderr"
    assert tag.encode() not in running.log_path.read_bytes()


def test_100_mb_without_a_newline_is_cut_marked_and_does_not_grow_the_gateway(
    running: RunningPlatform,
) -> None:
    client = _tenant(running)
    client.deploy(
        HOSTILE / "fds_log_forge.py", name="flooder", handler="fds_log_forge.talk", timeout_s=60
    )
    tag = uuid.uuid4().hex[:8]
    client.invoke("flooder", {"tag": "warm"})
    baseline = _rss(running.proc.pid)
    assert client.invoke("flooder", {"tag": tag, "long": 100}) == {"ok": True}
    wait_until(
        lambda: f"after-long-{tag}" in _cli_logs(running, client, "flooder"),
        60,
        "the line after the 100 MB one",
    )
    messages = [r["message"] for r in client.logs("flooder", limit=1000)]
    cut = [m for m in messages if m.endswith(TRUNCATED)]
    assert len(cut) == 1, [c[:50] for c in cut]
    assert cut[0] == "x" * MAX_LINE + TRUNCATED
    grown = _rss(running.proc.pid) - baseline
    assert grown < 64 * 1024 * 1024, f"the gateway grew by {grown // 2**20} MB"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
@pytest.mark.skipif(
    STATUS.drop_uid and not STATUS.sandboxed,
    reason="a root gateway runs process functions only inside bubblewrap",
)
def test_a_process_functions_stdout_and_stderr_go_to_its_logs(running: RunningPlatform) -> None:
    client = _tenant(running)
    client.deploy(HOSTILE / "fds_proc", name="proc")
    tag = uuid.uuid4().hex[:8]
    with running.http() as http:
        response = http.get(f"/fn/{client.namespace}/proc/", params={"tag": tag})
    assert response.status_code == 200, response.text
    fds = response.json()["fds"]
    assert fds["0"] == "/dev/null"
    assert fds["1"].startswith("pipe:[")
    assert fds["2"].startswith("pipe:[")
    # Nothing but its own: no file of the platform's, no path but /dev/null.
    paths = {fd: t for fd, t in fds.items() if t.startswith("/") and t != "/dev/null"}
    assert paths == {}, fds
    wanted = [f"proc-stdout-{tag}", f"proc-stderr-{tag}"]
    wait_until(
        lambda: all(w in _cli_logs(running, client, "proc") for w in wanted),
        10,
        "the process function's output in cumulo logs",
    )
    assert tag.encode() not in running.log_path.read_bytes()


def _read_until(fd: int, pattern: bytes, seconds: float) -> bytes:
    out = b""
    deadline = time.monotonic() + seconds
    while pattern not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the other side closed (EIO)
                break
            if not chunk:
                break
            out += chunk
    return out


def test_the_admin_key_is_printed_only_when_stdout_is_a_terminal(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [CUMULO, "up", "--port", str(free_port()), "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        start_new_session=True,
    )
    os.close(slave)
    try:
        out = _read_until(master, b"dashboard:", 60).decode(errors="replace")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.close(master)
    key = re.search(r"admin API key \(shown once\): (cmo_\S+)", out)
    assert key is not None, out
    assert key.group(1) in (data_dir / "credentials.json").read_text()
