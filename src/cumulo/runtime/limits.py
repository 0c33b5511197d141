"""Resource limits applied inside zygotes and workers (the part of the sandbox that always
works, with or without bubblewrap)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal

MB = 1024 * 1024
PR_SET_PDEATHSIG = 1
# Headroom for thread stacks and allocator arenas, which reserve address space they never use.
THREAD_HEADROOM = 16 * MB


def die_with_parent(expected_parent: int) -> None:
    """Ask the kernel to SIGKILL us when our parent dies, so nothing is ever orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass
    # The parent may have died before prctl took effect.
    if os.getppid() != expected_parent:
        os._exit(1)


# The most the kernel's OOM killer may prefer a process (proc(5), oom_score_adj).
OOM_SCORE_ADJ_MAX = 1000
PR_SET_DUMPABLE = 4


def oom_first() -> None:
    """Make this process the OOM killer's first choice. Raising one's own score needs no
    privilege, and a worker can lower it back no further than its zygote's."""
    try:
        _write_oom_score_adj()
    except PermissionError:
        # After a uid drop the kernel marks us non-dumpable and /proc/self becomes root's:
        # dumpable for this one write only (the uid's other processes are our siblings).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        try:
            with contextlib.suppress(OSError):
                _write_oom_score_adj()
        finally:
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except OSError:
        pass


def _write_oom_score_adj() -> None:
    with open("/proc/self/oom_score_adj", "w") as fh:
        fh.write(str(OOM_SCORE_ADJ_MAX))


def virtual_size() -> int:
    """This process's current address-space size in bytes (VmSize)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def limit_memory(baseline: int, memory_mb: int, threads: int) -> None:
    """Cap the worker's address space at what it inherited plus its memory allowance.

    RLIMIT_AS counts address space, not resident memory: the zygote's imports are shared
    copy-on-write, so the allowance is measured above the inherited baseline."""
    limit = baseline + memory_mb * MB + threads * THREAD_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# Open files per process: plenty for a function, a bound for one that leaks descriptors.
NOFILE = 4096
# Processes (threads count too) per zygote uid, beyond what its workers need: enough for
# thread pools and BLAS, a ceiling for a fork bomb.
NPROC_BASE = 128


def limit_files(max_file_bytes: int) -> None:
    """No file bigger than `max_file_bytes` (0: unchanged), at most NOFILE descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, cap) if soft > 0 else cap, cap))
    if max_file_bytes > 0:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))


def tasks_of(uid: int) -> int:
    """Threads the kernel counts against `uid` now (what RLIMIT_NPROC compares to)."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return count


def limit_processes(max_instances: int, concurrency: int, max_pids: int = 0) -> None:
    """RLIMIT_NPROC against fork bombs: what this uid runs now plus room for the workers,
    at most `max_pids` (the operator's `--max-pids`, also the control group's pids.max).

    The count is per real uid, so under a private uid (each platform has its own range)
    this bounds one function version; under a shared uid it is measured from what already
    runs."""
    uid = os.getuid()
    if uid == 0:
        return  # root is exempt from RLIMIT_NPROC anyway
    per_worker = concurrency + (os.cpu_count() or 1) + 2
    room = NPROC_BASE + max_instances * per_worker
    if max_pids > 0:
        room = min(room, max_pids)
    limit = tasks_of(uid) + room
    _soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
