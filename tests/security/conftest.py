"""Platforms for the hostile-tenant corpus: as root and as an unprivileged user.

`nonroot_platform(*extra)` (and `platform_as("nonroot", …)`, for module fixtures that run
the corpus on both paths) starts `cumulo up` as `cumulo-tenant-test`, a system user the
fixture creates when the suite runs as root (as CI does). The interpreter may live under a
directory that user cannot enter (pyenv under the 0700 `/root` here): the platform then runs
in a private mount namespace where a 0755 tmpfs covers that directory and only the paths the
platform needs (the interpreter, the virtualenv, the source tree) are bound back. Nothing on
the host changes; the namespace dies with the platform. Run as a non-root user, the suite's
own user is the unprivileged one and the platform starts as it is.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import cumulo
from tests.conftest import RunningPlatform, start_platform

NONROOT_USER = "cumulo-tenant-test"
PlatformFactory = Callable[..., RunningPlatform]


def nonroot_ids() -> tuple[int, int]:
    """The unprivileged user's (uid, gid), creating the user when running as root."""
    try:
        entry = pwd.getpwnam(NONROOT_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                NONROOT_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(NONROOT_USER)
    return entry.pw_uid, entry.pw_gid


def _enterable(path: Path, uid: int, gid: int) -> bool:
    """Whether `uid` may search the directory `path` by its mode bits (root's view aside)."""
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _blocking_ancestor(path: Path, uid: int, gid: int) -> Path | None:
    """The outermost ancestor of `path` that `uid` cannot enter, if any."""
    for ancestor in reversed(path.resolve().parents):
        if ancestor != Path("/") and not _enterable(ancestor, uid, gid):
            return ancestor
    return None


def needed_paths() -> list[Path]:
    """What a platform reads: the interpreter's prefix, the virtualenv, the source tree."""
    source = Path(cumulo.__file__).resolve().parents[2]  # the checkout (src layout)
    return [Path(p).resolve() for p in {sys.base_prefix, sys.prefix, str(source)}]


def launcher_for(uid: int, gid: int, home: Path, hold: Path) -> list[str]:
    """A command prefix that makes the platform run as `uid` with every needed path
    reachable. It ends with exec, so the platform keeps the launcher's pid."""
    drop = [
        "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "env", f"HOME={home}",
    ]  # fmt: skip
    covers: dict[Path, list[Path]] = {}
    for path in needed_paths():
        blocker = _blocking_ancestor(path, uid, gid)
        if blocker is not None:
            covers.setdefault(blocker, []).append(path)
    if not covers:
        return drop
    hold.mkdir(exist_ok=True)
    lines = ["set -e"]
    for blocker, paths in covers.items():
        for i, path in enumerate(paths):
            held = hold / f"{abs(hash(blocker))}-{i}"
            held.mkdir()
            lines.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(held))}")
        lines.append(f"mount -t tmpfs -o mode=0755 cumulo-cover {shlex.quote(str(blocker))}")
        for i, path in enumerate(paths):
            held = hold / f"{abs(hash(blocker))}-{i}"
            lines.append(f"mkdir -p {shlex.quote(str(path))}")
            lines.append(f"mount --move {shlex.quote(str(held))} {shlex.quote(str(path))}")
    lines.append('exec "$@"')
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", "\n".join(lines), "cumulo-nonroot", *drop,
    ]  # fmt: skip


@contextlib.contextmanager
def nonroot_factory() -> Iterator[PlatformFactory]:
    """Start platforms as an unprivileged user, each with a data dir of its own that does not
    exist yet (a first start); all of them are killed on exit."""
    if os.geteuid() != 0:
        # The suite already runs unprivileged: that is the path under test.
        base = Path(tempfile.mkdtemp(prefix="cumulo-nonroot-"))
        launcher: list[str] = []
    else:
        if shutil.which("setpriv") is None or shutil.which("unshare") is None:
            pytest.skip("setpriv/unshare (util-linux) are needed to start a non-root platform")
        uid, gid = nonroot_ids()
        base = Path(tempfile.mkdtemp(prefix="cumulo-nonroot-", dir="/tmp"))
        base.chmod(0o755)
        os.chown(base, uid, gid)
        launcher = launcher_for(uid, gid, base, base / "hold")
    started: list[RunningPlatform] = []

    def make(*extra: str) -> RunningPlatform:
        tmp = base / f"p{len(started)}"
        tmp.mkdir(mode=0o755)
        if launcher:
            os.chown(tmp, *nonroot_ids())
        running = start_platform(tmp, *extra, launcher=launcher)
        started.append(running)
        return running

    try:
        yield make
    finally:
        for running in started:
            running.stop(signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def nonroot_platform() -> Iterator[PlatformFactory]:
    with nonroot_factory() as make:
        yield make


@contextlib.contextmanager
def platform_as(user: str, tmp: Path, *extra: str) -> Iterator[RunningPlatform]:
    """One platform started as the suite's own user ("root") or an unprivileged one."""
    if user == "nonroot":
        with nonroot_factory() as make:
            yield make(*extra)
        return
    running = start_platform(tmp, *extra)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(params=["root", "nonroot"])
def any_platform(
    request: pytest.FixtureRequest, fresh_platform: PlatformFactory
) -> PlatformFactory:
    """Both paths in turn: the suite's own user (root in CI) and an unprivileged one."""
    if request.param == "root":
        return fresh_platform
    factory: PlatformFactory = request.getfixturevalue("nonroot_platform")
    return factory
