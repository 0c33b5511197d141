"""The cumulo node agent: one process per Ray node that hosts that node's zygotes, workers
and sandbox with the local executor, serving gateways over TCP (runtime/node_wire.py).

Started by the node's Ray actor (runtime/ray_actor.py) as `python -m cumulo.runtime.node_agent`
with its configuration as one JSON line on stdin — the gateways' token never appears in
argv or the environment, where other processes on the node could read it. It prints
`PORT <n>` once it listens, and dies with the actor (PR_SET_PDEATHSIG), so a node whose
raylet is killed drops every gateway's connection: the gateways' signal that it is lost.

Bundles arrive by content hash: an agent missing one asks the gateway that sent the
invocation, and refuses (502 bundle_corrupt) an archive whose SHA-256 is not its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import json
import logging
import re
import signal
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from cumulo.control.bundle import BundleStore, digest
from cumulo.errors import ApiError, BadRequest
from cumulo.runtime.executor import LocalExecutor
from cumulo.runtime.loader import KIND_CONTAINER, KIND_PROCESS
from cumulo.runtime.node_wire import (
    PROTOCOL_VERSION,
    error_from_wire,
    error_to_wire,
    pack,
    read_frame,
    spec_from_wire,
)
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spec import VersionSpec
from cumulo.tasks import TaskSet

log = logging.getLogger("cumulo.node_agent")
SHA_RE = re.compile(r"[0-9a-f]{64}")
PR_SET_PDEATHSIG = 1
# Settings a gateway may not set for a node: its own paths and interpreter.
LOCAL_SETTINGS = frozenset({"data_dir", "python"})
# How long an agent waits for a gateway to send a bundle it asked for.
BUNDLE_WAIT_S = 30.0


def settings_from_wire(data: dict[str, Any], data_dir: Path) -> RuntimeSettings:
    known = {f.name for f in fields(RuntimeSettings)} - LOCAL_SETTINGS
    chosen = {k: v for k, v in data.items() if k in known}
    return RuntimeSettings(**chosen, data_dir=data_dir)


def settings_to_wire(settings: RuntimeSettings) -> dict[str, Any]:
    return {
        f.name: getattr(settings, f.name)
        for f in fields(RuntimeSettings)
        if f.name not in LOCAL_SETTINGS
        and isinstance(getattr(settings, f.name), str | int | float | bool)
    }


class GatewayLink:
    """One gateway's connection: its invocations, and the rpcs and bundles they need."""

    def __init__(
        self, agent: NodeAgent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.agent = agent
        self.reader = reader
        self.writer = writer
        self.tasks = TaskSet()
        self._rids = 0
        self.rpcs: dict[int, asyncio.Future[Any]] = {}
        self.bundles: dict[str, asyncio.Future[bytes]] = {}

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(pack(message))

    async def rpc(self, spec: VersionSpec, invocation_id: str, op: str, args: Any) -> Any:
        self._rids += 1
        rid = self._rids
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.rpcs[rid] = future
        try:
            self.send({"t": "rpc", "rid": rid, "k": list(spec.key), "i": invocation_id,
                       "op": op, "a": args})  # fmt: skip
            return await future
        finally:
            self.rpcs.pop(rid, None)

    async def bundle(self, sha: str) -> bytes:
        future = self.bundles.get(sha)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self.bundles[sha] = future
            self.send({"t": "bnq", "sha": sha})
        try:
            return await asyncio.wait_for(asyncio.shield(future), BUNDLE_WAIT_S)
        finally:
            if future.done():
                self.bundles.pop(sha, None)

    async def serve(self) -> None:
        try:
            while (message := await read_frame(self.reader)) is not None:
                self.dispatch(message)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log.info("gateway link closed: %s", exc)
        finally:
            lost = ApiError("the gateway went away", code="gateway_lost", status=502)
            for future in [*self.rpcs.values(), *self.bundles.values()]:
                if not future.done():
                    future.set_exception(lost)
            await self.tasks.cancel_all()
            self.writer.close()

    def dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "inv":
            self.tasks.spawn(self.agent.invoke(self, message))
        elif kind == "rpr":
            future = self.rpcs.get(int(message.get("rid", -1)))
            if future is not None and not future.done():
                if message.get("ok"):
                    future.set_result(message.get("v"))
                else:
                    future.set_exception(error_from_wire(message.get("e")))
        elif kind == "bun":
            waiting = self.bundles.get(str(message.get("sha")))
            if waiting is not None and not waiting.done():
                if "d" in message:
                    waiting.set_result(bytes(message["d"]))
                else:
                    waiting.set_exception(error_from_wire(message.get("e")))
        elif kind == "ret":
            keep = message.get("keep")
            self.tasks.spawn(
                self.agent.executor.retire(
                    str(message["ns"]), str(message["fn"]), set(keep) if keep is not None else None
                )
            )
        elif kind == "dsc":
            pools = self.agent.executor.describe(str(message["ns"]), str(message["fn"]))
            self.send({"t": "dsr", "n": message.get("n"), "pools": pools})


class NodeAgent:
    def __init__(self, token: str, settings: RuntimeSettings, node_id: str) -> None:
        self.token = token
        self.node_id = node_id
        assert settings.data_dir is not None
        self.bundles = BundleStore(settings.data_dir)
        # Invocation id → the link it came on: a worker's rpc and logs go back there.
        self.owners: dict[str, GatewayLink] = {}
        self.executor = LocalExecutor(settings, self._rpc, self._log)
        self._sha_locks: dict[str, asyncio.Lock] = {}

    async def _rpc(self, spec: VersionSpec, invocation_id: str, op: str, args: Any) -> Any:
        link = self.owners.get(invocation_id)
        if link is None:
            raise BadRequest("rpc outside an invocation", code="no_invocation")
        return await link.rpc(spec, invocation_id, op, args)

    def _log(
        self, spec: VersionSpec, invocation_id: str, level: str, message: str,
        fields_: dict[str, Any], ts: float,
    ) -> None:  # fmt: skip
        link = self.owners.get(invocation_id)
        if link is not None:
            link.send({"t": "log", "k": list(spec.key), "i": invocation_id, "lv": level,
                       "m": message, "fl": fields_, "ts": ts})  # fmt: skip

    async def code_dir(self, link: GatewayLink, sha: str) -> Path:
        """The unpacked bundle `sha`, fetched from `link`'s gateway when this node lacks it."""
        if not SHA_RE.fullmatch(sha):
            raise BadRequest(f"invalid bundle address {sha!r}", code="bundle_corrupt")
        lock = self._sha_locks.setdefault(sha, asyncio.Lock())
        async with lock:
            if self.bundles.has(sha):
                return self.bundles.ensure_unpacked(sha)
            data = await link.bundle(sha)
            if digest(data) != sha:
                log.warning("bundle %s failed verification on node %s: refused", sha, self.node_id)
                raise ApiError(
                    f"bundle {sha} failed SHA-256 verification on node {self.node_id}: "
                    "refused, not run",
                    code="bundle_corrupt",
                    status=502,
                )
            _, target = await asyncio.to_thread(self.bundles.add, data)
            return target

    async def invoke(self, link: GatewayLink, message: dict[str, Any]) -> None:
        n = message.get("n")
        frame = message.get("f")
        try:
            if not isinstance(frame, dict) or not isinstance(message.get("spec"), dict):
                raise BadRequest("malformed invocation frame", code="node_protocol")
            wire_spec = message["spec"]
            if wire_spec.get("kind") in (KIND_PROCESS, KIND_CONTAINER):
                raise ApiError(
                    "the Ray executor runs Python functions, apps and models; process and "
                    "container functions run on the local executor only",
                    code="not_on_this_executor",
                    status=501,
                )
            spec = spec_from_wire(wire_spec, await self.code_dir(link, str(wire_spec["sha"])))
            self.owners[str(frame["id"])] = link
            try:
                result = await self.executor.invoke(spec, frame)
                link.send({"t": "res", "n": n, "body": result.body, "http": result.http,
                           "cold": result.cold, "pid": result.worker_pid,
                           "u": frame.get("usage"), "s": result.stream is not None})  # fmt: skip
                if result.stream is not None:
                    try:
                        async for chunk in result.stream:
                            link.send({"t": "chk", "n": n, "d": chunk})
                            await link.writer.drain()
                        link.send({"t": "end", "n": n})
                    except ApiError as exc:
                        link.send({"t": "end", "n": n, "e": error_to_wire(exc)})
            finally:
                self.owners.pop(str(frame["id"]), None)
        except ApiError as exc:
            link.send({"t": "err", "n": n, "e": error_to_wire(exc)})
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("malformed invocation from a gateway: %r", exc)
            malformed = {"status": 502, "code": "node_protocol", "message": "malformed frame"}
            link.send({"t": "err", "n": n, "e": malformed})
        with contextlib.suppress(OSError):
            await link.writer.drain()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await asyncio.wait_for(read_frame(reader), 10)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            writer.close()
            return
        token = str((hello or {}).get("token", ""))
        if (
            hello is None
            or hello.get("t") != "hi"
            or hello.get("v") != PROTOCOL_VERSION
            or not hmac.compare_digest(token.encode(), self.token.encode())
        ):
            log.warning("refused a connection without the gateways' token")
            writer.close()
            return
        writer.write(pack({"t": "hi", "v": PROTOCOL_VERSION, "node": self.node_id}))
        await GatewayLink(self, reader, writer).serve()


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def _main(config: dict[str, Any]) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cumulo-node-"))  # mkdtemp: mode 0700
    settings = settings_from_wire(config.get("settings", {}), data_dir)
    agent = NodeAgent(str(config["token"]), settings, str(config.get("node", "")))
    await agent.executor.start()
    server = await asyncio.start_server(agent.accept, str(config.get("host", "127.0.0.1")), 0)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await agent.executor.stop()


def main() -> None:
    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    line = sys.stdin.readline()
    try:
        config = json.loads(line)
        if not isinstance(config, dict) or not isinstance(config.get("token"), str):
            raise ValueError("no token")
    except ValueError as exc:
        print(f"error: bad node agent configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    asyncio.run(_main(config))


if __name__ == "__main__":
    main()
