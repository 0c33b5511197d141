"""`cumulo up --gateways N`: N gateway processes on one machine, sharing one port.

Each gateway is an ordinary `cumulo up` (the same arguments, less `--gateways`) whose
listening socket is bound with `SO_REUSEPORT`, so the kernel spreads new connections over
the N processes (one asyncio loop each: N cores). They share the store (the data dir's
SQLite files, or `--db` PostgreSQL) and follow each other's changes through its change feed,
as gateways on separate machines do. The first gateway starts alone (it creates the admin
key and migrates the schema); the others start once it answers.

This process only supervises: SIGTERM or Ctrl-C is passed to every gateway (each drains its
requests), and a gateway that exits on its own stops the others, with its exit code.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

import httpx

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def gateway_argv(argv: Sequence[str]) -> list[str]:
    """`cumulo up` arguments for one gateway: `--gateways N` removed, the shared-port and
    change-following flags added."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--gateways":
            skip = True
            continue
        if arg.startswith("--gateways="):
            continue
        out.append(arg)
    return [*out, "--reuse-port", "--watch-changes"]


def supervise(argv: Sequence[str], count: int, ready_url: str) -> int:
    """Run `count` gateways with `argv` (the `up` arguments); their exit code."""
    command = [sys.executable, "-c", "from cumulo.cli.main import main; main()", "up"]
    command += gateway_argv(argv)
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs.append(subprocess.Popen(command))
    if not _wait_ready(procs[0], ready_url) and not stopping:
        stop(signal.SIGTERM, None)
        return _reap(procs) or 1
    while len(procs) < count and not stopping:
        procs.append(subprocess.Popen(command))
    if not stopping:
        print(f"{count} gateways share {ready_url.removesuffix('/readyz')}", flush=True)
    while not stopping:
        exited = [p for p in procs if p.poll() is not None]
        if exited:
            code = exited[0].returncode
            print(
                f"error: a gateway exited (code {code}); stopping the others",
                file=sys.stderr,
                flush=True,
            )
            stop(signal.SIGTERM, None)
            _reap(procs)
            return code or 1
        time.sleep(0.2)
    return _reap(procs)


def _exit_code(code: int) -> int:
    """A gateway stopped by the signal passed on before it had installed its handlers
    (still starting) stopped as asked: SIGTERM is a clean stop, Ctrl-C the usual 130."""
    return {-signal.SIGTERM: 0, -signal.SIGINT: 130}.get(code, code)


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            # Our own gateway on this machine, maybe with a self-signed --tls-cert; the
            # probe carries no credential.
            if httpx.get(url, timeout=1, verify=False).status_code == 200:  # noqa: S501
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _reap(procs: list[subprocess.Popen[bytes]]) -> int:
    """Wait for every gateway (killing one that outlives STOP_TIMEOUT_S); the worst code."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    codes = []
    for proc in procs:
        try:
            codes.append(_exit_code(proc.wait(max(0.1, deadline - time.monotonic()))))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return max(codes, default=0, key=abs)
