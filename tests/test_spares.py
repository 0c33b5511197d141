"""Spare zygotes (runtime/spares.py): pre-started sandboxed interpreters that a full cold
start adopts. Spares need bubblewrap and a root gateway; elsewhere these tests skip."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

import orjson
import pytest

from cumulo import fds
from cumulo.client import Client
from cumulo.runtime import sandbox
from cumulo.runtime import spares as spares_module
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spares import Spare
from tests.conftest import FUNCTIONS, RunningPlatform, wait_until

KIT = FUNCTIONS / "kit.py"
EVIL = FUNCTIONS / "malicious"

pytestmark = pytest.mark.skipif(
    not (sandbox.status(RuntimeSettings()).sandboxed and os.geteuid() == 0),
    reason="spare zygotes need bubblewrap and a root gateway",
)


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0


def descendants(root: int) -> set[int]:
    """Every live process below `root` (by parent links, host pids)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parents[int(entry)] = _parent(int(entry))
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [part.decode() for part in fh.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError):
        return []


def uid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def spares(running: RunningPlatform) -> set[int]:
    """Host pids of the spare interpreters waiting for a function (not their bubblewrap
    launchers, nor adopted spares: those dropped root for their function's uid)."""
    found = set()
    for pid in descendants(running.proc.pid):
        argv = cmdline(pid)
        if "--spare" in argv and argv[0] == sys.executable and uid_of(pid) == 0:
            found.add(pid)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # Gone between the open and the read: the pid's /proc entry was being torn down.
        return False


def zygote_of(client: Client, name: str) -> dict[str, object]:
    (zygote,) = [z for z in client.workers(name) if z["pid"]]
    return zygote


def test_a_full_cold_start_adopts_a_prestarted_spare_and_a_new_one_replaces_it(
    fresh_platform: Callable[..., RunningPlatform], unique_name: str
) -> None:
    running = fresh_platform()
    client = running.client()
    wait_until(lambda: len(spares(running)) == 1, 20, "a spare zygote")
    (spare,) = spares(running)
    deployed_at = time.time()
    client.deploy(KIT, name=unique_name, handler="kit.echo")
    assert client.invoke(unique_name, {"x": 1}) == {"x": 1}
    zygote = zygote_of(client, unique_name)
    # The zygote is the spare's interpreter, started before the function existed.
    assert zygote["pid"] == spare
    prestarted = zygote["prestarted_at"]
    assert isinstance(prestarted, float)
    assert prestarted < deployed_at
    wait_until(
        lambda: len(spares(running)) == 1 and spare not in spares(running), 20, "a new spare"
    )
    # More workers fork from the adopted spare as from any zygote.
    for i in range(3):
        assert client.invoke(unique_name, {"i": i}) == {"i": i}


def test_errors_in_an_adopted_spare_show_paths_relative_to_the_code(
    fresh_platform: Callable[..., RunningPlatform], unique_name: str
) -> None:
    running = fresh_platform()
    client = running.client()
    wait_until(lambda: len(spares(running)) == 1, 20, "a spare zygote")
    client.deploy(KIT, name=unique_name, handler="kit.boom")
    with running.http() as http:
        response = http.post(f"/fn/default/{unique_name}", json={"why": "bad input"})
    assert response.status_code == 500
    assert zygote_of(client, unique_name)["prestarted_at"] is not None
    tb = response.json()["error"]["traceback"]
    assert 'File "kit.py", line 25, in boom' in tb, tb
    assert 'raise ValueError(f"boom:' in tb
    assert str(running.data_dir) not in tb
    assert "/proc/" not in tb


def test_an_adopted_spare_keeps_the_sandbox(
    fresh_platform: Callable[..., RunningPlatform], unique_name: str
) -> None:
    running = fresh_platform()
    client = running.client()
    snoop, writer, calls = (f"{unique_name}-{kind}" for kind in ("snoop", "writer", "calls"))
    client.deploy(EVIL / "data_dir.py", name=snoop, handler="data_dir.handler")
    client.deploy(KIT, name=f"{unique_name}-other", handler="kit.echo")
    client.deploy(EVIL / "write_outside_tmp.py", name=writer, handler="write_outside_tmp.handler")
    client.deploy(EVIL / "syscalls.py", name=calls, handler="syscalls.handler")
    other_code = next(path for path in (running.data_dir / "code").glob("*/kit.py"))

    wait_until(lambda: len(spares(running)) == 1, 20, "a spare zygote")
    found = client.invoke(snoop, {"data_dir": str(running.data_dir), "other_code": str(other_code)})
    assert zygote_of(client, snoop)["prestarted_at"] is not None
    for what in ("listing", "credentials.json", "cumulo.db", "keyhash.secret", "code_listing"):
        assert found[what]["ok"] is False, (what, found[what])
    assert found["other_code"]["ok"] is False
    assert found["own_code"]["ok"] is True
    assert "cmo_" not in orjson.dumps(found).decode()

    wait_until(lambda: len(spares(running)) == 1, 20, "a second spare")
    name = f"cumulo-pwned-{uuid.uuid4().hex}"
    marker = Path("/tmp") / f"cumulo-host-marker-{uuid.uuid4().hex}"
    marker.write_text("host")
    try:
        found = client.invoke(writer, {"name": name, "data_dir": str(running.data_dir)})
    finally:
        marker.unlink()
    assert zygote_of(client, writer)["prestarted_at"] is not None
    assert found["tmp"] == "private"
    assert marker.name not in found["tmp_listing"]
    assert not (Path("/tmp") / name).exists()
    for path, outcome in found["outside"].items():
        assert outcome in ("OSError", "PermissionError", "FileNotFoundError"), (path, outcome)
        assert not Path(path).exists(), path

    wait_until(lambda: len(spares(running)) == 1, 20, "a third spare")
    found = client.invoke(calls, {})
    zygote = zygote_of(client, calls)
    assert zygote["prestarted_at"] is not None
    for call, error in found["errors"].items():
        assert error in ("Operation not permitted", "Function not implemented"), (call, error)
    assert found["no_new_privs"] == "1"
    assert found["seccomp"] == "2"
    assert found["uid"] >= sandbox.UID_BASE or found["uid"] == sandbox.NOBODY
    # The worker's own view agrees with the host's; no capability survived the drop.
    worker = zygote["workers"]
    assert isinstance(worker, list)
    assert worker
    with open(f"/proc/{worker[0]['pid']}/status") as fh:
        status = dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)
    assert int(status["Uid"].split()[0]) == found["uid"]
    assert int(status["CapEff"].strip(), 16) == 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_spares_die_with_the_gateway(
    fresh_platform: Callable[..., RunningPlatform], unique_name: str, how: signal.Signals
) -> None:
    running = fresh_platform()
    client = running.client()
    client.deploy(KIT, name=unique_name, handler="kit.echo")
    wait_until(lambda: len(spares(running)) == 1, 20, "a spare zygote")
    client.invoke(unique_name, {})
    wait_until(lambda: len(spares(running)) == 1, 20, "the replacement spare")
    # Spares, their bubblewrap launchers, the adopted spare and its worker.
    pids = descendants(running.proc.pid)
    assert len(pids) >= 4
    running.proc.send_signal(how)
    running.proc.wait(20)
    wait_until(lambda: not any(alive(p) for p in pids), 5, "every spare and zygote to exit")


def test_regression_a_spare_still_starting_is_adopted_only_once_ready() -> None:
    # A cold start took the replacement spare while its launcher had not yet written itself
    # into its own control group; the adoption moved the group's (no) processes and removed
    # it, then the launcher failed ("cgroup.procs: Directory nonexistent", exit 2) and the
    # healthy function answered 502 zygote_died. Adoption now waits for the spare's word.
    async def main(sleeper: subprocess.Popen[bytes]) -> None:
        loop = asyncio.get_running_loop()
        outcomes = []
        for says in (b"spare", b"", None):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            spare = Spare(fds.Child(sleeper), ours, cast(fds.Output, None), 0.0)
            try:
                if says == b"spare":
                    loop.call_later(0.05, theirs.send, orjson.dumps({"op": "spare"}))
                elif says == b"":
                    loop.call_later(0.05, theirs.close)  # died while starting
                outcomes.append((await spares_module.until_ready(spare, 0.5), spare.ready))
            finally:
                ours.close()
                theirs.close()
        assert outcomes == [(True, True), (False, False), (False, False)]

    with subprocess.Popen(["sleep", "30"]) as sleeper:
        try:
            asyncio.run(main(sleeper))
        finally:
            sleeper.kill()
