"""The worker: a process forked from a zygote that runs invocations one frame at a time.

With `concurrency == 1` a worker runs each invocation on its main thread and reads rpc
replies itself; with more, a reader thread dispatches invocations to a thread pool. An
ASGI app's worker reads its socket on the app's event loop instead (asgi.py).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import resource
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cumulo.runtime import lambda_events
from cumulo.runtime.asgi import AsgiRunner
from cumulo.runtime.loader import (
    KIND_ASGI,
    KIND_LAMBDA,
    KIND_MODEL,
    KIND_REQUEST,
    FoundHandler,
    user_traceback,
)
from cumulo.runtime.wire import BlockingChannel
from cumulo.sdk.context import Context
from cumulo.sdk.http import Request, Response
from cumulo.sdk.model import ModelOutputError, run_batch
from cumulo.sdk.spec import FunctionConfig

MAX_LOG_LINE = 16 * 1024


@dataclass(frozen=True, slots=True)
class WorkerMeta:
    namespace: str
    function: str
    version: int
    code_dir: Path
    config: FunctionConfig
    max_response: int


class RemoteError(Exception):
    """The gateway refused an rpc; surfaces in user code with the gateway's message."""


class WorkerTransport:
    """Context operations as rpc frames over the worker socket."""

    def __init__(self, channel: BlockingChannel, threaded: bool) -> None:
        self._channel = channel
        self._threaded = threaded
        self._send_lock = threading.Lock()
        self._rids = itertools.count(1)
        self._pending: dict[int, Future[Any]] = {}
        self._current = threading.local()
        # Frames that arrived while an inline invocation waited for an rpc reply.
        self.deferred: list[dict[str, Any]] = []

    @property
    def invocation_id(self) -> str:
        return getattr(self._current, "id", "")

    @invocation_id.setter
    def invocation_id(self, value: str) -> None:
        self._current.id = value

    def send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            self._channel.send(message)

    def send_packed(self, data: bytes) -> None:
        """Frames already packed (asgi.py writes a loop iteration's frames at once)."""
        with self._send_lock:
            self._channel.sock.sendall(data)

    def call(self, op: str, args: dict[str, Any]) -> Any:
        rid = next(self._rids)
        frame = {"t": "rpc", "rid": rid, "id": self.invocation_id, "op": op, "args": args}
        if self._threaded:
            fut: Future[Any] = Future()
            self._pending[rid] = fut
            self.send(frame)
            reply = fut.result()
        else:
            self.send(frame)
            reply = self._read_reply(rid)
        if not reply.get("ok"):
            raise RemoteError(str(reply.get("error", "rpc failed")))
        return reply.get("value")

    def _read_reply(self, rid: int) -> dict[str, Any]:
        while True:
            message = self._channel.recv()
            if message is None:
                os._exit(0)
            if message.get("t") == "rpr" and message.get("rid") == rid:
                return message
            self.deferred.append(message)

    def resolve(self, message: dict[str, Any]) -> None:
        fut = self._pending.pop(message.get("rid", -1), None)
        if fut is not None:
            fut.set_result(message)

    def log(self, level: str, message: str, fields: dict[str, Any]) -> None:
        try:
            safe_fields = orjson.loads(orjson.dumps(fields, default=str)) if fields else {}
        except (TypeError, orjson.JSONEncodeError):
            safe_fields = {"fields": repr(fields)}
        self.send(
            {
                "t": "log",
                "id": self.invocation_id,
                "level": level,
                "msg": str(message)[:MAX_LOG_LINE],
                "fields": safe_fields,
                "ts": time.time(),
            }
        )


class CapturedStream(io.TextIOBase):
    """sys.stdout / sys.stderr inside a worker: each line becomes a log frame."""

    def __init__(self, transport: WorkerTransport, level: str) -> None:
        self._transport = transport
        self._level = level
        self._buf = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        pending = getattr(self._buf, "text", "") + s
        *lines, rest = pending.split("\n")
        self._buf.text = rest
        for line in lines:
            self._transport.log(self._level, line, {})
        return len(s)

    def flush(self) -> None:
        rest = getattr(self._buf, "text", "")
        if rest:
            self._buf.text = ""
            self._transport.log(self._level, rest, {})


class Worker:
    def __init__(self, channel: BlockingChannel, handler: FoundHandler, meta: WorkerMeta) -> None:
        self.channel = channel
        self.handler = handler
        self.meta = meta
        self.asgi = handler.kind == KIND_ASGI
        self.threaded = meta.config.concurrency > 1 or self.asgi
        self.transport = WorkerTransport(channel, self.threaded)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        # The zygote's (a Lambda execution environment's) stream name, else one of our own.
        self.log_stream = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or lambda_events.log_stream(
            meta.version, time.time()
        )

    def serve(self) -> None:
        before = (sys.stdout, sys.stderr)
        sys.stdout = CapturedStream(self.transport, "stdout")
        sys.stderr = CapturedStream(self.transport, "stderr")
        _rebind_log_streams(before, (sys.stdout, sys.stderr))
        if self.handler.kind == KIND_LAMBDA:
            _lambda_logging(self.transport)
        if self.asgi:
            self._serve_app()
            return
        pool = (
            ThreadPoolExecutor(self.meta.config.concurrency, thread_name_prefix="invoke")
            if self.threaded
            else None
        )
        while True:
            deferred = self.transport.deferred
            message = deferred.pop(0) if deferred else self.channel.recv()
            if message is None:
                return
            kind = message.get("t")
            if kind == "inv":
                if pool is None:
                    self.invoke(message)
                else:
                    pool.submit(self.invoke, message)
            elif kind == "rpr":
                self.transport.resolve(message)

    def _serve_app(self) -> None:
        meta = self.meta
        runner = AsgiRunner(
            self.handler.func,
            self.transport.send_packed,
            f"/fn/{meta.namespace}/{meta.function}",
            meta.code_dir,
            meta.max_response,
        )
        runner.start()
        # The app's loop reads the socket itself (asgi.py): this thread only waits.
        runner.serve(self.channel, self.transport.resolve)

    def invoke(self, message: dict[str, Any]) -> None:
        iid = message["id"]
        self.transport.invocation_id = iid
        # A traced invocation (the gateway sent a traceparent) gets the handler's own start
        # and end back in `ts`, for its `handler` span.
        began = time.time_ns() if "tp" in message else 0
        cpu0 = time.thread_time()  # metering: the handler's CPU, reported in its reply (`u`)
        out_of_memory = False
        try:
            reply = self._run(message)
        except ResponseTooLarge as exc:
            self._send_error(iid, "payload_too_large", "ResponseTooLarge", str(exc))
        except ModelOutputError as exc:
            self._send_error(iid, "bad_model_output", "ModelOutputError", str(exc))
        except MemoryError:
            # Reported below, once the traceback (and the memory its frames hold) is gone.
            out_of_memory = True
        except BaseException as exc:
            if isinstance(exc, SystemExit):
                self._send_error(
                    iid,
                    "function_crashed",
                    "SystemExit",
                    f"the function exited ({exc.code})",
                    exiting=True,
                )
                os._exit(1)
            self._send_error(
                iid,
                "function_error",
                type(exc).__name__,
                str(exc),
                user_traceback(exc, self.meta.code_dir),
                ts=[began, time.time_ns()] if began else None,
                usage=_usage(cpu0),
            )
        else:
            if began:
                reply["ts"] = [began, time.time_ns()]
            reply["u"] = _usage(cpu0)
            self.transport.send(reply)
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        if out_of_memory:
            self._send_error(iid, "out_of_memory", "MemoryError", self._oom_message(), exiting=True)
            os._exit(3)
        self.transport.invocation_id = ""

    def _oom_message(self) -> str:
        return (
            f"the function exceeded its memory limit of {self.meta.config.memory_mb} MB; "
            "the worker was replaced"
        )

    def _send_error(
        self,
        iid: str,
        code: str,
        type_name: str,
        message: str,
        tb: str = "",
        *,
        exiting: bool = False,
        ts: list[int] | None = None,
        usage: list[float] | None = None,
    ) -> None:
        # `exit` tells the gateway this worker is about to die, so it sends it nothing more.
        frame: dict[str, Any] = {
            "t": "err",
            "id": iid,
            "code": code,
            "type": type_name,
            "message": message,
        }
        if ts is not None:
            frame["ts"] = ts
        if usage is not None:
            frame["u"] = usage
        self.transport.send({**frame, "tb": tb, "exit": exiting})

    def _run(self, message: dict[str, Any]) -> dict[str, Any]:
        handler = self.handler
        meta = self.meta
        if handler.kind == KIND_MODEL:
            body = run_batch(handler.func, message)
            self._check_size(len(body))
            return {"t": "res", "id": message["id"], "body": body}
        ctx = Context(
            transport=self.transport,
            invocation_id=message["id"],
            # The clock starts when the frame starts: it may have waited behind another.
            deadline=message.get("deadline") or time.time() + meta.config.timeout_s,
            namespace=meta.namespace,
            function_name=meta.function,
            version=meta.version,
            memory_mb=meta.config.memory_mb,
            env=meta.config.env,
            secrets=meta.config.secrets,
            traceparent=message.get("tp"),
            subject=message.get("sj"),
            log_stream_name=self.log_stream,
        )
        if handler.kind == KIND_REQUEST:
            method, path, headers, query, body = message["http"]
            arg: Any = Request(method=method, path=path, headers=headers, query=query, body=body)
        elif "lf" in message:
            # An HTTP request to a Lambda handler: the event API Gateway would give it.
            method, path, pairs, query_string, body = message["http"]
            arg = lambda_events.http_event(
                message["lf"],
                method=method,
                path=path,
                headers=pairs,
                query_string=query_string,
                body=body,
                request_id=message["id"],
                source_ip=message.get("ip", ""),
                now=message.get("at") or time.time(),
            )
        elif "q" in message:
            arg = message["q"]
        else:
            raw = message.get("ev")
            arg = orjson.loads(raw) if raw else {}
        result = handler.func(arg, ctx)
        if handler.is_async:
            result = self._await(result)
        # Over HTTP (or queued from it) a {"statusCode": …} result is a proxy response;
        # through the Lambda Invoke API (`li`) the handler's value goes back as it is.
        if (
            handler.kind == KIND_LAMBDA
            and "li" not in message
            and ("lf" in message or lambda_events.is_proxy_result(result))
        ):
            status, pairs, body = lambda_events.proxy_response(result)
            self._check_size(len(body))
            return {"t": "res", "id": message["id"], "http": [status, pairs, body]}
        return self._encode(message["id"], result)

    def _await(self, coro: Any) -> Any:
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(coro)

    def _encode(self, iid: str, result: Any) -> dict[str, Any]:
        if isinstance(result, Response):
            status, headers, body = result.encode()
            self._check_size(len(body))
            return {"t": "res", "id": iid, "http": [status, headers, body]}
        try:
            body = orjson.dumps(result)
        except TypeError as exc:
            raise TypeError(f"the return value is not JSON-serializable: {exc}") from None
        self._check_size(len(body))
        return {"t": "res", "id": iid, "body": body}

    def _check_size(self, size: int) -> None:
        if size > self.meta.max_response:
            raise ResponseTooLarge(size, self.meta.max_response)


class LogFrameHandler(logging.Handler):
    """Python `logging` records as log frames, at their own level, with the invocation id
    (what Lambda's runtime does with the root logger's records)."""

    def __init__(self, transport: WorkerTransport) -> None:
        super().__init__(logging.INFO)
        self._transport = transport

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            level = record.levelname.lower()
            if level == "critical":
                level = "error"
            fields = {"logger": record.name}
            self._transport.log(level, message, fields)
        except Exception:
            self.handleError(record)


def _lambda_logging(transport: WorkerTransport) -> None:
    """Lambda handlers log with `logging` and expect INFO to show: the root logger gets a
    handler that turns records into log lines, unless the user's code configured one."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = LogFrameHandler(transport)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    root.addHandler(handler)
    if root.level == logging.WARNING:  # the default: nobody set it
        root.setLevel(logging.INFO)


def _rebind_log_streams(old: tuple[Any, Any], new: tuple[Any, Any]) -> None:
    """Logging handlers made at import (in the zygote, e.g. Powertools' Logger) hold the
    zygote's stdout; pointed at the worker's captured streams, their lines carry the
    invocation id like print's do."""
    loggers: list[Any] = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler):
                for was, now in zip(old, new, strict=True):
                    if handler.stream is was:
                        handler.setStream(now)


def _usage(cpu0: float) -> list[float]:
    """[CPU seconds of this thread since cpu0, the process's peak RSS in KB] for metering."""
    return [time.thread_time() - cpu0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]


class ResponseTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the response is {size} bytes; the limit is {limit} bytes")
