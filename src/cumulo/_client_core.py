"""What `cumulo.client.Client` and `AsyncClient` share: no I/O, only its description.

A `Call` is one API request (method, path, httpx options) plus how to read its answer; each
client only sends it, with `httpx.Client` or `httpx.AsyncClient`. Everything that could drift
between the two — paths, bodies, parameters, timeouts, error mapping, the long-poll
schedule — lives here once.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import orjson

from cumulo.config import Credentials
from cumulo.errors import ApiError, ConfigError, TransportError, api_error_for

T = TypeVar("T")

QUANTUM_TERMINAL = ("succeeded", "failed", "cancelled")
# The platform holds a long-poll at most 60 s (cumulo.quantum.spec.MAX_WAIT_S); asking for
# less keeps each request well inside the client's own read timeout.
QUANTUM_POLL_S = 20.0
# Added to a long-poll's own length, so the read timeout never cuts a poll short.
_POLL_SLACK_S = 30.0
DEPLOY_TIMEOUT_S = 180.0


@dataclass(frozen=True, slots=True)
class Connection:
    credentials: Credentials
    options: dict[str, Any]  # keyword arguments for httpx.Client / httpx.AsyncClient


def connection(url: str | None, api_key: str | None, timeout: float) -> Connection:
    """The platform to talk to (None: the CLI's resolution: env, current context, ./.cumulo)."""
    if url is None or api_key is None:
        from cumulo.cli.profiles import ProfileError, resolve

        try:
            target = resolve()
        except ProfileError as exc:
            raise ConfigError(str(exc)) from None
        url, api_key = url or target.url, api_key or target.api_key
    credentials = Credentials(url.rstrip("/"), api_key)
    verify: ssl.SSLContext | bool = True
    if credentials.url.startswith("http://"):
        # Plain HTTP never uses it, and httpx's default (certifi's CA bundle) costs
        # ~250 ms per CLI command; redirects are not followed, so no https hop.
        verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    options = {
        "base_url": credentials.url,
        "headers": {"authorization": f"Bearer {api_key}"},
        "timeout": timeout,
        "verify": verify,
    }
    return Connection(credentials, options)


H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class ClientBase(Generic[H]):
    """What constructing either client means: which platform, which namespace, and the
    httpx client (`_open`) that talks to it."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        namespace: str = "default",
        timeout: float = 60.0,
    ) -> None:
        target = connection(url, api_key, timeout)
        self.credentials = target.credentials
        self.namespace = namespace
        self._http: H = self._open(target.options)

    def _open(self, options: dict[str, Any]) -> H:
        raise NotImplementedError


@contextmanager
def transport_errors(url: str) -> Iterator[None]:
    """httpx's exceptions → TransportError, one line naming the platform."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TransportError(f"{url} did not answer in time") from exc
    except httpx.HTTPError as exc:
        raise TransportError(f"cannot reach {url}: {exc}") from exc


def checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise error_of(response)
    return response


def error_of(response: httpx.Response) -> ApiError:
    """The platform's `{"error": {"code", "message", …}}` → the matching cumulo.errors class."""
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", response.text[:200] or response.reason_phrase, {}
    invocation_id = response.headers.get("x-cumulo-invocation-id")
    if invocation_id:
        details.setdefault("invocation_id", invocation_id)
    return api_error_for(response.status_code, code, message, details)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    options: dict[str, Any] = field(default_factory=dict)


def _raw(response: httpx.Response) -> httpx.Response:
    return response


def _json(response: httpx.Response) -> Any:
    return response.json()


def _object(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json())


def _ns(namespace: str, rest: str = "") -> str:
    return f"/v1/namespaces/{namespace}{rest}"


def _content(data: Any) -> bytes:
    return b"" if data is None else orjson.dumps(data)


# ---------------------------------------------------------------- functions


def deploy_body(
    path: Path | str,
    *,
    name: str | None,
    handler: str | None,
    env: dict[str, str] | None,
    promote: bool,
    config: dict[str, Any],
) -> dict[str, Any]:
    """The deploy request body; packing the bundle reads and compresses files (blocking)."""
    from cumulo.control.bundle import pack

    return {
        "bundle": base64.b64encode(pack(Path(path))).decode(),
        "name": name,
        "handler": handler,
        "env": env or {},
        "promote": promote,
        "config": {k: v for k, v in config.items() if v is not None},
    }


def deploy(namespace: str, body: dict[str, Any]) -> Call[dict[str, Any]]:
    options = {"json": body, "timeout": DEPLOY_TIMEOUT_S}
    return Call("POST", _ns(namespace, "/deploy"), _object, options)


def invoke_raw(
    namespace: str, name: str, data: Any, *, method: str = "POST", path: str = ""
) -> Call[httpx.Response]:
    return Call(method, f"/fn/{namespace}/{name}{path}", _raw, {"content": _content(data)})


def invoke(namespace: str, name: str, data: Any) -> Call[Any]:
    return Call("POST", f"/fn/{namespace}/{name}", _json, {"content": _content(data)})


def _functions(response: httpx.Response) -> list[dict[str, Any]]:
    return list(response.json()["functions"])


def functions(namespace: str) -> Call[list[dict[str, Any]]]:
    return Call("GET", _ns(namespace, "/functions"), _functions)


def function(namespace: str, name: str) -> Call[dict[str, Any]]:
    return Call("GET", _ns(namespace, f"/functions/{name}"), _object)


# ---------------------------------------------------------------- quantum jobs


def _quantum(
    namespace: str,
    method: str,
    path: str,
    parse: Callable[[httpx.Response], T],
    params: dict[str, Any] | None = None,
    **options: Any,
) -> Call[T]:
    # Quantum routes take the namespace as a parameter, not in the path.
    query = {**(params or {}), "namespace": namespace}
    return Call(method, f"/v1/quantum{path}", parse, {"params": query, **options})


def submit_quantum_job(
    namespace: str,
    body: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    wait: float | None = None,
) -> Call[dict[str, Any]]:
    options: dict[str, Any] = {"json": body}
    if idempotency_key:
        options["headers"] = {"idempotency-key": idempotency_key}
    params: dict[str, Any] = {}
    if wait:
        params["wait"] = wait
        options["timeout"] = wait + _POLL_SLACK_S
    return _quantum(namespace, "POST", "/jobs", _object, params, **options)


def quantum_dry_run(namespace: str, body: dict[str, Any]) -> Call[dict[str, Any]]:
    return _quantum(namespace, "POST", "/jobs", _object, {"dry_run": "true"}, json=body)


def quantum_job(namespace: str, job_id: str, *, wait: float | None = None) -> Call[dict[str, Any]]:
    if not wait:
        return _quantum(namespace, "GET", f"/jobs/{job_id}", _object)
    path = f"/jobs/{job_id}"
    return _quantum(namespace, "GET", path, _object, {"wait": wait}, timeout=wait + _POLL_SLACK_S)


def _jobs(response: httpx.Response) -> list[dict[str, Any]]:
    return list(response.json()["data"])


def quantum_jobs(
    namespace: str, *, state: str | None = None, limit: int = 50
) -> Call[list[dict[str, Any]]]:
    params: dict[str, Any] = {"limit": limit}
    if state is not None:
        params["state"] = state
    return _quantum(namespace, "GET", "/jobs", _jobs, params)


def cancel_quantum_job(namespace: str, job_id: str) -> Call[dict[str, Any]]:
    return _quantum(namespace, "DELETE", f"/jobs/{job_id}", _object)


def quantum_backends(namespace: str) -> Call[dict[str, Any]]:
    return _quantum(namespace, "GET", "/backends", _object)


class QuantumPoll:
    """The long-poll schedule of a wait for a terminal job, the same for both clients.

    `next_wait(job)` is None once the job is terminal, else how long the next long-poll may
    hold; it raises TimeoutError once `timeout` seconds (None: no limit) have passed.
    """

    def __init__(self, job_id: str, timeout: float | None) -> None:
        self._job_id = job_id
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def next_wait(self, job: dict[str, Any]) -> float | None:
        if job["state"] in QUANTUM_TERMINAL:
            return None
        if self._deadline is None:
            return QUANTUM_POLL_S
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"quantum job {self._job_id} is still {job['state']} after {self._timeout:g} s"
            )
        return min(QUANTUM_POLL_S, max(left, 0.1))


def raise_for_quantum_job(job: dict[str, Any]) -> None:
    """QuantumJobError for a failed or cancelled job (the message names its id and why)."""
    if job["state"] == "succeeded":
        return
    from cumulo.quantum.sdk import QuantumJobError  # here: the CLI's import time stays as it was

    error = job.get("error") or {}
    reason = f": {error['message']}" if error.get("message") else ""
    raise QuantumJobError(
        f"quantum job {job['id']} {job['state']}{reason}",
        code=str(error.get("code") or f"job_{job['state']}"),
    )
