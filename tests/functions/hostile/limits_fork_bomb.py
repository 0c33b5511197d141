"""Fork bomb at the platform's ceilings: every process forks for as long as it can."""

import contextlib
import os
import time

import cumulo


@cumulo.function(max_instances=100, concurrency=1000, timeout_s=4)
def bomb(event, ctx):
    while True:
        with contextlib.suppress(OSError):
            if os.fork() == 0:
                time.sleep(0.01)


@cumulo.function(max_instances=2)
def forks(event, ctx):
    """Fork and reap a few children: fails when the host's (or our uid's) processes run out."""
    done = 0
    for _ in range(int(event.get("n", 20))):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        done += 1
    return {"forked": done}
