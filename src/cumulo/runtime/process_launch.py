"""Inside the sandbox, one instance of a process function: confine, start the command, relay.

Started by the gateway (process_pool.py) as `python -m cumulo.runtime.process_launch FD`,
inside the same bubblewrap sandbox as a zygote, with the spec (JSON) on stdin. It applies
the zygote's confinement (rlimits, private uid, NO_NEW_PRIVS, seccomp), starts the command
with `PORT` set, and relays connections from a Unix socket in a directory shared with the
gateway to 127.0.0.1:$PORT. Without `network = true` the sandbox has its own network
namespace (loopback only): the command can listen on TCP but reach nothing, and the
gateway, outside that namespace, reaches it only through the relay. When the command
answers on its port the launcher writes `ready` to FD; when the command exits, the launcher
exits with its status (and the sandbox with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from cumulo import fds
from cumulo.runtime import limits
from cumulo.runtime.zygote import confine

RELAY_BUFFER = 64 * 1024
# How often the launcher retries the command's port while it starts (an external program
# gives no other signal that it listens).
PORT_POLL_S = 0.02


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(RELAY_BUFFER):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _relay(port: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
    finally:
        server_w.close()
        client_w.close()


async def _port_open(port: int) -> bool:
    try:
        _r, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def run(spec: dict[str, Any], ready_fd: int) -> int:
    port = int(spec["port"])
    env = dict(spec["env"])
    env["PORT"] = str(port)
    launcher = os.getpid()
    child = await asyncio.create_subprocess_exec(
        *spec["command"],
        env=env,
        cwd=spec["code_dir"],
        stdin=asyncio.subprocess.DEVNULL,
        # The command's fds: /dev/null, and the launcher's stdout and stderr (the gateway's
        # pipes into the function's logs); close_fds is asyncio's default, said here anyway.
        close_fds=True,
        # Without bubblewrap's pid namespace nothing else would stop the command if the
        # launcher were killed (the gateway kills the group, but a crashed gateway cannot).
        # preexec_fn is safe here: the launcher has started no thread yet.
        preexec_fn=lambda: limits.die_with_parent(launcher),
    )
    exited = asyncio.ensure_future(child.wait())
    while not await _port_open(port):
        if exited.done():
            return exited.result()
        await asyncio.sleep(PORT_POLL_S)
    server = await asyncio.start_unix_server(
        lambda r, w: _relay(port, r, w), path=spec["socket"], limit=RELAY_BUFFER
    )
    os.write(ready_fd, b"ready\n")
    async with server:
        return await exited


def main() -> None:
    ready_fd = int(sys.argv[1])
    # stdin (the spec), stdout/stderr (the gateway's pipes into the function's logs), the
    # ready pipe: nothing else reaches the launcher, and so the command.
    fds.keep_only([ready_fd])
    spec: dict[str, Any] = orjson.loads(sys.stdin.buffer.read())
    parent = int(spec.get("parent") or 0)
    limits.die_with_parent(parent if parent > 0 else os.getppid())
    code_dir = Path(spec["code_dir"])
    os.chdir(code_dir)
    # The relay and the command need TCP on loopback; outbound network is governed by the
    # sandbox's network namespace instead (docs/sandbox.md, "Process functions").
    code_dir, _ = confine({**spec, "config": {**spec["config"], "network": True}}, code_dir)
    code = asyncio.run(run({**spec, "code_dir": str(code_dir)}, ready_fd))
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
