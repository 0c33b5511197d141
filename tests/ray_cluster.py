"""A real Ray cluster of two nodes on this machine, on loopback, for the Ray executor's tests.

`ray start` starts a head and a second raylet as separate processes, each a node of its
own with its own CPU, exactly as an operator would. Health checks are
shortened so Ray agrees a killed node is dead within about a second; cumulo itself does not
wait for them (a node's agent connection closing is its signal).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

FAST_HEALTH_CHECKS = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 2,
    "health_check_initial_delay_ms": 0,
}


def why_unavailable() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'cumulo[ray]')"
    return None


class RayCluster:
    """`ray start --head` plus one `ray start --address …` per extra node, all on
    127.0.0.1; a node is killed by SIGKILLing its raylet (its workers exit with it)."""

    def __init__(self) -> None:
        self.gcs_port = _free_port()
        self.workers: list[int] = []  # each extra node's node-manager port
        config = json.dumps(FAST_HEALTH_CHECKS)
        _ray(
            "start", "--head", f"--port={self.gcs_port}", "--num-cpus=1",
            f"--system-config={config}", "--include-dashboard=false",
            *NODE_ARGS, f"--node-manager-port={_free_port()}",
        )  # fmt: skip

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def add_node(self) -> int:
        port = _free_port()
        _ray("start", f"--address={self.address}", "--num-cpus=1", *NODE_ARGS,
             f"--node-manager-port={port}")  # fmt: skip
        self.workers.append(port)
        return port

    def kill_node(self, node: int) -> None:
        """SIGKILL the node's raylet, as a machine that dies: its workers exit with it."""
        subprocess.run(["pkill", "-KILL", "-f", f"raylet.*--node_manager_port={node}"], check=False)
        self.workers.remove(node)

    def shutdown(self) -> None:
        _ray("stop", "--force")


NODE_ARGS = ("--node-ip-address=127.0.0.1", "--disable-usage-stats", "--min-worker-port=0",
             "--max-worker-port=0")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray(*args: str) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"ray {args[0]} failed: {done.stderr[-2000:]}")


@contextmanager
def two_node_cluster() -> Iterator[RayCluster]:
    cluster = RayCluster()
    try:
        cluster.add_node()
        yield cluster
    finally:
        cluster.shutdown()
