"""Resource limits applied inside zygotes and workers (the part of the sandbox that always
works, with or without bubblewrap)."""

from __future__ import annotations

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
