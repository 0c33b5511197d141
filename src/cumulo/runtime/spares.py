"""Spare zygotes: sandboxed interpreters started ahead of need, adopted by a full cold start.

A new version's zygote is a new interpreter, and most of its start-up is importing cumulo
(asyncio, ssl, typing…) before the user's module. A spare has done that already: it runs
inside its own bubblewrap sandbox (everything of `sandbox.bwrap_argv` but the function's
code-dir bind), still root inside the sandbox with CAP_SETUID/CAP_SETGID/CAP_SYS_ADMIN left,
bound to no function and no uid, and blocks on its control socket. Adopting it sends the
spec and the code dir as a detached read-only mount (open_tree, SCM_RIGHTS); the spare
attaches it at the code dir's own path (what bubblewrap's --ro-bind would have done), then
confines itself exactly like a fresh zygote (private uid, which also clears every
capability, NO_NEW_PRIVS, seccomp, rlimits) and imports the user's module. A replacement
starts as soon as one is taken.

A plain directory fd would not do: `..` from a directory outside the process's root walks
up the host's tree (the data dir), and os.getcwd() fails there.

Only a root gateway's zygotes (see `enabled`) of non-network functions whose /tmp size
equals the spare's (`spare_memory_mb`), that run the platform's interpreter (no
requirements.txt virtualenv) and whose environment changes nothing the interpreter reads
at start-up adopt spares; every other start, and every start while no spare is there,
takes the ordinary path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from cumulo import fds
from cumulo.runtime import cgroups, sandbox
from cumulo.runtime.settings import RuntimeSettings

log = logging.getLogger("cumulo.spares")

MB = 1024 * 1024
# Spares that die before they are ready, in a row, after which no more are started (a
# broken interpreter or sandbox would otherwise be respawned forever).
MAX_FAILED_STARTS = 3
# Environment variables the interpreter or libc read once, at process start: a function
# that sets any of them needs an interpreter started with them.
STARTUP_ENV_PREFIXES = ("PYTHON", "LD_", "MALLOC_", "GLIBC_")


# Variables a zygote inherits from the gateway; everything else (keys, tokens) stays behind.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def base_env(home: str) -> dict[str, str]:
    """Every zygote's environment before the function's own `env` (a spare's until adopted)."""
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWLIST}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        {
            "HOME": home,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            # glibc reserves 64 MB of address space per thread arena; the memory limit counts
            # it. Read once at start-up, so a spare has it from the start.
            "MALLOC_ARENA_MAX": "2",
        }
    )
    return env


@dataclass(slots=True)
class Spare:
    proc: fds.Child
    ctl: socket.socket  # the gateway's end, SO_PASSCRED set
    output: fds.Output  # its fds 1 and 2; the adopting version's logs once adopted
    started_at: float  # time.time() at launch
    ready: bool = False  # the interpreter has imported cumulo and waits for a spec
    # Its own control group until adopted (then moved to the version's; cgroups.py).
    group: cgroups.Group | None = None


class SparePool:
    """`settings.spare_zygotes` spares of one kind (no network, `spare_memory_mb` of /tmp)."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.tmp_bytes = max(settings.spare_memory_mb, 16) * MB
        self.spares: list[Spare] = []
        self._launching = 0
        self._failed = 0
        self._broken: str | None = None  # why no spare can be adopted here (a kernel without
        # the new mount API, say): every zygote then takes the old path
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = True
        self.taken = 0  # adoptions so far (for tests and describe)

    @property
    def enabled(self) -> bool:
        if self.settings.spare_zygotes <= 0 or self.closed:
            return False
        status = sandbox.status(self.settings)
        # Only a root gateway's: a spare keeps CAP_SYS_ADMIN until it attaches the code
        # dir, and only the drop to a private uid takes it away before user code runs.
        return (
            status.sandboxed
            and status.drop_uid
            and self._failed < MAX_FAILED_STARTS
            and self._broken is None
        )

    def start(self) -> None:
        global current
        self.closed = False
        current = self
        self.fill()

    def fill(self) -> None:
        """Start spares in the background until there are `spare_zygotes`."""
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        while len(self.spares) + self._launching < self.settings.spare_zygotes:
            self._launching += 1
            task = loop.create_task(self._launch())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def matches(
        self, settings: RuntimeSettings, tmp_bytes: int, env: dict[str, str], python: str
    ) -> bool:
        """Whether a zygote with these settings, /tmp size, function env and interpreter
        may adopt (a function with its own virtualenv needs its own interpreter)."""
        return (
            self.enabled
            and python == self.settings.python
            and settings.python == self.settings.python
            and settings.data_dir == self.settings.data_dir
            and settings.isolation == self.settings.isolation
            and tmp_bytes == self.tmp_bytes
            and not any(k.startswith(STARTUP_ENV_PREFIXES) for k in env)
        )

    def code_tree(self, code_dir: Path) -> int:
        """The code dir as a detached read-only mount for a spare, -1 when none can be made
        (spares are then turned off: the same call would fail for every function)."""
        if not any(s.proc.poll() is None for s in self.spares):
            return -1
        try:
            return sandbox.detached_tree(code_dir)
        except OSError as exc:
            self._broken = str(exc)
            log.warning("spare zygotes turned off: cannot clone the code dir's mount: %s", exc)
            return -1

    def take(self, in_group: bool = False) -> Spare | None:
        """A live spare, ready ones first (one still starting beats a new interpreter);
        its control socket is the caller's from now on. A replacement starts now.
        `in_group`: only a spare in a control group of its own (to move to the version's)."""
        live = [
            s
            for s in self.spares
            if s.proc.poll() is None and (s.group is not None or not in_group)
        ]
        if not live:
            return None
        spare = max(live, key=lambda s: s.ready)
        self.spares.remove(spare)
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(spare.ctl.fileno())
        self.taken += 1
        self.fill()
        return spare

    async def _launch(self) -> None:
        spare: Spare | None = None
        try:
            spare = await self._spawn()
        except Exception as exc:  # logged; cold starts take the old path meanwhile
            self._failed += 1
            log.warning("could not start a spare zygote: %s", exc)
        finally:
            self._launching -= 1
        if spare is None:
            return
        if self.closed:
            kill(spare)
            return
        self.spares.append(spare)
        asyncio.get_running_loop().add_reader(spare.ctl.fileno(), self._on_readable, spare)

    async def _spawn(self) -> Spare:
        settings = self.settings
        status = sandbox.status(settings)
        assert status.bwrap is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # As for every zygote: the kernel names each packet's sender (see zygote_handle).
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        argv = [
            *sandbox.bwrap_argv(
                status.bwrap,
                settings,
                None,
                network=False,
                tmp_bytes=self.tmp_bytes,
                drop_uid=status.drop_uid,
                # To attach the code dir once adopted (zygote.wait_for_adoption).
                extra_caps=("CAP_SYS_ADMIN",),
            ),
            settings.python,
            "-m",
            "cumulo.runtime.zygote",
            str(theirs.fileno()),
            "--spare",
        ]
        # Until adopted it has run only platform code: what it prints is the platform's.
        output = fds.Output(_platform_output)
        group = None
        try:
            if cgroups.current is not None:
                group = cgroups.current.new_group("s", cgroups.SPARE_LIMITS)
                if group is not None:
                    argv = group.wrap(argv)
            proc = fds.spawn(
                argv,
                keep=[theirs.fileno()],
                env=base_env("/"),
                cwd="/",
                stdout=output.child_fds[0],
                stderr=output.child_fds[1],
            )
        except BaseException:
            ours.close()
            output.close()
            if cgroups.current is not None:
                cgroups.current.release(group)
            raise
        finally:
            theirs.close()
        output.start()
        ours.setblocking(False)
        return Spare(proc, ours, output, time.time(), group=group)

    def _on_readable(self, spare: Spare) -> None:
        try:
            data = spare.ctl.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            # {op: spare}: the only thing a spare says before adoption.
            spare.ready = True
            self._failed = 0
            return
        # It died before anyone adopted it: forget it and start another.
        if not spare.ready:
            self._failed += 1
        with contextlib.suppress(ValueError):
            self.spares.remove(spare)
        asyncio.get_running_loop().remove_reader(spare.ctl.fileno())
        kill(spare)
        if not self.closed:
            self.fill()

    async def stop(self) -> None:
        global current
        self.closed = True
        if current is self:
            current = None
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        spares, self.spares = self.spares, []
        loop = asyncio.get_running_loop()
        for spare in spares:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(spare.ctl.fileno())
            kill(spare)
        for spare in spares:
            await spare.proc.wait()

    def describe(self) -> dict[str, object]:
        return {
            "spares": [
                {"pid": s.proc.pid, "ready": s.ready, "started_at": s.started_at}
                for s in self.spares
            ],
            "taken": self.taken,
        }


def _platform_output(stream: str, line: str) -> None:
    log.warning("spare zygote %s: %r", stream, line)


async def until_ready(spare: Spare, timeout_s: float) -> bool:
    """Wait, after `take`, for a spare still starting to say it is ready (so its launcher
    has joined its control group, which adoption moves into the version's): True once it
    has, False when it died or took longer than `timeout_s`."""
    if spare.ready:
        return True
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            data = await loop.sock_recv(spare.ctl, 65536)
    except (TimeoutError, OSError):
        return False
    spare.ready = bool(data)  # {op: spare}; b"": it died
    return spare.ready


def kill(spare: Spare) -> None:
    """Stop a spare (bwrap's process group) and close the gateway's end."""
    # bwrap's process group: its pid namespace, and the spare in it, die with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(spare.proc.pid, 9)
    with contextlib.suppress(OSError):
        spare.ctl.close()
    if cgroups.current is not None:
        cgroups.current.release(spare.group)


# The executor's pool, for zygote handles made elsewhere (deploy-time validation).
current: SparePool | None = None
