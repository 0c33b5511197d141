"""A warm pool of simulation worker processes.

Each worker is a fresh interpreter that imports Qiskit Aer once at start-up and then runs one
job at a time. A worker that must stop mid-job (cancel, time cap, memory cap, crash) is killed
and replaced in the background, so the next job again finds a warm one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from cumulo.quantum.protocol import pack, recv

STARTUP_TIMEOUT_S = 120.0


class WorkerDied(Exception):
    """The worker process exited or closed its socket."""

    def __init__(self, returncode: int | None) -> None:
        if returncode is not None and returncode < 0:
            how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with status {returncode}"
        super().__init__(f"the simulation worker {how}")
        self.returncode = returncode


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            match = re.search(r"^VmRSS:\s+(\d+)", fh.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _worker_env() -> dict[str, str]:
    # The worker must import this same cumulo even when it is not installed (tests, src runs).
    src = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


class Worker:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hello: dict[str, Any],
    ) -> None:
        self.proc = proc
        self._reader = reader
        self._writer = writer
        self.hello = hello
        self.pid = int(proc.pid)
        self.baseline_rss = int(hello.get("rss_bytes", 0))

    @classmethod
    async def spawn(cls) -> Worker:
        parent, child = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cumulo.quantum.worker",
                str(child.fileno()),
                str(os.getpid()),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                env=_worker_env(),
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        try:
            hello = await asyncio.wait_for(recv(reader), STARTUP_TIMEOUT_S)
        except BaseException:
            writer.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if hello is None or hello.get("op") != "hello":
            writer.close()
            raise WorkerDied(await proc.wait())
        return cls(proc, reader, writer, hello)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self._writer.is_closing()

    def rss_bytes(self) -> int | None:
        return _rss_bytes(self.pid)

    async def send(self, message: dict[str, Any]) -> None:
        try:
            self._writer.write(pack(message))
            await self._writer.drain()
        except ConnectionError:
            raise WorkerDied(await self.proc.wait()) from None

    async def recv(self) -> dict[str, Any]:
        message = await recv(self._reader)
        if message is None:
            raise WorkerDied(await self.proc.wait())
        return message

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self._writer.close()
        await self.proc.wait()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


class WorkerPool:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("pool_size must be at least 1")
        self.size = size
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self._all: set[Worker] = set()
        self._spawning: set[asyncio.Task[None]] = set()
        self._closed = False
        self.hello: dict[str, Any] = {}

    async def start(self) -> None:
        workers = await asyncio.gather(*(Worker.spawn() for _ in range(self.size)))
        for worker in workers:
            self._all.add(worker)
            self._idle.put_nowait(worker)
        self.hello = workers[0].hello

    async def acquire(self) -> Worker:
        while True:
            worker = await self._idle.get()
            if worker.alive:
                return worker
            await self.discard(worker)

    def release(self, worker: Worker) -> None:
        if self._closed:
            return
        self._idle.put_nowait(worker)

    async def discard(self, worker: Worker) -> None:
        """Kill a worker (if it still runs) and start its replacement in the background."""
        self._all.discard(worker)
        await worker.kill()
        if not self._closed:
            task = asyncio.get_running_loop().create_task(self._replace())
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def _replace(self) -> None:
        delay = 0.5
        while not self._closed:
            try:
                worker = await Worker.spawn()
            except (OSError, WorkerDied, TimeoutError):
                await asyncio.sleep(delay)  # back off: a broken install must not spin
                delay = min(delay * 2, 30.0)
                continue
            if self._closed:
                await worker.kill()
                return
            self._all.add(worker)
            self._idle.put_nowait(worker)
            return

    def closing(self) -> None:
        """From now on, workers that die are not replaced."""
        self._closed = True

    async def stop(self) -> None:
        self._closed = True
        for task in list(self._spawning):
            task.cancel()
        await asyncio.gather(*self._spawning, return_exceptions=True)
        await asyncio.gather(*(w.kill() for w in list(self._all)), return_exceptions=True)
        self._all.clear()

    def pids(self) -> list[int]:
        return [w.pid for w in self._all if w.alive]
