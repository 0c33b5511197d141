"""Limits hold for a function's whole process tree, not per process, and tenants cannot
choose them past the operator's ceilings (issue 15, finding 4).

Attack functions: tests/functions/hostile/limits_*.py. The process-tree assertions read the
version's control group from the host (cgroups.platform_dirs): this machine and CI have a
writable cgroup v1; where no hierarchy is writable they are skipped (the rlimit fallback,
docs/sandbox.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cumulo.errors import BadRequest
from cumulo.runtime import cgroups
from tests.conftest import FUNCTIONS, RunningPlatform, wait_until

HOSTILE = FUNCTIONS / "hostile"
KIT = FUNCTIONS / "kit.py"
Factory = Callable[..., RunningPlatform]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="control groups need a root gateway")


def version_groups(running: RunningPlatform, controller: str) -> list[Path]:
    """The zygote groups (z*) of `running` in the hierarchy of `controller`."""
    dirs = cgroups.platform_dirs(running.data_dir)
    parent = dirs.get("") or dirs.get(controller)
    if parent is None:
        pytest.skip(f"no {controller} control group here (rlimit fallback)")
    return sorted(p for p in parent.iterdir() if p.is_dir() and p.name.startswith("z"))


def read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def pids_now(running: RunningPlatform) -> int:
    return sum(read_int(g / "pids.current") for g in version_groups(running, "pids"))


@needs_root
def test_fork_bomb_at_the_ceilings_stays_under_pids_max_and_dies_with_the_request(
    fresh_platform: Factory,
) -> None:
    running = fresh_platform("--max-pids", "200", "--idle-timeout", "1")
    client = running.client()
    client.deploy(HOSTILE / "limits_fork_bomb.py", name="bomb", handler="limits_fork_bomb.bomb")
    client.deploy(KIT, name="healthy", handler="kit.echo")
    peak = 0
    outcome: list[int] = []

    def attack() -> None:
        with running.http() as http:
            outcome.append(http.post("/fn/default/bomb", json={}).status_code)

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        peak = max(peak, pids_now(running))
        time.sleep(0.05)
    thread.join(5)
    assert outcome in ([504], [502])  # the timeout, or its tree's memory limit
    assert peak > 50, f"the bomb never forked (peak {peak})"
    assert peak <= 200, f"{peak} processes in the version's tree, pids.max is 200"
    # What stays: bubblewrap, its init and the zygote.
    wait_until(lambda: pids_now(running) <= 3, 30, "the bomb's processes to be gone")
    assert client.invoke("healthy", {"ok": 1}) == {"ok": 1}


@needs_root
def test_fork_and_allocate_in_children_is_bounded_by_the_versions_memory(
    fresh_platform: Factory,
) -> None:
    running = fresh_platform()
    client = running.client()
    client.deploy(HOSTILE / "limits_fork_alloc.py", name="hoard", handler="limits_fork_alloc.hoard")
    client.deploy(KIT, name="healthy", handler="kit.echo")
    with running.http() as http:
        reply = http.post("/fn/default/hoard", json={}, timeout=60)
    # 16 children x 40 MB: each under its own address-space limit, 640 MB in all.
    if reply.status_code == 200:
        body = reply.json()
        assert body["killed"] >= 10, body
        assert body["held_mb"] <= 160, body  # its memory + the zygote and its slack, not 640
    else:
        assert reply.status_code == 502, reply.text
    assert client.invoke("healthy", {"ok": 1}) == {"ok": 1}
    with httpx.Client(base_url=running.url) as http:
        assert http.get("/healthz").status_code == 200


@needs_root
def test_filling_tmp_and_dev_shm_counts_against_the_functions_memory(
    fresh_platform: Factory,
) -> None:
    running = fresh_platform("--idle-timeout", "30", "--zygote-idle-timeout", "60")
    client = running.client()
    client.deploy(HOSTILE / "limits_tmpfs.py", name="fill", handler="limits_tmpfs.tmpfs")
    written = client.invoke("fill", {})
    total = written["tmp_mb"] + written["shm_mb"]
    # Together at most the function's memory (each tmpfs is half of it).
    assert 16 <= total <= 64, written
    (group,) = version_groups(running, "memory")
    usage = read_int(group / "memory.usage_in_bytes") or read_int(group / "memory.current")
    assert usage >= total * 1024 * 1024, f"{usage} bytes charged, {total} MB in tmpfs"


def test_a_thread_spinning_after_return_is_stopped(any_platform: Factory) -> None:
    """On both paths: a root gateway reads the group's CPU, an unprivileged one the
    processes' own (the fallback)."""
    running = any_platform("--idle-timeout", "60", "--zygote-idle-timeout", "60")
    client = running.client()
    client.deploy(HOSTILE / "limits_spin.py", name="spin", handler="limits_spin.spin_after_return")
    assert client.invoke("spin", {}) == {"returned": True}
    (zygote,) = client.workers("spin")
    pid = zygote["workers"][0]["pid"]

    def stopped() -> bool:
        return not any(w["pid"] == pid for z in client.workers("spin") for w in z["workers"])

    wait_until(stopped, 30, "the spinning worker to be stopped")
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    lines = [line["message"] for line in client.logs("spin")]
    assert any("kept using" in m for m in lines), lines
    # It starts again on the next call.
    assert client.invoke("spin", {}) == {"returned": True}


@pytest.mark.parametrize(
    ("flag", "value", "ceiling"),
    [
        ("memory_mb", 65536, "--max-memory-mb"),
        ("max_instances", 101, "--max-instances"),
    ],
)
def test_a_deploy_above_a_ceiling_is_400(
    platform: RunningPlatform, flag: str, value: int, ceiling: str, unique_name: str
) -> None:
    client = platform.client()
    config: dict[str, Any] = {flag: value}
    with pytest.raises(BadRequest, match=ceiling) as caught:
        client.deploy(KIT, name=unique_name, handler="kit.echo", **config)
    assert caught.value.code == "over_ceiling"
    assert "\n" not in str(caught.value)


def test_operator_ceilings_are_enforced_from_the_bundle_too(
    fresh_platform: Factory, tmp_path: Path
) -> None:
    running = fresh_platform(
        "--max-memory-mb", "128", "--max-concurrency", "4", "--max-timeout-s", "10"
    )
    module = tmp_path / "greedy.py"
    module.write_text(
        "import cumulo\n\n@cumulo.function(memory_mb=4096)\ndef greedy(event, ctx):\n    return 1\n"
    )
    client = running.client()
    with pytest.raises(BadRequest, match="memory_mb=4096 is above this platform's ceiling of 128"):
        client.deploy(module)
    with pytest.raises(BadRequest, match="--max-concurrency"):
        client.deploy(KIT, name="wide", handler="kit.echo", memory_mb=128, concurrency=5)
    with pytest.raises(BadRequest, match=r"timeout_s=20 is above .* --max-timeout-s"):
        client.deploy(KIT, name="slow", handler="kit.echo", memory_mb=128, timeout_s=20)
    client.deploy(KIT, name="fits", handler="kit.echo", memory_mb=128, concurrency=4)
    assert client.invoke("fits", {"a": 1}) == {"a": 1}


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


@needs_root
def test_two_platforms_get_disjoint_uid_ranges_and_one_fork_bomb_spares_the_other(
    tmp_path: Path, fresh_platform: Factory
) -> None:
    from tests.conftest import start_platform

    first = fresh_platform("--max-pids", "400")
    (tmp_path / "second").mkdir()
    second = start_platform(tmp_path / "second", "--max-pids", "400")
    try:
        for running in (first, second):
            client = running.client()
            client.deploy(
                HOSTILE / "limits_fork_bomb.py", name="forks", handler="limits_fork_bomb.forks"
            )
            assert client.invoke("forks", {"n": 1}) == {"forked": 1}
        uids = [
            uid_of(w["pid"])
            for running in (first, second)
            for z in running.client().workers("forks")
            for w in z["workers"]
        ]
        assert len(set(uids)) == 2, uids
        assert 0 not in uids, uids
        assert abs(uids[0] - uids[1]) >= 4096, f"uids {uids} come from one range"
        first.client().deploy(
            HOSTILE / "limits_fork_bomb.py", name="bomb", handler="limits_fork_bomb.bomb"
        )
        outcome: list[int] = []

        def attack() -> None:
            with first.http() as http:
                outcome.append(http.post("/fn/default/bomb", json={}).status_code)

        thread = threading.Thread(target=attack, daemon=True)
        thread.start()
        time.sleep(1.5)  # the bomb is at its limit by now
        answers = [second.client().invoke("forks", {"n": 20}) for _ in range(3)]
        thread.join(60)
        assert answers == [{"forked": 20}] * 3
        # Killed at its timeout, or by the memory limit of its tree.
        assert outcome in ([504], [502])
    finally:
        second.stop()


@needs_root
def test_groups_left_by_a_sigkilled_platform_are_removed_at_the_next_start(
    fresh_platform: Factory,
) -> None:
    first = fresh_platform("--idle-timeout", "30", "--zygote-idle-timeout", "60")
    first.client().deploy(KIT, name="echo", handler="kit.echo")
    assert first.client().invoke("echo", {"a": 1}) == {"a": 1}
    old = {g.name for g in version_groups(first, "memory")}
    assert old, "no zygote group"
    first.stop(signal.SIGKILL)
    # Same data dir: the same parent group name.
    second = fresh_platform()
    left = {g.name for g in version_groups(second, "memory")}
    assert not (old & left), f"stale groups {old & left} survived the restart"
    second.stop()
    assert not cgroups.platform_dirs(second.data_dir), "the parent outlived a clean stop"


@needs_root
def test_a_wrapped_command_starts_inside_its_group_and_others_fail_the_membership_check(
    tmp_path: Path,
) -> None:
    groups = cgroups.setup(tmp_path / "data")
    try:
        if groups.backend is None:
            pytest.skip(f"no control groups here: {groups.reason}")
        group = groups.new_group("t", cgroups.Limits(64 * cgroups.MB, 16, 1.0))
        assert group is not None
        result = subprocess.run(
            group.wrap(["cat", "/proc/self/cgroup"]),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        memory_line = next(
            x for x in result.stdout.splitlines() if ":memory:" in x or x[:3] == "0::"
        )
        assert memory_line.endswith(f"/{groups.name}/t1"), result.stdout
        with pytest.raises(OSError, match="not in the function's control group"):
            cgroups.verify_member(group.procs_files, timeout_s=0.1)
        groups.release(group)
        assert group.removed
    finally:
        cgroups.shutdown()
    assert not cgroups.platform_dirs(tmp_path / "data")
