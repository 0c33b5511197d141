"""Handing freed heap back to the OS after a burst (a log flood, a big flush)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def trim() -> bool:
    """glibc's malloc_trim(0): free arenas' unused pages go back to the OS, so RSS returns
    to its baseline after a burst instead of staying at its peak. False where there is no
    glibc (musl, macOS): nothing to do there."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
