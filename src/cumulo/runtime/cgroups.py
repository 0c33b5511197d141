"""Control groups: limits on a zygote's whole process tree (memory, processes, CPU).

rlimits are per process: a fork bomb's children each get their own, and memory held by
forked children escapes a per-process address-space limit. A control group bounds the
tree. Each zygote (and each spare, and the throwaway zygote of a deploy's validation) gets
a group of its own under one platform-owned parent, `cumulo-<hash of the data dir>`,
created next to the gateway's own group in each hierarchy:

- cgroup v2 (a cgroup2 mount whose controllers include memory and pids): `memory.max`,
  `memory.swap.max` = 0, `pids.max`, `cpu.max`;
- cgroup v1 (writable memory and pids hierarchies): `memory.limit_in_bytes` (and
  `memory.memsw.limit_in_bytes` when swap accounting exists), `pids.max`,
  `cpu.cfs_quota_us`/`cpu.cfs_period_us`, and `cpuacct.usage` to measure CPU;
- neither (a gateway that is not root, no delegated v2 subtree): `backend` is None and
  only rlimits apply (limits.py; documented in docs/sandbox.md).

Placement is race-free: the launcher command is prefixed with a `/bin/sh` that writes its
own pid into the group's `cgroup.procs` files and then `exec`s bubblewrap, so no process
of the sandbox ever starts outside the group. The zygote checks that it is a member
(`verify_member`) before it imports user code. A spare is started in a spare group and its
processes are moved to the version's group on adoption, before it receives its spec.

tmpfs pages (/tmp, /dev/shm) are charged to the memory group of whoever wrote them.

The parent is removed at shutdown; a platform killed with SIGKILL leaves empty groups,
removed at the next start of any platform on the host (a parent whose lock file, under
/run/cumulo, no live platform holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("cumulo.cgroups")

MB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")
RUN_DIR = Path("/run/cumulo")
PREFIX = "cumulo-"
CPU_PERIOD_US = 100_000
# A group whose processes are gone is removed; these retries cover the gap between
# SIGKILL and the kernel (or our reaper) finishing with them.
REMOVE_RETRIES = 40
REMOVE_DELAY_S = 0.25
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
# Room above current usage when a memory limit is lowered.
LOWER_SLACK = 16 * MB


@dataclass(frozen=True, slots=True)
class Limits:
    """What one group may use. `memory_bytes`/`pids`/`cpus` 0: no limit of that kind."""

    memory_bytes: int
    pids: int
    cpus: float


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    return path.read_text().strip()


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and "" (key) for the v2 one."""
    paths: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return paths
    for line in text.splitlines():
        _id, controllers, path = line.split(":", 2)
        if controllers == "":
            paths[""] = path
        for name in controllers.split(","):
            if name:
                paths[name] = path
    return paths


def _v2_mount() -> Path | None:
    """The cgroup2 mount point, if any (/sys/fs/cgroup itself, or …/unified in hybrid)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def _v1_mounts() -> dict[str, Path]:
    found: dict[str, Path] = {}
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in mounts:
        parts = line.split()
        if len(parts) > 3 and parts[2] == "cgroup":
            for option in parts[3].split(","):
                if option in V1_CONTROLLERS:
                    found.setdefault(option, Path(parts[1]))
    return found


@dataclass(slots=True)
class Group:
    """One group: a directory per hierarchy (v1: memory, pids, cpu…; v2: one)."""

    backend: Backend
    dirs: dict[str, Path]  # controller ("" on v2) → the group's directory
    removed: bool = False

    @property
    def procs_files(self) -> list[str]:
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` started inside this group from its first instruction: a shell writes its
        own pid into every `cgroup.procs` (so whatever it becomes, and forks, is a member),
        then execs the command."""
        writes = " && ".join(f"echo $$ > {shlex.quote(p)}" for p in self.procs_files)
        return ["/bin/sh", "-c", f'{writes} && exec "$@"', "cumulo-cgroup", *argv]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in Path(path).read_text().split())
        return found

    def add(self, pid: int) -> None:
        for path in self.procs_files:
            _write(Path(path), str(pid))

    def take_from(self, other: Group) -> None:
        """Move every process of `other` (a spare's group) here; `other` is then empty."""
        # Until nothing is left: a process that forks while we move it would leave a child.
        for _ in range(20):
            moving = other.pids()
            if not moving:
                break
            for pid in moving:
                with contextlib.suppress(ProcessLookupError):
                    self.add(pid)

    def set_limits(self, limits: Limits) -> None:
        self.backend.apply(self, limits)

    def set_memory(self, memory_bytes: int) -> None:
        """Refit the memory limit; never below what the group holds now (v2 would OOM-kill
        to get there: tmpfs pages cannot be reclaimed without swap)."""
        usage = self.memory_usage() or 0
        if memory_bytes and memory_bytes < usage:
            memory_bytes = usage + LOWER_SLACK
        self.backend.apply_memory(self, memory_bytes)

    def memory_usage(self) -> int | None:
        return self.backend.memory_usage(self)

    def cpu_seconds(self) -> float | None:
        """CPU time used by every process that ever ran in the group (all threads)."""
        return self.backend.cpu_seconds(self)

    def oom_kills(self) -> int | None:
        """Processes of the group the kernel's OOM killer has killed (None: unknown)."""
        return self.backend.oom_kills(self)

    def kill(self) -> None:
        """SIGKILL everything in the group (a fork bomb: until nothing is left)."""
        v2 = self.dirs.get("")
        if v2 is not None and (v2 / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(v2 / "cgroup.kill", "1")
                return
        for _ in range(50):
            members = self.pids()
            if not members:
                return
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def try_remove(self) -> bool:
        """rmdir every directory; False while a process is still in it (EBUSY)."""
        done = True
        for path in self.dirs.values():
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        self.removed = done
        return done


class Backend:
    """A way to make groups: v2, v1, or (subclassed) nothing."""

    name = "none"

    def __init__(self, parents: dict[str, Path]) -> None:
        self.parents = parents  # controller → the platform's parent directory

    def make(self, name: str) -> Group:
        dirs: dict[str, Path] = {}
        for controller, parent in self.parents.items():
            path = parent / name
            with contextlib.suppress(FileExistsError):
                path.mkdir()
            dirs[controller] = path
        return Group(self, dirs)

    def apply(self, group: Group, limits: Limits) -> None:
        raise NotImplementedError

    def apply_memory(self, group: Group, memory_bytes: int) -> None:
        raise NotImplementedError

    def memory_usage(self, group: Group) -> int | None:
        raise NotImplementedError

    def cpu_seconds(self, group: Group) -> float | None:
        raise NotImplementedError

    def oom_kills(self, group: Group) -> int | None:
        return None

    @staticmethod
    def _counter(path: Path, key: str) -> int | None:
        """`key N` from a flat-keyed file (memory.events, memory.oom_control)."""
        with contextlib.suppress(OSError, ValueError):
            for line in _read(path).splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
        return None


class V2(Backend):
    name = "cgroup v2"

    def apply(self, group: Group, limits: Limits) -> None:
        d = group.dirs[""]
        self.apply_memory(group, limits.memory_bytes)
        with contextlib.suppress(FileNotFoundError):
            _write(d / "memory.swap.max", "0")
        _write(d / "pids.max", str(limits.pids) if limits.pids else "max")
        if (d / "cpu.max").exists():
            quota = int(limits.cpus * CPU_PERIOD_US) if limits.cpus else 0
            _write(d / "cpu.max", f"{quota or 'max'} {CPU_PERIOD_US}")

    def apply_memory(self, group: Group, memory_bytes: int) -> None:
        d = group.dirs[""]
        _write(d / "memory.max", str(memory_bytes) if memory_bytes else "max")

    def memory_usage(self, group: Group) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(_read(group.dirs[""] / "memory.current"))
        return None

    def cpu_seconds(self, group: Group) -> float | None:
        with contextlib.suppress(OSError, ValueError):
            for line in _read(group.dirs[""] / "cpu.stat").splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        return None

    def oom_kills(self, group: Group) -> int | None:
        return self._counter(group.dirs[""] / "memory.events", "oom_kill")


class V1(Backend):
    name = "cgroup v1"

    def apply(self, group: Group, limits: Limits) -> None:
        self.apply_memory(group, limits.memory_bytes)
        _write(group.dirs["pids"] / "pids.max", str(limits.pids) if limits.pids else "max")
        cpu = group.dirs.get("cpu")
        if cpu is not None:
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            quota = int(limits.cpus * CPU_PERIOD_US) if limits.cpus else -1
            _write(cpu / "cpu.cfs_quota_us", str(quota))

    def apply_memory(self, group: Group, memory_bytes: int) -> None:
        d = group.dirs["memory"]
        value = str(memory_bytes) if memory_bytes else "-1"
        memsw = d / "memory.memsw.limit_in_bytes"
        # memory ≤ memory+swap at every moment: raise memsw first, lower memory first.
        order = [d / "memory.limit_in_bytes", memsw]
        try:
            current = int(_read(d / "memory.limit_in_bytes"))
        except (OSError, ValueError):
            current = 0
        if not memory_bytes or memory_bytes > current:
            order.reverse()
        for path in order:
            if path == memsw and not memsw.exists():
                continue
            try:
                _write(path, value)
            except OSError as exc:
                # Lowering below what the group holds now: the kernel keeps the old limit.
                if exc.errno != errno.EBUSY:
                    raise

    def memory_usage(self, group: Group) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(_read(group.dirs["memory"] / "memory.usage_in_bytes"))
        return None

    def cpu_seconds(self, group: Group) -> float | None:
        acct = group.dirs.get("cpuacct")
        if acct is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            return int(_read(acct / "cpuacct.usage")) / 1e9
        return None

    def oom_kills(self, group: Group) -> int | None:
        # `oom_kill` in memory.oom_control since Linux 4.13.
        return self._counter(group.dirs["memory"] / "memory.oom_control", "oom_kill")


def platform_name(data_dir: Path | None) -> str:
    key = str(data_dir.resolve()) if data_dir is not None else f"pid-{os.getpid()}"
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()[:16]


def _lock(name: str) -> int | None:
    """Hold /run/cumulo/<name>.lock for this process's life (None: cannot)."""
    try:
        RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(RUN_DIR / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _lock_free(name: str) -> bool:
    fd = _lock(name)
    if fd is None:
        return False
    os.close(fd)
    return True


def _remove_tree(path: Path) -> None:
    """Remove a stale group and its children (depth first), killing what is left."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir():
            _remove_tree(child)
    with contextlib.suppress(OSError, ValueError):
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)
    for _ in range(20):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def _parents(mounts: dict[str, Path], own: dict[str, str], name: str) -> dict[str, Path]:
    """The platform's parent directory per controller: next to the gateway's own group."""
    return {c: mounts[c] / own.get(c, "/").lstrip("/") / name for c in mounts}


def _probe_v2(name: str) -> V2 | None:
    mount = _v2_mount()
    if mount is None:
        return None
    own = _own_paths().get("", "/")
    base = mount / own.lstrip("/")
    try:
        available = _read(base / "cgroup.controllers").split()
        if not {"memory", "pids"} <= set(available):
            return None
        enabled = set(_read(base / "cgroup.subtree_control").split())
        wanted = [c for c in ("memory", "pids", "cpu") if c in available and c not in enabled]
        if wanted:
            _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        parent = base / name
        parent.mkdir(exist_ok=True)
        # Children get every controller the parent has.
        inner = [c for c in ("memory", "pids", "cpu") if c in available]
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in inner))
    except OSError:
        return None
    return V2({"": parent})


def _probe_v1(name: str) -> V1 | None:
    mounts = _v1_mounts()
    if "memory" not in mounts or "pids" not in mounts:
        return None
    parents = _parents(mounts, _own_paths(), name)
    made: list[Path] = []
    try:
        for controller, parent in parents.items():
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
            if controller == "memory":
                # Limits of children are hierarchical only with use_hierarchy.
                with contextlib.suppress(OSError):
                    _write(parent / "memory.use_hierarchy", "1")
    except OSError:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()
        return None
    return V1(parents)


def _sweep_stale(own: str) -> None:
    """Parents left by platforms that died without removing them (SIGKILL)."""
    bases: list[Path] = []
    mount = _v2_mount()
    paths = _own_paths()
    if mount is not None:
        bases.append(mount / paths.get("", "/").lstrip("/"))
    for controller, path in _v1_mounts().items():
        bases.append(path / paths.get(controller, "/").lstrip("/"))
    for base in bases:
        with contextlib.suppress(OSError):
            for entry in base.iterdir():
                if (
                    entry.is_dir()
                    and entry.name.startswith(PREFIX)
                    and entry.name != own
                    and _lock_free(entry.name)
                ):
                    _remove_tree(entry)


@dataclass(slots=True)
class PlatformGroups:
    """The platform's parent group and the groups under it."""

    name: str
    backend: Backend | None
    reason: str  # why there is no backend ("" when there is one)
    lock_fd: int | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    groups: list[Group] = field(default_factory=list)

    def describe(self) -> str:
        if self.backend is None:
            return f"rlimits only ({self.reason})"
        return f"{self.backend.name} ({', '.join(str(p) for p in self.backend.parents.values())})"

    def new_group(self, kind: str, limits: Limits) -> Group | None:
        """A group for one zygote (kind "z"), spare ("s") or validation ("v"); None when
        this platform has no backend."""
        if self.backend is None:
            return None
        group = self.backend.make(f"{kind}{next(self._ids)}")
        try:
            group.set_limits(limits)
        except OSError:
            group.try_remove()
            raise
        self.groups.append(group)
        return group

    def release(self, group: Group | None) -> None:
        """Kill what is left in `group` and remove it (retried until its processes are gone)."""
        if group is None or group.removed:
            return
        group.kill()
        if group.try_remove():
            self._forget(group)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._retry(loop, group, REMOVE_RETRIES)

    def _retry(self, loop: asyncio.AbstractEventLoop, group: Group, left: int) -> None:
        def again() -> None:
            group.kill()
            if group.try_remove() or left <= 1:
                self._forget(group)
            else:
                self._retry(loop, group, left - 1)

        loop.call_later(REMOVE_DELAY_S, again)

    def _forget(self, group: Group) -> None:
        with contextlib.suppress(ValueError):
            self.groups.remove(group)

    def shutdown(self) -> None:
        """Every group and the parent go (the platform stops)."""
        if self.backend is not None:
            for group in list(self.groups):
                group.kill()
            for parent in self.backend.parents.values():
                _remove_tree(parent)
        self.groups.clear()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def setup(data_dir: Path | None) -> PlatformGroups:
    """Probe v2, then v1; claim the platform's parent and sweep stale ones. Idempotent."""
    global current
    name = platform_name(data_dir)
    if current is not None and current.name == name:
        return current
    if os.geteuid() != 0 and _v2_mount() is None:
        current = PlatformGroups(name, None, "not root and no cgroup2 mount")
        return current
    lock_fd = _lock(name)
    if lock_fd is None:
        current = PlatformGroups(name, None, f"cannot lock {RUN_DIR}/{name}.lock")
        return current
    _sweep_stale(name)
    # Ours too, if a previous run with this data dir was killed: start from nothing.
    backend: Backend | None = _probe_v2(name)
    if backend is None:
        backend = _probe_v1(name)
    if backend is not None:
        for parent in backend.parents.values():
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    if child.is_dir():
                        _remove_tree(child)
    reason = "" if backend is not None else "no writable cgroup v2 or v1 memory+pids hierarchy"
    current = PlatformGroups(name, backend, reason, lock_fd)
    return current


def shutdown() -> None:
    global current
    if current is not None:
        current.shutdown()
        current = None


def verify_member(procs_files: list[str], timeout_s: float = 5.0) -> None:
    """Inside the zygote, before user code: this process is in every one of its group's
    `cgroup.procs` (read through the host's cgroup mounts, which the sandbox shows
    read-only; the pids there are in our own pid namespace). Raises OSError if not."""
    me = str(os.getpid())
    deadline = time.monotonic() + timeout_s
    for path in procs_files:
        while True:
            try:
                members = Path(path).read_text().split()
            except OSError as exc:
                raise OSError(exc.errno, f"cannot read {path}: {exc.strerror}") from None
            if me in members:
                break
            if time.monotonic() > deadline:
                raise OSError(errno.EPERM, f"not in the function's control group ({path})")
            time.sleep(0.01)


# The platform's groups (set up by `setup` at start-up); None: no control groups.
current: PlatformGroups | None = None


# Beyond what max_instances x concurrency needs: bwrap, its init, the zygote, thread pools.
PIDS_BASE = 128
# A spare runs no user code until it is adopted (and moved out of its group).
SPARE_LIMITS = Limits(memory_bytes=512 * MB, pids=64, cpus=1.0)


def version_limits(
    memory_mb: int, max_instances: int, concurrency: int, ceiling_mb: int, max_pids: int
) -> Limits:
    """A zygote's group at start: room to import (the operator's memory ceiling on top of
    the function's own), processes for every worker it may fork within `max_pids`, and a
    core per instance. The pool narrows the memory once the zygote is ready (`fit`)."""
    cpus = os.cpu_count() or 1
    pids = min(max_pids, PIDS_BASE + max_instances * (concurrency + cpus + 2))
    return Limits(
        memory_bytes=(memory_mb + ceiling_mb) * MB, pids=pids, cpus=float(min(cpus, max_instances))
    )


def fitted_memory(baseline: int, memory_mb: int, workers: int) -> int:
    """What a version's tree may hold: its ready zygote (`baseline`, shared copy-on-write by
    its workers) plus the function's memory for each worker, /tmp and /dev/shm included."""
    return baseline + ZYGOTE_SLACK + memory_mb * MB * max(1, workers)


ZYGOTE_SLACK = 32 * MB


def platform_dirs(data_dir: Path) -> dict[str, Path]:
    """Where the platform with `data_dir` keeps its groups, per controller ("" on v2), for
    a process in the same control groups as its gateway (tests, operators' tools)."""
    name = platform_name(data_dir)
    own = _own_paths()
    dirs = {c: p for c, p in _parents(_v1_mounts(), own, name).items() if p.is_dir()}
    mount = _v2_mount()
    if mount is not None:
        v2 = mount / own.get("", "/").lstrip("/") / name
        if v2.is_dir():
            dirs[""] = v2
    return dirs


def instance_limits(memory_mb: int, concurrency: int, max_pids: int) -> Limits:
    """One process-function instance's group: its memory for the whole tree (the launcher
    and the command), processes for its threads, one core."""
    pids = min(max_pids, PIDS_BASE + concurrency + (os.cpu_count() or 1) + 2)
    return Limits(memory_bytes=memory_mb * MB + ZYGOTE_SLACK, pids=pids, cpus=1.0)
