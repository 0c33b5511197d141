"""The Ray actor pinned to each node: it starts that node's cumulo agent process
(runtime/node_agent.py) and holds it for its life. Ray is imported by the caller
(runtime/ray_executor.py wraps this class with `ray.remote`), never by a worker.

The agent is a process of its own, not the actor's event loop, so it runs exactly as the
local executor does in a gateway (its own main thread, signals, child processes); it dies
with the actor's worker process, which Ray kills with its node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

AGENT_START_TIMEOUT_S = 60.0


class NodeAgentActor:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, token: str, host: str, settings: dict[str, Any]) -> tuple[str, int, str]:
        """Start the agent listening on `host` (the node's address as Ray reports it);
        returns (host, port, node id) where gateways connect."""
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        # Started from the actor's own thread (one sync actor method at a time, the same
        # thread for its life): PR_SET_PDEATHSIG follows the thread that forked.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cumulo.runtime.node_agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        config = {"token": token, "host": host, "node": node_id, "settings": settings}
        self.proc.stdin.write(json.dumps(config).encode() + b"\n")
        self.proc.stdin.close()
        timer = threading.Timer(AGENT_START_TIMEOUT_S, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline().decode(errors="replace").strip()
        finally:
            timer.cancel()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the cumulo node agent did not start on node {node_id}")
        return host, int(line.split()[1]), node_id

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
