"""`cumulo.Context`: what a handler gets besides its event.

Inside a worker every operation here is a request over the worker's socket to the gateway,
which scopes it to the function's own namespace: a worker holds no database handle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from cumulo.errors import StateConflict, api_error_for

if TYPE_CHECKING:
    from cumulo.ai.sdk import AiClient
    from cumulo.quantum.sdk import QuantumClient

MAX_STATE_KEY = 512


class Transport(Protocol):
    """How a Context reaches the platform (the worker socket, or a fake in unit tests)."""

    def call(self, op: str, args: dict[str, Any]) -> Any: ...

    def log(self, level: str, message: str, fields: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class StateItem:
    value: Any
    version: int


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_STATE_KEY:
        raise ValueError(f"state keys are non-empty strings of at most {MAX_STATE_KEY} chars")
    return key


def _op(name: str, args: dict[str, Any], subject: str | None) -> tuple[str, dict[str, Any]]:
    """A subject's state goes through the privacy room (`privacy.state.*`)."""
    if subject is None:
        return f"state.{name}", args
    return f"privacy.state.{name}", {**args, "subject": subject}


class Privacy:
    """`ctx.privacy`: consent checks against the platform's consent ledger."""

    __slots__ = ("_t",)

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def has_consent(self, subject: str, purpose: str) -> bool:
        return bool(self._t.call("privacy.has_consent", {"subject": subject, "purpose": purpose}))


class State:
    """Per-function key/value state with optimistic concurrency (a version per key)."""

    __slots__ = ("_t",)

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def get(self, key: str, default: Any = None, *, subject: str | None = None) -> Any:
        item = self.get_item(key, subject=subject)
        return default if item is None else item.value

    def get_item(self, key: str, *, subject: str | None = None) -> StateItem | None:
        reply = self._t.call(*_op("get", {"key": _check_key(key)}, subject))
        return None if reply is None else StateItem(value=reply["value"], version=reply["version"])

    def put(
        self,
        key: str,
        value: Any,
        *,
        expected_version: int | None = None,
        subject: str | None = None,
    ) -> int:
        """Store `value`; returns the new version. With `expected_version`, the write only
        happens if the key is still at that version (0: the key must not exist yet), else
        `cumulo.StateConflict`. With `subject` (e.g. "user:123") the value is that data
        subject's: encrypted under its own key, exported and erased with it (docs/privacy.md)."""
        args = {"key": _check_key(key), "value": value, "expected_version": expected_version}
        reply = self._t.call(*_op("put", args, subject))
        return self._versioned(key, expected_version, reply)

    def delete(
        self, key: str, *, expected_version: int | None = None, subject: str | None = None
    ) -> bool:
        args = {"key": _check_key(key), "expected_version": expected_version}
        reply = self._t.call(*_op("delete", args, subject))
        if isinstance(reply, dict) and reply.get("conflict"):
            raise StateConflict(key, expected_version, reply.get("version"))
        return bool(reply)

    def incr(self, key: str, by: int = 1, *, subject: str | None = None) -> int:
        """Atomically add `by` to an integer (missing keys start at 0); returns the new value."""
        if not isinstance(by, int) or isinstance(by, bool):
            raise TypeError("incr() takes an integer amount")
        return int(self._t.call(*_op("incr", {"key": _check_key(key), "by": by}, subject)))

    def list(self, prefix: str = "", *, limit: int = 1000) -> list[str]:
        return list(self._t.call("state.list", {"prefix": prefix, "limit": limit}))

    @staticmethod
    def _versioned(key: str, expected: int | None, reply: Any) -> int:
        if isinstance(reply, dict) and reply.get("conflict"):
            raise StateConflict(key, expected, reply.get("version"))
        return int(reply["version"])


class Secrets(Mapping[str, str]):
    """The secrets the function declared (`secrets=[...]`), fetched on first use."""

    __slots__ = ("_cache", "_declared", "_t")

    def __init__(self, transport: Transport, declared: tuple[str, ...]) -> None:
        self._t = transport
        self._declared = declared
        self._cache: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        if self._cache is None:
            self._cache = dict(self._t.call("secrets.get", {"names": list(self._declared)}))
        return self._cache

    def __getitem__(self, name: str) -> str:
        if name not in self._declared:
            raise KeyError(
                f"secret {name!r} is not declared: add it to @cumulo.function(secrets=[...])"
            )
        values = self._load()
        if name not in values:
            raise KeyError(f"secret {name!r} is declared but not set (cumulo secrets set {name})")
        return values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


class Log:
    """Structured log lines, stored with the invocation id (`cumulo logs NAME`)."""

    __slots__ = ("_t",)

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def debug(self, message: str, **fields: Any) -> None:
        self._t.log("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._t.log("info", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._t.log("warning", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._t.log("error", message, fields)


class Context:
    """Everything a handler can reach besides its event.

    Also answers the AWS Lambda context names (`aws_request_id`, `function_name`,
    `get_remaining_time_in_millis()`, ...) so Lambda handlers deploy unchanged.
    """

    def __init__(
        self,
        *,
        transport: Transport,
        invocation_id: str,
        deadline: float,
        namespace: str,
        function_name: str,
        version: int,
        memory_mb: int,
        env: Mapping[str, str],
        secrets: tuple[str, ...] = (),
        traceparent: str | None = None,
        subject: str | None = None,
        log_stream_name: str = "",
    ) -> None:
        self.invocation_id = invocation_id
        # W3C trace context of this invocation's span when the platform traces (else None):
        # pass it to your own OpenTelemetry spans or outgoing HTTP calls as their parent.
        self.traceparent = traceparent
        # The data subject this invocation acts for (JWT claim or X-Cumulo-Subject), or None.
        self.subject = subject
        self.privacy = Privacy(transport)
        self.deadline = deadline
        self.namespace = namespace
        self.function_name = function_name
        self.function_version = str(version)
        self.memory_limit_in_mb = memory_mb
        # The rest of AWS Lambda's context object (there is no AWS account: its id is 0s).
        region = os.environ.get("AWS_REGION") or "us-east-1"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:000000000000:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name
        self.identity: Any = None  # Cognito identity: never set here
        self.client_context: Any = None  # mobile client context: never set here
        self.env: Mapping[str, str] = env
        self.state = State(transport)
        self.secrets = Secrets(transport, secrets)
        self.log = Log(transport)
        self._transport = transport
        self._quantum: QuantumClient | None = None

    @property
    def ai(self) -> AiClient:
        """The platform's AI models: `ctx.ai.embed(texts)` (sentence embeddings)."""
        from cumulo.ai.sdk import AiClient

        return AiClient(self._transport.call)

    @property
    def quantum(self) -> QuantumClient:
        """Quantum circuits on the platform's simulators (`sample`, `estimate`)."""
        if self._quantum is None:
            from cumulo.quantum.sdk import QuantumClient

            self._quantum = QuantumClient(self._transport.call)
        return self._quantum

    def call(
        self, name: str, event: Any = None, *, timeout: float | None = None, retries: int = 0
    ) -> Any:
        """Invoke another function of this namespace and return its decoded JSON result.

        It runs through the gateway (no HTTP hop) within this invocation's deadline, which
        the callee sees as its own `ctx.deadline` (or sooner, with `timeout` seconds per
        try). `retries` more tries follow a transient failure (429, 502, 503, 504) after a
        jittered exponential backoff. Failures raise the matching `cumulo.ApiError`:
        `FunctionError` (the callee raised; its type is in `.details["type"]`),
        `FunctionTimeout`, `FunctionCrashed`, `NotFound`, `TooManyRequests`, and
        `CircuitOpen` when the target kept failing and is not being called for a while.
        """
        try:
            body = b"" if event is None else orjson.dumps(event)
        except TypeError as exc:
            raise TypeError(f"the call's event is not JSON-serializable: {exc}") from None
        reply = self._transport.call(
            "call",
            {
                "name": name,
                "event": body,
                "timeout": timeout,
                "retries": retries,
                "deadline": self.deadline,
            },
        )
        error = reply.get("error")
        if error is not None:
            raise api_error_for(
                int(error["status"]), str(error["code"]), str(error["message"]), error["details"]
            )
        return orjson.loads(reply["result"])

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        type: str | None = None,
        subject: str | None = None,
        id: str | None = None,
    ) -> str:
        """Publish a CloudEvent to `topic` in this function's namespace; every function there
        with `@cumulo.on(topic)` gets it once (through the durable queue). Returns the event
        id. `type` defaults to the topic; JSON `data` (or bytes, sent as data_base64). Give
        `id` (e.g. derived from `ctx.invocation_id`) to make a retried publish a no-op."""
        args = {"topic": topic, "data": data, "type": type, "subject": subject, "id": id}
        return str(self._transport.call("events.publish", args))

    @property
    def aws_request_id(self) -> str:
        return self.invocation_id

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.time())

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining_s() * 1000)


class LocalTransport:
    """An in-memory Transport for unit-testing handlers without a platform."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        self.state: dict[str, StateItem] = {}
        self.secrets = dict(secrets or {})
        self.logs: list[tuple[str, str, dict[str, Any]]] = []

    def log(self, level: str, message: str, fields: dict[str, Any]) -> None:
        self.logs.append((level, message, fields))

    def call(self, op: str, args: dict[str, Any]) -> Any:
        key = args.get("key", "")
        item = self.state.get(key)
        version = item.version if item else 0
        expected = args.get("expected_version")
        if op == "state.get":
            return None if item is None else {"value": item.value, "version": item.version}
        if op in ("state.put", "state.delete") and expected is not None and expected != version:
            return {"conflict": True, "version": version}
        if op == "state.put":
            self.state[key] = StateItem(args["value"], version + 1)
            return {"version": version + 1}
        if op == "state.delete":
            return self.state.pop(key, None) is not None
        if op == "state.incr":
            value = int(item.value if item else 0) + int(args["by"])
            self.state[key] = StateItem(value, version + 1)
            return value
        if op == "state.list":
            return sorted(k for k in self.state if k.startswith(args["prefix"]))[: args["limit"]]
        if op == "secrets.get":
            return {n: self.secrets[n] for n in args["names"] if n in self.secrets}
        raise NotImplementedError(op)


def local_context(
    *,
    function_name: str = "local",
    secrets: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Context:
    """A Context backed by memory, for calling a handler directly in a unit test."""
    transport = LocalTransport(secrets)
    return Context(
        transport=transport,
        invocation_id="local",
        deadline=time.time() + timeout_s,
        namespace="default",
        function_name=function_name,
        version=0,
        memory_mb=256,
        env=dict(env or {}),
        secrets=tuple(transport.secrets),
    )
