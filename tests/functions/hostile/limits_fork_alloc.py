"""Fork, then allocate in every child: each stays under its own address-space limit, the
tree as a whole asks for far more than the function's memory."""

import os
import time

import cumulo

CHILDREN = 16
EACH_MB = 40


@cumulo.function(memory_mb=64, max_instances=1, timeout_s=20)
def hoard(event, ctx):
    read, write = os.pipe()
    pids = []
    for _ in range(CHILDREN):
        pid = os.fork()
        if pid == 0:
            os.close(read)
            block = bytearray(b"\x01") * (EACH_MB * 1024 * 1024)  # every page touched
            os.write(write, b"+")
            time.sleep(6)
            os._exit(0 if block else 1)
        pids.append(pid)
    os.close(write)
    time.sleep(3)
    held = len(os.read(read, CHILDREN))
    killed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9:
            killed += 1
    return {"held_mb": held * EACH_MB, "killed": killed}
