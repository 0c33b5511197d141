"""Python client for the cumulo HTTP API (the CLI is a thin layer over this)."""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from cumulo.config import Credentials
from cumulo.control.bundle import pack
from cumulo.errors import ApiError, BadRequest, ConfigError, TransportError, api_error_for

QUANTUM_TERMINAL = ("succeeded", "failed", "cancelled")
# The platform holds a long-poll at most 60 s (cumulo.quantum.spec.MAX_WAIT_S); asking for
# less keeps each request well inside the client's own read timeout.
_QUANTUM_POLL_S = 20.0


class Client:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        namespace: str = "default",
        timeout: float = 60.0,
    ) -> None:
        if url is None or api_key is None:
            from cumulo.cli.profiles import ProfileError, resolve

            try:
                target = resolve()
            except ProfileError as exc:
                raise ConfigError(str(exc)) from None
            url, api_key = url or target.url, api_key or target.api_key
        self.credentials = Credentials(url.rstrip("/"), api_key)
        self.namespace = namespace
        verify: ssl.SSLContext | bool = True
        if self.credentials.url.startswith("http://"):
            # Plain HTTP never uses it, and httpx's default (certifi's CA bundle) costs
            # ~250 ms per CLI command; redirects are not followed, so no https hop.
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._http = httpx.Client(
            base_url=self.credentials.url,
            headers={"authorization": f"Bearer {api_key}"},
            timeout=timeout,
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise TransportError(f"{self.credentials.url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach {self.credentials.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_of(response)
        return response

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
        bundle = pack(Path(path))
        body = {
            "bundle": base64.b64encode(bundle).decode(),
            "name": name,
            "handler": handler,
            "env": env or {},
            "promote": promote,
            "config": {k: v for k, v in config.items() if v is not None},
        }
        return dict(self._json("POST", self._ns("/deploy"), json=body, timeout=180))

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
        content = b"" if data is None else orjson.dumps(data)
        url = f"/fn/{self.namespace}/{name}{path}"
        return self.request(method, url, content=content)

    def invoke(self, name: str, data: Any = None) -> Any:
        return self.invoke_raw(name, data).json()

    def functions(self) -> list[dict[str, Any]]:
        return list(self._json("GET", self._ns("/functions"))["functions"])

    def function(self, name: str) -> dict[str, Any]:
        return dict(self._json("GET", self._ns(f"/functions/{name}")))

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
                    raise _error_of(response)
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
    def _quantum(self, method: str, path: str, **kwargs: Any) -> Any:
        params = dict(kwargs.pop("params", None) or {})
        params["namespace"] = self.namespace
        return self._json(method, f"/v1/quantum{path}", params=params, **kwargs)

    def submit_quantum_job(
        self,
        body: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """POST /v1/quantum/jobs: the job (queued, or terminal if it finished within `wait`)."""
        kwargs: dict[str, Any] = {}
        if idempotency_key:
            kwargs["headers"] = {"idempotency-key": idempotency_key}
        if wait:
            kwargs.update(params={"wait": wait}, timeout=wait + 30.0)
        return dict(self._quantum("POST", "/jobs", json=body, **kwargs))

    def quantum_dry_run(self, body: dict[str, Any]) -> dict[str, Any]:
        """Admission only: the method and memory the job would get; nothing is queued."""
        return dict(self._quantum("POST", "/jobs", json=body, params={"dry_run": "true"}))

    def quantum_job(self, job_id: str, *, wait: float | None = None) -> dict[str, Any]:
        """A job, with its result once succeeded; `wait` (≤ 60 s) long-polls until terminal."""
        if not wait:
            return dict(self._quantum("GET", f"/jobs/{job_id}"))
        path = f"/jobs/{job_id}"
        return dict(self._quantum("GET", path, params={"wait": wait}, timeout=wait + 30.0))

    def quantum_jobs(self, *, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The namespace's jobs, newest first, without their results."""
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state
        return list(self._quantum("GET", "/jobs", params=params)["data"])

    def cancel_quantum_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job (now `cancelled`) or a running one (`cancelling`, then
        `cancelled`); a finished job raises Conflict."""
        return dict(self._quantum("DELETE", f"/jobs/{job_id}"))

    def quantum_backends(self) -> dict[str, Any]:
        return dict(self._quantum("GET", "/backends"))

    def wait_quantum_job(self, job_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Long-poll until the job is terminal (succeeded, failed or cancelled) and return it;
        TimeoutError after `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.quantum_job(job_id)
        while job["state"] not in QUANTUM_TERMINAL:
            wait = _QUANTUM_POLL_S
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"quantum job {job_id} is still {job['state']} after {timeout:g} s"
                    )
                wait = min(wait, max(left, 0.1))
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


def _error_of(response: httpx.Response) -> ApiError:
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
