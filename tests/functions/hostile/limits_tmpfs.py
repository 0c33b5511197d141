"""Fill /tmp and /dev/shm (tmpfs: memory the function's own limit did not count)."""

import contextlib
import os

import cumulo

CHUNK = b"\x01" * (1024 * 1024)


def fill(directory: str, limit_mb: int) -> int:
    written = 0
    with contextlib.suppress(OSError), open(os.path.join(directory, "fill"), "wb") as fh:
        for _ in range(limit_mb):
            fh.write(CHUNK)
            fh.flush()
            written += 1
    return written


@cumulo.function(memory_mb=64, max_instances=1, timeout_s=20)
def tmpfs(event, ctx):
    return {"tmp_mb": fill("/tmp", 1024), "shm_mb": fill("/dev/shm", 1024)}
