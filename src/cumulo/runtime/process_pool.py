"""One version's pool of a process function (any language): instances of its command.

Each instance is the command (e.g. `node server.js`) serving HTTP on `$PORT`, started by
`process_launch.py` inside the zygote's sandbox, reached through a Unix socket in a
directory shared with that sandbox. Started on demand (a cold start is the command's own
start-up), up to `max_instances`, `concurrency` invocations each, stopped after the idle
window (scale to zero). Each invocation is proxied over HTTP with the function's timeout
(504, and the instance is killed) and the response size limit (413); a connection the
instance drops is a 502, and an instance that exited is replaced on the next call.

The pool is a VersionPool for everyone else (executor, metrics, control plane): only
dispatch, scaling and description differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import httpx

from cumulo import fds
from cumulo.errors import (
    ApiError,
    FunctionCrashed,
    FunctionTimeout,
    PayloadTooLarge,
    TooManyRequests,
)
from cumulo.runtime import cgroups, sandbox
from cumulo.runtime.pool import (
    EXIT_REPORT_WAIT_S,
    Clock,
    InvokeResult,
    LogSink,
    RpcHandler,
    VersionPool,
    _within,
    scale_up_count,
)
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spares import base_env
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.timings import Timings
from cumulo.tasks import TaskSet

MB = 1024 * 1024
# Not forwarded to the instance: connection-level headers, and what httpx sets itself.
SKIP_REQUEST_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "te",
        "trailer",
        "host",
        "proxy-authorization",
    }
)
Waiter = asyncio.Future[tuple["ProcessInstance", bool]]


def _free_port() -> int:
    # Inside its own network namespace any port would do; with the host's (network=true,
    # or no bubblewrap) it must be free there.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code}"
    if code > 128:
        return f"was killed by signal {code - 128}"
    return f"exited with code {code}"


class ProcessInstance:
    def __init__(
        self, proc: fds.Child, sock_dir: Path, uid: int | None, output: fds.Output
    ) -> None:
        self.proc = proc
        self.output = output
        self.pid = proc.pid
        self.sock_dir = sock_dir
        self.uid = uid
        # httpx (with the click, rich and pygments it pulls in: ~7 MB) loads only once a
        # process function runs, not in every gateway.
        import httpx

        # httpx logs every request line at INFO: a client's query string (tokens, personal
        # data) does not belong in the platform's log.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.client: httpx.AsyncClient = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(sock_dir / "http.sock")),
            base_url="http://function",
            # The pool bounds each call by the function's timeout instead.
            timeout=None,  # noqa: S113 - bounded by asyncio.timeout in _forward
        )
        self.load = 0
        self.served = 0
        self.started_at = time.time()
        self.last_used = 0.0
        self.alive = True
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.group: cgroups.Group | None = None  # its whole tree's limits (cgroups.py)

    def kill(self) -> None:
        self.alive = False
        # The launcher's group: bwrap (whose pid namespace dies with it) or the launcher.
        self.proc.killpg()

    async def exit_detail(self) -> str:
        try:
            code = await asyncio.wait_for(asyncio.shield(self.exited), EXIT_REPORT_WAIT_S)
        except TimeoutError:
            return "closed the connection"
        return _describe_exit(code)

    async def cleanup(self) -> None:
        await self.client.aclose()
        shutil.rmtree(self.sock_dir, ignore_errors=True)
        if self.uid is not None:
            sandbox.uids.release(self.uid)
            self.uid = None
        if cgroups.current is not None:
            cgroups.current.release(self.group)

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "state": "busy" if self.load else "idle",
            "inflight": self.load,
            "served": self.served,
            "started_at": self.started_at,
            "last_used": self.last_used,
        }


class ProcessPool(VersionPool):
    def __init__(
        self,
        spec: VersionSpec,
        settings: RuntimeSettings,
        rpc: RpcHandler,
        log_sink: LogSink,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(spec, settings, rpc, log_sink, clock)
        self.instances: list[ProcessInstance] = []
        self.queue: deque[Waiter] = deque()
        self._tasks = TaskSet()

    # ----------------------------------------------------------------- dispatch
    async def invoke(self, frame: dict[str, Any], timings: Timings | None = None) -> InvokeResult:
        # `timings` (tracing) breaks a worker's time down; an instance reports nothing.
        instance, cold = await self._take()
        try:
            return await self._forward(instance, frame, cold)
        finally:
            instance.load -= 1
            instance.served += 1
            instance.last_used = self._clock()
            if instance.alive:
                self._hand(instance, cold=False)

    async def _forward(
        self, instance: ProcessInstance, frame: dict[str, Any], cold: bool
    ) -> InvokeResult:
        import httpx  # loaded by the instance already: a dict lookup

        method, path, headers, query_string, body = frame["http"]
        url = f"{path}?{query_string}" if query_string else path
        pairs = [(k, v) for k, v in headers if k.lower() not in SKIP_REQUEST_HEADERS]
        pairs.append(("x-cumulo-invocation-id", frame["id"]))
        timeout = self.config.timeout_s
        limit = self.settings.max_response_bytes
        try:
            async with (
                asyncio.timeout(timeout),
                instance.client.stream(method, url, headers=pairs, content=body) as response,
            ):
                chunks: list[bytes] = []
                size = 0
                # Raw: a compressed body stays compressed, with its content-encoding.
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(
                            f"the response exceeds the {limit}-byte limit",
                            code="response_too_large",
                        )
                    chunks.append(chunk)
                out = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in response.headers.raw]
                return InvokeResult(
                    body=None,
                    http=(response.status_code, out, b"".join(chunks)),
                    cold=cold,
                    worker_pid=instance.pid,
                )
        except TimeoutError:
            self._remove(instance)
            raise FunctionTimeout(
                f"{self.spec.function} timed out after {timeout:g}s", code="function_timeout"
            ) from None
        except httpx.HTTPError:
            detail = await instance.exit_detail()
            raise FunctionCrashed(
                f"the process running {self.spec.function} {detail}", code="function_crashed"
            ) from None

    async def _take(self) -> tuple[ProcessInstance, bool]:
        for instance in self.instances:
            if instance.alive and instance.load < self.config.concurrency:
                instance.load += 1
                return instance, False
        if len(self.queue) >= self.settings.queue_size:
            raise TooManyRequests(
                f"{self.spec.function} has {len(self.queue)} requests waiting; try again shortly",
                code="queue_full",
            )
        fut: Waiter = asyncio.get_running_loop().create_future()
        self.queue.append(fut)
        self._scale_up()
        try:
            return await _within(fut, self._queue_wait_s())
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                instance, _ = fut.result()
                instance.load -= 1
                self._hand(instance, cold=False)
            raise
        except TimeoutError:
            raise TooManyRequests(
                f"no instance of {self.spec.function} became free within "
                f"{self.config.timeout_s:g}s",
                code="queue_timeout",
            ) from None
        finally:
            if fut in self.queue:
                self.queue.remove(fut)

    def _queue_wait_s(self) -> float:
        """How long a call waits for a free instance (container_pool.py adds its start)."""
        return self.config.timeout_s

    def _hand(self, instance: ProcessInstance, *, cold: bool) -> None:
        """Free slots of `instance` go to the longest waiters."""
        handed = 0
        while self.queue and instance.alive and instance.load < self.config.concurrency:
            fut = self.queue.popleft()
            if not fut.done():
                instance.load += 1
                fut.set_result((instance, cold))
                handed += 1
        if cold and handed:
            self.cold_starts += 1

    def _fail_queue(self, exc: ApiError) -> None:
        if self.instances or self.starting:
            return  # something else may still serve them
        while self.queue:
            fut = self.queue.popleft()
            if not fut.done():
                fut.set_exception(exc)

    # ----------------------------------------------------------------- scaling
    @property
    def inflight(self) -> int:
        return sum(i.load for i in self.instances)

    def _scale_up(self) -> None:
        count = scale_up_count(
            demand=self.inflight + len(self.queue),
            workers=len(self.instances),
            starting=self.starting,
            concurrency=self.config.concurrency,
            max_instances=self.config.max_instances,
        )
        for _ in range(count):
            self._start_worker()

    def _start_worker(self) -> None:
        self.starting += 1
        self._tasks.spawn(self._spawn())

    async def _spawn(self) -> None:
        try:
            instance = await self._launch()
        except ApiError as exc:
            self.starting -= 1
            self._fail_queue(exc)
            return
        except Exception as exc:
            self.starting -= 1
            self._fail_queue(
                FunctionCrashed(f"could not start {self.spec.function}: {exc}", code="start_failed")
            )
            return
        self.starting -= 1
        if self.closed:
            instance.kill()
            return
        instance.last_used = self._clock()
        self.instances.append(instance)
        self._hand(instance, cold=True)

    async def _launch(self) -> ProcessInstance:
        settings, spec = self.settings, self.spec
        status = sandbox.status(settings)
        if settings.isolation == "strict" and not status.sandboxed:
            raise FunctionCrashed(
                f"the sandbox is unavailable ({status.reason}) and isolation is strict",
                code="sandbox_unavailable",
            )
        memory = max(spec.config.memory_mb, 16) * MB
        uid = sandbox.uids.acquire() if status.drop_uid else None
        # Holds the relay's socket: bound into the sandbox, writable by the instance's uid.
        sock_dir = Path(tempfile.mkdtemp(prefix="cumulo-proc-"))
        if uid is not None:
            os.chown(sock_dir, uid, uid)
        env = base_env(str(spec.code_dir))
        env.update(spec.config.env)
        launch = {
            "parent": 0 if status.sandboxed else os.getpid(),
            "command": list(spec.command),
            "code_dir": str(spec.code_dir),
            "config": spec.config.to_dict(),
            "uid": uid,
            "sandboxed": status.sandboxed,
            "seccomp": status.seccomp,
            "fsize_bytes": memory,
            "port": _free_port(),
            "socket": str(sock_dir / "http.sock"),
            "env": env,
        }
        ready_r, ready_w = os.pipe()
        spec_r, spec_w = os.pipe()
        argv = [settings.python, "-m", "cumulo.runtime.process_launch", str(ready_w)]
        if status.bwrap is not None:
            argv = [
                *sandbox.bwrap_argv(
                    status.bwrap,
                    settings,
                    spec.code_dir,
                    network=spec.config.network,
                    tmp_bytes=memory,
                    drop_uid=status.drop_uid,
                    rw_paths=(sock_dir,),
                ),
                *argv,
            ]
        # The command's stdout/stderr (the launcher passes its own on): the function's logs.
        output = fds.Output(self.handle_output)
        group = None
        try:
            if cgroups.current is not None:
                config = spec.config
                group = cgroups.current.new_group(
                    "p",
                    cgroups.instance_limits(
                        config.memory_mb, config.concurrency, settings.max_pids
                    ),
                )
                if group is not None:
                    argv = group.wrap(argv)  # in its group from the first instruction
            proc = fds.spawn(
                argv,
                keep=[ready_w],
                stdin=spec_r,
                # The launcher's own: the function's env reaches only the command.
                env=base_env(str(spec.code_dir)),
                cwd=str(spec.code_dir),
                stdout=output.child_fds[0],
                stderr=output.child_fds[1],
            )
        except BaseException:
            os.close(ready_r)
            os.close(spec_w)
            output.close()
            shutil.rmtree(sock_dir, ignore_errors=True)
            if uid is not None:
                sandbox.uids.release(uid)
            if cgroups.current is not None:
                cgroups.current.release(group)
            raise
        finally:
            os.close(ready_w)
            os.close(spec_r)
        output.start()
        instance = ProcessInstance(proc, sock_dir, uid, output)
        instance.group = group
        self._tasks.spawn(self._watch(instance))
        try:
            await _write_all(spec_w, orjson.dumps(launch))
            line = await asyncio.wait_for(_read_line(ready_r), settings.zygote_start_timeout_s)
        except TimeoutError:
            instance.kill()
            raise FunctionCrashed(
                f"{spec.function} did not listen on $PORT within "
                f"{settings.zygote_start_timeout_s:.0f}s",
                code="start_timeout",
            ) from None
        except BaseException:
            instance.kill()
            raise
        if line != b"ready\n":
            code = await instance.exited
            raise FunctionCrashed(
                f"the command of {spec.function} {_describe_exit(code)} before it listened "
                "on $PORT",
                code="start_failed",
            )
        return instance

    async def _watch(self, instance: ProcessInstance) -> None:
        code = await instance.proc.wait()
        instance.alive = False
        instance.exited.set_result(code)
        with contextlib.suppress(ValueError):
            self.instances.remove(instance)
        await instance.cleanup()
        if self.queue and not self.closed:
            self._scale_up()

    def _remove(self, instance: ProcessInstance) -> None:
        with contextlib.suppress(ValueError):
            self.instances.remove(instance)
        instance.kill()

    def tick(self) -> None:
        """Stop instances idle past the window (scale to zero); keep min_instances."""
        if self.closed:
            return
        now = self._clock()
        keep = 0 if self.draining else self.config.min_instances
        removable = len(self.instances) - keep
        idle = [i for i in self.instances if not i.load and not self.queue]
        for instance in sorted(idle, key=lambda i: i.last_used):
            if removable <= 0:
                break
            if now - instance.last_used >= self.settings.idle_timeout_s:
                self._remove(instance)
                removable -= 1
        for _ in range(max(0, keep - len(self.instances) - self.starting)):
            self._start_worker()

    @property
    def is_idle(self) -> bool:
        return not self.instances and not self.starting and not self.queue

    async def close(self) -> None:
        self.closed = True
        while self.queue:
            fut = self.queue.popleft()
            if not fut.done():
                fut.set_exception(FunctionCrashed("the platform is shutting down", code="shutdown"))
        instances, self.instances = self.instances, []
        for instance in instances:
            instance.kill()
        for task in self._tasks.pending():
            with contextlib.suppress(BaseException):
                await task

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.spec.version,
            "kind": "process",
            "pid": None,
            "prestarted_at": None,
            "starting": self.starting,
            "queued": len(self.queue),
            "workers": [i.describe() for i in self.instances if i.alive],
        }


async def _write_all(fd: int, data: bytes) -> None:
    """Write `data` to a pipe and close it, without blocking the loop (the launch spec)."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(fd, "wb", buffering=0))
    try:
        transport.write(data)
    finally:
        transport.close()


async def _read_line(fd: int) -> bytes:
    """One line from a pipe, without blocking the loop (the launcher's `ready`)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return await reader.readline()
    finally:
        transport.close()
