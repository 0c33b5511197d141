"""Python client for the cumulo HTTP API (the CLI is a thin layer over this).

`Client` blocks; `AsyncClient` has the same methods as coroutines.
Both send the requests described in cumulo._client_core, so they cannot drift apart.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from cumulo import _client_core as calls
from cumulo._client_async import AsyncClient
from cumulo._client_core import QUANTUM_TERMINAL, error_of, raise_for_quantum_job
from cumulo.errors import BadRequest, TransportError

__all__ = ["QUANTUM_TERMINAL", "AsyncClient", "Client", "raise_for_quantum_job"]

T = TypeVar("T")


class Client(calls.ClientBase[httpx.Client]):
    """A blocking client for the cumulo HTTP API.

    `url`/`api_key` None: CUMULO_URL/CUMULO_API_KEY, the CLI's current context, ./.cumulo.
    """

    def _open(self, options: dict[str, Any]) -> httpx.Client:
        return httpx.Client(**options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with calls.transport_errors(self.credentials.url):
            response = self._http.request(method, path, **kwargs)
        return calls.checked(response)

    def _call(self, call: calls.Call[T]) -> T:
        return call.parse(self.request(call.method, call.path, **call.options))

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def _ns(self, rest: str = "") -> str:
        return f"/v1/namespaces/{self.namespace}{rest}"

    # ------------------------------------------------------------ functions
    def deploy(
        self,
        path: Path | str,
        *,
        name: str | None = None,
        handler: str | None = None,
        env: dict[str, str] | None = None,
        promote: bool = True,
        **config: Any,
    ) -> dict[str, Any]:
        body = calls.deploy_body(
            path, name=name, handler=handler, env=env, promote=promote, config=config
        )
        return self._call(calls.deploy(self.namespace, body))

    def deploy_image(
        self,
        image: str,
        *,
        name: str,
        env: dict[str, str] | None = None,
        promote: bool = True,
        **config: Any,
    ) -> dict[str, Any]:
        """Deploy a container image from a file: `oci-archive:FILE`, `oci:DIR[:tag]` or
        `docker-archive:FILE` (docs/containers.md)."""
        from cumulo.runtime.oci_image import pack_layout, parse_ref

        try:
            transport, where, tag = parse_ref(image)
        except ValueError as exc:
            raise BadRequest(str(exc), code="not_an_image") from None
        path = Path(where)
        if transport == "oci":
            if not (path / "index.json").is_file():
                raise BadRequest(f"{where} is not an OCI image layout", code="not_an_image")
            data = pack_layout(path)
        elif path.is_file():
            data = path.read_bytes()
        else:
            raise BadRequest(f"{where} does not exist", code="bad_path")
        body = {
            "bundle": "",
            "image": base64.b64encode(data).decode(),
            "image_transport": transport,
            "image_tag": tag,
            "name": name,
            "env": env or {},
            "promote": promote,
            "config": {k: v for k, v in config.items() if v is not None},
        }
        return dict(self._json("POST", self._ns("/deploy"), json=body, timeout=300))

    def invoke_raw(
        self, name: str, data: Any = None, *, method: str = "POST", path: str = ""
    ) -> httpx.Response:
        return self._call(calls.invoke_raw(self.namespace, name, data, method=method, path=path))

    def invoke(self, name: str, data: Any = None) -> Any:
        return self._call(calls.invoke(self.namespace, name, data))

    def functions(self) -> list[dict[str, Any]]:
        return self._call(calls.functions(self.namespace))

    def function(self, name: str) -> dict[str, Any]:
        return self._call(calls.function(self.namespace, name))

    def versions(self, name: str) -> dict[str, Any]:
        return dict(self._json("GET", self._ns(f"/functions/{name}/versions")))

    def set_traffic(self, name: str, weights: dict[int, int]) -> dict[str, Any]:
        body = {"weights": {str(v): w for v, w in weights.items()}}
        return dict(self._json("PUT", self._ns(f"/functions/{name}/traffic"), json=body))

    def rollback(self, name: str) -> dict[str, Any]:
        return dict(self._json("POST", self._ns(f"/functions/{name}/rollback")))

    def remove(self, name: str) -> None:
        self.request("DELETE", self._ns(f"/functions/{name}"))

    def workers(self, name: str) -> list[dict[str, Any]]:
        return list(self._json("GET", self._ns(f"/functions/{name}/workers"))["zygotes"])

    def invocations(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        path = self._ns(f"/functions/{name}/invocations")
        return list(self._json("GET", path, params={"limit": limit})["invocations"])

    def invocation(self, invocation_id: str) -> dict[str, Any]:
        return dict(self._json("GET", self._ns(f"/invocations/{invocation_id}")))

    def logs(self, name: str, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        params = {"after": after, "limit": limit}
        return list(self._json("GET", self._ns(f"/functions/{name}/logs"), params=params)["lines"])

    def follow_logs(self, name: str) -> Iterator[dict[str, Any]]:
        path = self._ns(f"/functions/{name}/logs")
        try:
            with self._http.stream(
                "GET", path, params={"follow": "true"}, timeout=httpx.Timeout(None, connect=10)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_of(response)
                for line in response.iter_lines():
                    if line:
                        record = orjson.loads(line)
                        if "following" not in record:
                            yield record
        except httpx.HTTPError as exc:
            raise TransportError(f"log stream from {self.credentials.url} broke: {exc}") from exc

    def invoke_async(self, name: str, data: Any = None) -> str:
        """Queue an invocation (POST /async/...); returns its id."""
        content = b"" if data is None else orjson.dumps(data)
        return str(self._json("POST", f"/async/{self.namespace}/{name}", content=content)["id"])

    def async_invocation(self, invocation_id: str) -> dict[str, Any]:
        """An async invocation's status and, once it succeeded, its result."""
        return dict(self._json("GET", f"/v1/invocations/{invocation_id}"))

    # ------------------------------------------------------------ usage and quotas
    def usage(
        self,
        *,
        namespace: str | None = None,
        since: str = "7d",
        until: str | None = None,
        by: str = "function",
    ) -> dict[str, Any]:
        """GET /v1/usage; namespace None: the key's own (a platform admin key: all, `*`)."""
        params = {"since": since, "by": by}
        if namespace is not None:
            params["namespace"] = namespace
        if until is not None:
            params["until"] = until
        return dict(self._json("GET", "/v1/usage", params=params))

    def quota(self) -> dict[str, Any]:
        return dict(self._json("GET", self._ns("/quota")))

    def set_quota(
        self, *, gb_seconds: float | None = None, invocations: int | None = None
    ) -> dict[str, Any]:
        body = {"gb_seconds": gb_seconds, "invocations": invocations}
        return dict(self._json("PUT", self._ns("/quota"), json=body))

    # ------------------------------------------------------------ secrets and keys
    def set_secret(self, key: str, value: str) -> None:
        self.request("PUT", self._ns(f"/secrets/{key}"), json={"value": value})

    def secrets(self) -> list[dict[str, Any]]:
        return list(self._json("GET", self._ns("/secrets"))["secrets"])

    def remove_secret(self, key: str) -> None:
        self.request("DELETE", self._ns(f"/secrets/{key}"))

    def create_key(
        self, scopes: list[str], *, expires_in_s: float | None = None, name: str = ""
    ) -> dict[str, Any]:
        body = {
            "namespace": self.namespace,
            "scopes": scopes,
            "expires_in_s": expires_in_s,
            "name": name,
        }
        return dict(self._json("POST", "/v1/keys", json=body))

    def api_keys(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/keys")["keys"])

    def verify_audit(self, namespace: str | None = None) -> dict[str, Any]:
        params = {"namespace": namespace} if namespace else {}
        return dict(self._json("GET", "/v1/audit/verify", params=params))

    def rotate_master_key(self) -> dict[str, Any]:
        return dict(self._json("POST", "/v1/master-key/rotate"))

    def revoke_key(self, key_id: str) -> None:
        self.request("DELETE", f"/v1/keys/{key_id}")

    # ------------------------------------------------------------ quantum jobs
    # Blocking: run_quantum_job (submit, then wait for the result). Non-blocking:
    # submit_quantum_job returns the queued job at once; quantum_job / wait_quantum_job follow it.
    def submit_quantum_job(
        self,
        body: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """POST /v1/quantum/jobs: the job (queued, or terminal if it finished within `wait`)."""
        call = calls.submit_quantum_job(
            self.namespace, body, idempotency_key=idempotency_key, wait=wait
        )
        return self._call(call)

    def quantum_dry_run(self, body: dict[str, Any]) -> dict[str, Any]:
        """Admission only: the method and memory the job would get; nothing is queued."""
        return self._call(calls.quantum_dry_run(self.namespace, body))

    def quantum_job(self, job_id: str, *, wait: float | None = None) -> dict[str, Any]:
        """A job, with its result once succeeded; `wait` (≤ 60 s) long-polls until terminal."""
        return self._call(calls.quantum_job(self.namespace, job_id, wait=wait))

    def quantum_jobs(self, *, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The namespace's jobs, newest first, without their results."""
        return self._call(calls.quantum_jobs(self.namespace, state=state, limit=limit))

    def cancel_quantum_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job (now `cancelled`) or a running one (`cancelling`, then
        `cancelled`); a finished job raises Conflict."""
        return self._call(calls.cancel_quantum_job(self.namespace, job_id))

    def quantum_backends(self) -> dict[str, Any]:
        """Simulation methods, devices, versions, limits, basis gates and widths."""
        return self._call(calls.quantum_backends(self.namespace))

    def wait_quantum_job(self, job_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Long-poll until the job is terminal (succeeded, failed or cancelled) and return it;
        TimeoutError after `timeout` seconds (None: no limit)."""
        poll = calls.QuantumPoll(job_id, timeout)
        job = self.quantum_job(job_id)
        while (wait := poll.next_wait(job)) is not None:
            job = self.quantum_job(job_id, wait=wait)
        return job

    def run_quantum_job(
        self,
        body: dict[str, Any],
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit and wait: the succeeded job with its result; QuantumJobError if it failed or
        was cancelled."""
        job = self.submit_quantum_job(body, idempotency_key=idempotency_key)
        job = self.wait_quantum_job(job["id"], timeout=timeout)
        raise_for_quantum_job(job)
        return job
