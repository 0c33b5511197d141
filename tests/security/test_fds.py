"""File descriptors: what a function finds in /proc/self/fd, and that another tenant's
worker socket is never among them (finding 1 of issue 15).

The design gives a worker exactly (docs/sandbox.md, "File descriptors and output"):

- fd 0: /dev/null
- fds 1 and 2: two pipes, the read ends of which the gateway holds (the zygote's output,
  into the function's logs)
- its own socket to the gateway (one `socket:[…]`)
- without bubblewrap, as root: `O_PATH` descriptors to the directories the dropped uid
  cannot otherwise reach (the interpreter's under /root, the code dir): directories, never
  a file, socket or pipe

and nothing else. Other pids' fd tables are not readable (another uid, or a non-dumpable
process of our own uid); where one is (an unprivileged gateway's zygote, same uid), it
holds only that sandbox's own descriptors.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cumulo.client import Client
from cumulo.runtime import sandbox
from cumulo.runtime.settings import RuntimeSettings
from tests.conftest import FUNCTIONS, RunningPlatform, wait_until
from tests.security.conftest import platform_as

HOSTILE = FUNCTIONS / "hostile"
STATUS = sandbox.status(RuntimeSettings())
_ns = itertools.count(1)


@pytest.fixture(scope="module", params=["root", "nonroot"])
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPlatform]:
    """The corpus runs against a root gateway and an unprivileged one."""
    with platform_as(
        request.param, tmp_path_factory.mktemp("fds"), "--idle-timeout", "1"
    ) as platform:
        yield platform


def _tenant(running: RunningPlatform, label: str) -> Client:
    return running.client(f"{label}-{next(_ns)}")


def _kind(target: str) -> str:
    if target == "/dev/null":
        return "null"
    match = re.fullmatch(r"(socket|pipe|anon_inode):\[?(.*?)\]?", target)
    return match.group(1) if match else "path"


def check_listing(report: dict[str, object]) -> None:
    """Exactly what the module docstring says a worker gets."""
    listing = report["self"]
    assert isinstance(listing, dict), listing
    own = report["own_sockets"]
    assert isinstance(own, list), own
    assert len(own) == 1, own
    assert listing.pop("0") == "/dev/null", listing
    out, err = listing.pop("1"), listing.pop("2")
    assert _kind(out) == "pipe", out
    assert _kind(err) == "pipe", err
    assert out != err
    assert _kind(listing.pop(str(own[0]))) == "socket"
    # Only the O_PATH directories of a sandbox-less root gateway may remain.
    for fd, target in listing.items():
        assert not STATUS.sandboxed, f"fd {fd} -> {target}: not in the allow-list"
        assert _kind(target) == "path", f"fd {fd} -> {target}"
        assert Path(target).is_dir(), f"fd {fd} -> {target}"
    others = report["others"]
    assert isinstance(others, dict)
    for pid, table in others.items():
        if isinstance(table, str):
            continue  # not readable
        for fd, target in table.items():
            # Never a file of the platform's (its log, the database), never a socket
            # beyond one sandboxed process's own.
            assert _kind(target) != "path" or Path(target).is_dir(), (pid, fd, target)
        sockets = [t for t in table.values() if _kind(t) == "socket"]
        assert len(sockets) <= 2, (pid, table)


def test_a_function_listing_its_fds_finds_only_what_the_design_gives_it(
    running: RunningPlatform,
) -> None:
    client = _tenant(running, "lister")
    client.deploy(HOSTILE / "fds_list.py", name="lister", handler="fds_list.handler")
    check_listing(client.invoke("lister", {}))
    # A second worker of the same zygote (concurrent invocations) gets the same set, and
    # none of its sibling's sockets.
    client.deploy(
        HOSTILE / "fds_list.py", name="lister2", handler="fds_list.handler", max_instances=2
    )
    for _ in range(2):
        check_listing(client.invoke("lister2", {}))


def test_a_spare_adopted_after_other_tenants_warmed_up_inherits_none_of_their_fds(
    running: RunningPlatform,
) -> None:
    # Warm a few workers of other tenants first, then start (through a spare, when the
    # platform has them: the default memory size) a new function that lists its fds.
    for i in range(3):
        other = _tenant(running, f"warm{i}")
        other.deploy(FUNCTIONS / "kit.py", name="echo", handler="kit.echo")
        assert other.invoke("echo", {"i": i}) == {"i": i}
    client = _tenant(running, "late")
    client.deploy(HOSTILE / "fds_list.py", name="late", handler="fds_list.handler")
    check_listing(client.invoke("late", {}))


def test_tenant_a_can_neither_send_tenant_b_a_frame_nor_read_hers(
    running: RunningPlatform,
) -> None:
    victim = _tenant(running, "b")
    victim.deploy(HOSTILE / "fds_cross_tenant.py", name="victim", handler="fds_cross_tenant.victim")
    assert victim.invoke("victim", {})["runs"] == 1  # B's worker is warm, its socket held
    attacker = _tenant(running, "a")
    # Deployed after B's worker is warm; its own memory size so that it is a new zygote
    # started now (not a spare started earlier).
    for memory in (256, 320):
        name = f"attacker{memory}"
        attacker.deploy(
            HOSTILE / "fds_cross_tenant.py",
            name=name,
            handler="fds_cross_tenant.handler",
            memory_mb=memory,
        )
        report = attacker.invoke(name, {})
        sockets = [t for t in report["tried"] if t[1] == "socket"]
        assert sockets == [], report
        assert report["sent"] == 0, report
        assert report["read"] == 0, report
        assert report["opened"] == [] or all(
            isinstance(o[2], str) and not o[2].startswith("socket") for o in report["opened"]
        ), report
    # Had a frame reached B's worker, her code would have run and counted it.
    assert victim.invoke("victim", {})["runs"] == 2
    assert victim.invocations("victim")


def test_a_reaped_worker_dies_with_its_socket(running: RunningPlatform) -> None:
    """No copy of a worker's socket outlives the gateway's: scaled down after its idle
    window, the worker sees its socket close and exits, although another tenant's zygote
    was started while it was warm (the old leak's carrier)."""
    client = _tenant(running, "reap")
    client.deploy(FUNCTIONS / "kit.py", name="sleepy", handler="kit.sleepy")
    other = _tenant(running, "reap-other")
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(client.invoke, "sleepy", {"s": 4})
        wait_until(
            lambda: any(z["workers"] for z in client.workers("sleepy")), 10, "sleepy's worker"
        )
        # The worker's host pid (the function itself would report its sandbox pid).
        hosts = [w["pid"] for z in client.workers("sleepy") for w in z["workers"]]
        other.deploy(FUNCTIONS / "kit.py", name="echo", handler="kit.echo", memory_mb=320)
        assert other.invoke("echo", {"x": 1}) == {"x": 1}
        assert busy.result(timeout=30)["pid"] > 0
    assert len(hosts) == 1, hosts

    def gone() -> bool:
        return not Path(f"/proc/{hosts[0]}").exists()

    wait_until(gone, 20, "the idle worker to exit once the gateway closed its socket")


# ---------------------------------------------------------------- the pieces, directly
def _listed_fds(output: bytes) -> set[int]:
    return {int(n) for n in output.decode().split()}


def test_spawn_passes_only_the_allow_list_even_from_uvloop() -> None:
    """uvloop's own spawn passes on every inheritable fd; fds.spawn passes 0-2 and `keep`."""
    import os

    import uvloop

    from cumulo import fds

    leaked_r, leaked_w = os.pipe()
    kept_r, kept_w = os.pipe()
    os.set_inheritable(leaked_r, True)  # as an SCM_RIGHTS fd used to arrive
    out_r, out_w = os.pipe()
    script = "import os; print(' '.join(sorted(os.listdir('/proc/self/fd'))))"

    async def main() -> tuple[int, bytes]:
        child = fds.spawn(
            [sys.executable, "-c", script],
            keep=[kept_r],
            env={"PATH": os.environ["PATH"]},
            cwd="/",
            stdout=out_w,
        )
        os.close(out_w)
        code = await child.wait()
        return code, os.read(out_r, 4096)

    try:
        code, output = uvloop.run(main())
    finally:
        for fd in (leaked_r, leaked_w, kept_r, kept_w, out_r):
            os.close(fd)
    assert code == 0
    listed = _listed_fds(output)
    assert leaked_r not in listed
    assert kept_r in listed
    # 0-2, the kept pipe, and the listing's own directory fd.
    assert len(listed) == 5, listed


def test_keep_only_closes_what_a_careless_spawner_passed_on() -> None:
    import os
    import subprocess

    leaked_r, leaked_w = os.pipe()
    os.set_inheritable(leaked_r, True)
    os.set_inheritable(leaked_w, True)
    script = (
        "import os, sys; from cumulo import fds; fds.keep_only([int(sys.argv[1])]);"
        "print(' '.join(sorted(os.listdir('/proc/self/fd'))))"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, str(leaked_w)],
            close_fds=False,  # the careless spawner: everything inheritable goes along
            capture_output=True,
            check=True,
            timeout=60,
        )
    finally:
        os.close(leaked_r)
        os.close(leaked_w)
    listed = _listed_fds(result.stdout)
    assert leaked_r not in listed
    assert leaked_w in listed
    assert len(listed) == 5, listed


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"a\nb\n"], ["a", "b"]),
        ([b"ab", b"c\nd"], ["abc", "d"]),  # the last line, without a newline, at EOF
        ([b"x" * 10, b"y" * 10, b"\nz\n"], ["x" * 8 + "…", "z"]),
        ([b"x" * 8 + b"\n"], ["x" * 8]),  # exactly the cap: whole, unmarked
        ([b"\r\n"], [""]),
    ],
)
def test_output_lines_are_bounded_and_marked(chunks: list[bytes], lines: list[str]) -> None:
    import asyncio
    import os

    from cumulo import fds

    got: list[tuple[str, str]] = []

    async def main() -> None:
        r, w = os.pipe()
        pipe = fds.OutputPipe(r, "stdout", lambda stream, line: got.append((stream, line)))
        pipe.max_line = 8
        pipe.marker = "…"
        pipe.start()
        for chunk in chunks:
            os.write(w, chunk)
            await asyncio.sleep(0.01)
        os.close(w)
        for _ in range(100):
            if pipe.fd < 0:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert got == [("stdout", line) for line in lines]
