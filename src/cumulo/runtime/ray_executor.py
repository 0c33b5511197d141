"""The Ray executor (`cumulo up --executor ray://HOST:PORT`): workers on every node of a
Ray cluster, each node's zygotes and sandbox hosted by one cumulo agent (node_agent.py)
that a Ray actor pinned to the node starts (ray_actor.py).

Ray places the agents and reports the nodes; requests never travel through Ray: the
gateway holds one TCP connection to each agent (node_wire.py), so a warm invoke costs one
round trip, and a node that dies closes it, which fails its in-flight requests with 502
`node_lost` at once instead of after Ray's health checks (20-55 s by default). A frame that
reached a lost node is never sent again (it may have run); async jobs retry under their
`max_attempts` like any 502. Nodes that join are found by a watcher every
NODE_SCAN_INTERVAL_S and receive work without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from cumulo.errors import ApiError, BadRequest, ConfigError, Unavailable
from cumulo.runtime.node_agent import settings_to_wire
from cumulo.runtime.node_wire import (
    PROTOCOL_VERSION,
    error_from_wire,
    error_to_wire,
    pack,
    read_frame,
    spec_to_wire,
)
from cumulo.runtime.pool import Clock, InvokeResult, LogSink, RpcHandler, StreamEnd, VersionPool
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.timings import Timings
from cumulo.runtime.ws_session import WsSession
from cumulo.tasks import TaskSet, cancel_and_wait

log = logging.getLogger("cumulo.ray")
NODE_SCAN_INTERVAL_S = 1.0
CONNECT_TIMEOUT_S = 10.0
AGENT_START_TIMEOUT_S = 60.0
SHA_RE = re.compile(r"[0-9a-f]{64}")


def parse_executor(value: str) -> str | None:
    """`local` → None; `ray` → "auto"; `ray://HOST:PORT` → itself. ConfigError otherwise."""
    if value == "local":
        return None
    if value == "ray":
        return "auto"
    if re.fullmatch(r"ray://[A-Za-z0-9.\-\[\]:]+:\d{1,5}", value):
        return value
    raise ConfigError(f"--executor must be local, ray or ray://HOST:PORT, not {value!r}")


def join_ray_cluster(address: str) -> None:
    """Connect this process to the cluster as a Ray driver (once; later calls return at
    once). ConfigError, one line, when Ray is missing or the cluster cannot be reached."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--executor ray needs Ray: pip install 'cumulo[ray]'") from exc
    if ray.is_initialized():
        return
    gcs = address.removeprefix("ray://")
    local_ip: dict[str, str] = {}
    if gcs != "auto":
        host, _, port = gcs.rpartition(":")
        try:
            probe = socket.create_connection((host.strip("[]"), int(port)), timeout=3)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"cannot reach the Ray cluster at {gcs}: {reason}") from exc
        # This machine's address on the route to the head (loopback for a local cluster):
        # Ray would otherwise pick the first interface's, which the cluster may not know.
        with probe:
            local_ip["_node_ip_address"] = str(probe.getsockname()[0])
    try:
        ray.init(
            address=gcs,
            **local_ip,  # type: ignore[arg-type]
            namespace="cumulo",
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot join the Ray cluster at {gcs}: {first}") from exc


class RemoteStream:
    """A streamed response's body arriving from a node, chunk by chunk."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | StreamEnd] = asyncio.Queue()

    def __aiter__(self) -> RemoteStream:
        return self

    async def __anext__(self) -> bytes:
        item = await self.queue.get()
        if isinstance(item, StreamEnd):
            raise StopAsyncIteration
        return item


@dataclass
class _Call:
    future: asyncio.Future[InvokeResult]
    frame: dict[str, Any]
    stream: RemoteStream | None = None


@dataclass
class AgentLink:
    """The gateway's connection to one node's agent."""

    node_id: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    executor: RayExecutor
    actor: Any = None
    calls: dict[int, _Call] = field(default_factory=dict)
    specs: dict[tuple[str, str, int], VersionSpec] = field(default_factory=dict)
    described: dict[int, asyncio.Future[list[dict[str, Any]]]] = field(default_factory=dict)
    warm: set[tuple[str, str, int]] = field(default_factory=set)
    alive: bool = True
    tasks: TaskSet = field(default_factory=TaskSet)
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def send(self, message: dict[str, Any]) -> None:
        if self.alive and not self.writer.is_closing():
            self.writer.write(pack(message))

    async def invoke(self, spec: VersionSpec, frame: dict[str, Any]) -> InvokeResult:
        n = next(self.numbers)
        call = _Call(asyncio.get_running_loop().create_future(), frame)
        self.calls[n] = call
        self.specs[spec.key] = spec
        try:
            self.send({"t": "inv", "n": n, "spec": spec_to_wire(spec), "f": frame})
            await self.writer.drain()
            result = await call.future
        except (OSError, ConnectionError) as exc:
            raise self.lost() from exc
        finally:
            if call.stream is None:
                self.calls.pop(n, None)
        self.warm.add(spec.key)
        return result

    def lost(self) -> ApiError:
        return ApiError(
            f"the node {self.node_id[:12]} running this invocation was lost",
            code="node_lost",
            status=502,
        )

    async def describe(self, namespace: str, function: str) -> list[dict[str, Any]]:
        n = next(self.numbers)
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self.described[n] = future
        try:
            self.send({"t": "dsc", "n": n, "ns": namespace, "fn": function})
            return await asyncio.wait_for(future, 2.0)
        except (TimeoutError, ApiError):
            return []
        finally:
            self.described.pop(n, None)

    async def serve(self) -> None:
        try:
            while (message := await read_frame(self.reader)) is not None:
                self.dispatch(message)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log.info("node %s: connection lost: %s", self.node_id[:12], exc)
        finally:
            self.close()

    def close(self) -> None:
        """The node is gone: every call still waiting on it fails with 502 node_lost."""
        if not self.alive:
            return
        self.alive = False
        self.writer.close()
        for call in self.calls.values():
            if not call.future.done():
                call.future.set_exception(self.lost())
            if call.stream is not None:
                call.stream.queue.put_nowait(StreamEnd("node_lost"))
        self.calls.clear()
        for waiting in self.described.values():
            if not waiting.done():
                waiting.set_result([])
        self.executor.node_lost(self)

    def dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "res":
            call = self.calls.get(int(message.get("n", -1)))
            if call is None or call.future.done():
                return
            http = message.get("http")
            streamed = bool(message.get("s"))
            if streamed:
                call.stream = RemoteStream()
            result = InvokeResult(
                body=message.get("body"),
                http=(int(http[0]), http[1], bytes(http[2])) if http else None,
                cold=bool(message.get("cold")),
                worker_pid=int(message.get("pid") or 0),
                stream=call.stream,  # type: ignore[arg-type]  # iterated like ResponseStream
            )
            if message.get("u") is not None:
                call.frame["usage"] = message["u"]  # metered like a local worker's
            call.future.set_result(result)
            if not streamed:
                self.calls.pop(int(message["n"]), None)
        elif kind == "chk" or kind == "end":
            call = self.calls.get(int(message.get("n", -1)))
            if call is None or call.stream is None:
                return
            if kind == "chk":
                call.stream.queue.put_nowait(bytes(message.get("d", b"")))
            else:
                error = message.get("e")
                call.stream.queue.put_nowait(StreamEnd(str(error) if error else None))
                self.calls.pop(int(message["n"]), None)
        elif kind == "err":
            call = self.calls.pop(int(message.get("n", -1)), None)
            if call is not None and not call.future.done():
                call.future.set_exception(error_from_wire(message.get("e")))
        elif kind == "rpc":
            self.tasks.spawn(self._rpc(message))
        elif kind == "log":
            spec = self.specs.get(_key(message.get("k")))
            if spec is not None:
                self.executor.log_sink(
                    spec, str(message.get("i")), str(message.get("lv")), str(message.get("m")),
                    dict(message.get("fl") or {}), float(message.get("ts") or time.time()),
                )  # fmt: skip
        elif kind == "bnq":
            self.send_bundle(str(message.get("sha")))
        elif kind == "dsr":
            waiting = self.described.get(int(message.get("n", -1)))
            if waiting is not None and not waiting.done():
                waiting.set_result(list(message.get("pools") or []))

    async def _rpc(self, message: dict[str, Any]) -> None:
        rid = message.get("rid")
        spec = self.specs.get(_key(message.get("k")))
        try:
            if spec is None:
                raise BadRequest("rpc for a version this gateway never sent", code="node_protocol")
            args = message.get("a")
            if not isinstance(args, dict):
                raise BadRequest("rpc arguments must be a map", code="node_protocol")
            value = await self.executor.rpc(
                spec, str(message.get("i")), str(message.get("op")), args
            )
            self.send({"t": "rpr", "rid": rid, "ok": True, "v": value})
        except ApiError as exc:
            self.send({"t": "rpr", "rid": rid, "ok": False, "e": error_to_wire(exc)})

    def send_bundle(self, sha: str) -> None:
        """Only bundles of versions sent on this link, so an agent can read nothing else."""
        known = {spec.code_dir.name: spec for spec in self.specs.values()}
        if not SHA_RE.fullmatch(sha) or sha not in known:
            self.send({"t": "bun", "sha": sha, "e": {"status": 502, "code": "bundle_missing",
                                                     "message": f"no bundle {sha}"}})  # fmt: skip
            return
        archive = known[sha].code_dir.parent.parent / "bundles" / f"{sha}.tar.gz"
        try:
            data = archive.read_bytes()
        except OSError:
            self.send({"t": "bun", "sha": sha, "e": {"status": 502, "code": "bundle_missing",
                       "message": f"bundle {sha} is not on this gateway's disk"}})  # fmt: skip
            return
        self.send({"t": "bun", "sha": sha, "d": data})


def _key(raw: Any) -> tuple[str, str, int]:
    if not isinstance(raw, list | tuple) or len(raw) != 3:
        return ("", "", -1)
    return (str(raw[0]), str(raw[1]), int(raw[2]))


class RayExecutor:
    """The executor seam's second implementation (the local one: executor.py)."""

    def __init__(
        self,
        settings: RuntimeSettings,
        rpc: RpcHandler,
        log_sink: LogSink,
        address: str,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.rpc = rpc
        self.log_sink = log_sink
        self.address = address
        self._clock = clock
        # No local pools: every worker is on a node (the metrics and dashboard read these).
        self.pools: dict[tuple[str, str, int], VersionPool] = {}
        self.links: dict[str, AgentLink] = {}
        self._token = secrets.token_urlsafe(32)
        self._actors: dict[str, Any] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._starting: set[str] = set()
        # A head reached over loopback: the whole cluster is this machine, and the agents
        # listen on loopback only (Ray may name the nodes by another interface's address).
        host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
        self._local = host in ("127.0.0.1", "::1", "localhost")
        self._starts = TaskSet()
        self._ray: Any = None
        self.head_reachable = True

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await asyncio.to_thread(self._init_ray)
        await self.scan()
        if not self.links:
            raise ConfigError(
                f"the Ray cluster at {self.address} has no node a cumulo agent runs on"
            )
        self._watcher = asyncio.get_running_loop().create_task(self._watch_nodes())

    def _init_ray(self) -> None:
        join_ray_cluster(self.address)
        import ray

        self._ray = ray

    async def stop(self) -> None:
        await cancel_and_wait(self._watcher)
        await self._starts.cancel_all()
        for link in list(self.links.values()):
            link.close()
        if self._ray is not None:
            ray = self._ray
            for actor in self._actors.values():
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            await asyncio.to_thread(ray.shutdown)

    # ------------------------------------------------------------ nodes
    async def scan(self) -> None:
        """Start an agent on every alive node that has none. Each start runs on its own,
        so a node that Ray still lists but that died (its health checks not yet failed)
        holds up no other."""
        try:
            nodes = await asyncio.to_thread(self._ray.nodes)
            self.head_reachable = True
        except Exception as exc:  # any failure reaching the head is one
            self.head_reachable = False
            log.warning("the Ray head is unreachable: %s", exc)
            return
        alive = {
            str(n["NodeID"]): "127.0.0.1" if self._local else str(n["NodeManagerAddress"])
            for n in nodes
            if n.get("Alive")
        }
        starts = [
            self._starts.spawn(self._start_agent_logged(node_id, host))
            for node_id, host in sorted(alive.items())
            if node_id not in self.links and node_id not in self._starting
        ]
        if starts and not self.links:
            await asyncio.wait(starts)  # at start: wait for the first nodes

    async def _start_agent_logged(self, node_id: str, host: str) -> None:
        self._starting.add(node_id)
        try:
            await asyncio.wait_for(self._start_agent(node_id, host), AGENT_START_TIMEOUT_S)
        except Exception as exc:  # a node that cannot host an agent stays out
            log.warning("node %s: no agent: %s", node_id[:12], exc)
        finally:
            self._starting.discard(node_id)

    async def _start_agent(self, node_id: str, host: str) -> None:
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from cumulo.runtime.ray_actor import NodeAgentActor

        old = self._actors.pop(node_id, None)
        if old is not None:
            with contextlib.suppress(Exception):
                ray.kill(old)
        remote_class = ray.remote(num_cpus=0, max_restarts=0)(NodeAgentActor)
        actor = remote_class.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        ).remote()
        self._actors[node_id] = actor
        ref = actor.start.remote(self._token, host, settings_to_wire(self.settings))
        host, port, _ = await asyncio.wrap_future(ref.future())
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), CONNECT_TIMEOUT_S
        )
        writer.write(pack({"t": "hi", "v": PROTOCOL_VERSION, "token": self._token}))
        hello = await asyncio.wait_for(read_frame(reader), CONNECT_TIMEOUT_S)
        if not hello or hello.get("t") != "hi":
            writer.close()
            raise ConnectionError("the agent refused the handshake")
        link = AgentLink(node_id, reader, writer, self, actor)
        self.links[node_id] = link
        link.tasks.spawn(link.serve())
        log.info("node %s: agent at %s:%d", node_id[:12], host, port)

    def node_lost(self, link: AgentLink) -> None:
        if self.links.get(link.node_id) is link:
            del self.links[link.node_id]
        log.warning("node %s lost: its requests failed with node_lost", link.node_id[:12])

    async def _watch_nodes(self) -> None:
        while True:
            await asyncio.sleep(NODE_SCAN_INTERVAL_S)
            await self.scan()

    def ready(self) -> bool:
        return self.head_reachable and bool(self.links)

    # ------------------------------------------------------------ invocations
    def _pick(self, spec: VersionSpec) -> AgentLink:
        """The node with the fewest calls in flight; a node with this version warm first."""
        live = [link for link in self.links.values() if link.alive]
        if not live:
            raise Unavailable(
                "no node of the Ray cluster is reachable", code="executor_unavailable"
            )
        return min(live, key=lambda link: (len(link.calls), spec.key not in link.warm))

    async def invoke(
        self, spec: VersionSpec, frame: dict[str, Any], timings: Timings | None = None
    ) -> InvokeResult:
        return await self._pick(spec).invoke(spec, frame)

    async def connect(self, spec: VersionSpec, frame: dict[str, Any]) -> WsSession:
        raise ApiError(
            "WebSockets run on the local executor only (not yet on Ray)",
            code="not_on_this_executor",
            status=501,
        )

    def prewarm(self, spec: VersionSpec) -> None:
        """min_instances on Ray: not placed ahead of traffic yet (the first call starts it)."""

    def prewarm_floor(self, spec: VersionSpec, workers: int, hold_s: float) -> int:
        return 0

    async def retire(self, namespace: str, function: str, keep: set[int] | None = None) -> None:
        for link in list(self.links.values()):
            link.send({"t": "ret", "ns": namespace, "fn": function,
                       "keep": sorted(keep) if keep is not None else None})  # fmt: skip
            link.warm = {
                key for key in link.warm
                if not (key[0] == namespace and key[1] == function
                        and (keep is None or key[2] not in keep))
            }  # fmt: skip

    def tick(self) -> None:
        """The agents reap their own pools."""

    async def describe_workers(self, namespace: str, function: str) -> list[dict[str, Any]]:
        """Every node's pools of the function, each marked with its node."""
        found: list[dict[str, Any]] = []
        for link in list(self.links.values()):
            for pool in await link.describe(namespace, function):
                found.append({**pool, "node": link.node_id})
        return found

    def describe(self, namespace: str, function: str) -> list[dict[str, Any]]:
        """What is known here without asking the nodes: which nodes hold it warm."""
        return [
            {"node": link.node_id, "version": key[2], "warm": True}
            for link in self.links.values()
            for key in sorted(link.warm)
            if key[0] == namespace and key[1] == function
        ]
