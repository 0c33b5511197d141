"""The limits attacks against an unprivileged gateway: no control groups there, so the
rlimit fallback of docs/sandbox.md ("Control groups", Fallback) is what must hold. (The
spin-after-return attack runs on both paths in test_limits.py.)

Attack functions: tests/functions/hostile/limits_*.py (the same as test_limits.py's).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tests.conftest import RunningPlatform, wait_until
from tests.security.conftest import PlatformFactory, nonroot_ids
from tests.security.test_limits import HOSTILE, KIT


def platform_uid() -> int:
    return nonroot_ids()[0] if os.geteuid() == 0 else os.getuid()


def processes_of(uid: int) -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue  # gone meanwhile
        for line in text.splitlines():
            if line.startswith("Uid:"):
                count += int(line.split()[1]) == uid
                break
    return count


def test_fork_bomb_on_an_unprivileged_gateway_dies_with_the_request(
    nonroot_platform: PlatformFactory,
) -> None:
    running = nonroot_platform("--idle-timeout", "1")
    client = running.client()
    client.deploy(HOSTILE / "limits_fork_bomb.py", name="bomb", handler="limits_fork_bomb.bomb")
    client.deploy(KIT, name="healthy", handler="kit.echo")
    assert client.invoke("healthy", {"ok": 0}) == {"ok": 0}
    uid = platform_uid()
    before = processes_of(uid)
    outcome: list[int] = []
    peak = [before]

    def attack() -> None:
        with running.http() as http:
            outcome.append(http.post("/fn/default/bomb", json={}, timeout=60).status_code)

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        peak[0] = max(peak[0], processes_of(uid))
        time.sleep(0.05)
    thread.join(5)
    assert outcome in ([504], [502])
    assert peak[0] > before + 50, f"the bomb never forked (peak {peak[0]}, before {before})"
    # The bomb's zygote stays (and its sandbox); its processes do not.
    wait_until(lambda: processes_of(uid) <= before + 4, 30, "the bomb's processes to be gone")
    assert client.invoke("healthy", {"ok": 1}) == {"ok": 1}


def test_tmpfs_on_an_unprivileged_gateway_is_bounded_by_its_size(
    nonroot_platform: PlatformFactory,
) -> None:
    running: RunningPlatform = nonroot_platform()
    client = running.client()
    client.deploy(HOSTILE / "limits_tmpfs.py", name="fill", handler="limits_tmpfs.tmpfs")
    written = client.invoke("fill", {})
    # Without a group the pages are not charged to the function, but /tmp and /dev/shm are
    # each half its memory (64 MB): 1 GB asked, at most 64 MB written.
    assert 16 <= written["tmp_mb"] + written["shm_mb"] <= 64, written
