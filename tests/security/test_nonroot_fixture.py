"""The non-root path of the hostile corpus: the fixture really runs the platform unprivileged."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import FUNCTIONS
from tests.security.conftest import NONROOT_USER, PlatformFactory, nonroot_ids


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


def test_nonroot_platform_runs_unprivileged_and_serves(nonroot_platform: PlatformFactory) -> None:
    running = nonroot_platform()
    expected = nonroot_ids()[0] if os.geteuid() == 0 else os.geteuid()
    assert set(_uids(running.proc.pid)) == {expected}, f"gateway is not {NONROOT_USER}"
    assert running.data_dir.stat().st_uid == expected
    client = running.client()
    client.deploy(FUNCTIONS / "kit.py", name="echo", handler="kit.echo")
    assert client.invoke("echo", {"x": 1}) == {"x": 1}
