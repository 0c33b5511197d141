"""`cumulo.client.AsyncClient`: the client's methods as coroutines, on `httpx.AsyncClient`.

The requests and their parsing are cumulo._client_core's, the same `Client` sends, so the
two clients give the same answers and the same errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self, TypeVar

import httpx

from cumulo import _client_core as calls
from cumulo._client_core import raise_for_quantum_job

T = TypeVar("T")


class AsyncClient(calls.ClientBase[httpx.AsyncClient]):
    """An asyncio client for the cumulo HTTP API; methods named as `Client`'s.

    `url`/`api_key` None: the CLI's resolution (CUMULO_URL/CUMULO_API_KEY, the current
    context, ./.cumulo). Use `async with AsyncClient() as client:` or `await client.close()`.
    """

    def _open(self, options: dict[str, Any]) -> httpx.AsyncClient:
        return httpx.AsyncClient(**options)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # ------------------------------------------------------------ plumbing
    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with calls.transport_errors(self.credentials.url):
            response = await self._http.request(method, path, **kwargs)
        return calls.checked(response)

    async def _call(self, call: calls.Call[T]) -> T:
        return call.parse(await self.request(call.method, call.path, **call.options))

    # ------------------------------------------------------------ functions
    async def deploy(
        self,
        path: Path | str,
        *,
        name: str | None = None,
        handler: str | None = None,
        env: dict[str, str] | None = None,
        promote: bool = True,
        **config: Any,
    ) -> dict[str, Any]:
        import asyncio  # here: `import cumulo.client` (every CLI command) stays without it

        # Packing reads and compresses the tree: off the event loop.
        body = await asyncio.to_thread(
            calls.deploy_body,
            path,
            name=name,
            handler=handler,
            env=env,
            promote=promote,
            config=config,
        )
        return await self._call(calls.deploy(self.namespace, body))

    async def invoke_raw(
        self, name: str, data: Any = None, *, method: str = "POST", path: str = ""
    ) -> httpx.Response:
        call = calls.invoke_raw(self.namespace, name, data, method=method, path=path)
        return await self._call(call)

    async def invoke(self, name: str, data: Any = None) -> Any:
        return await self._call(calls.invoke(self.namespace, name, data))

    async def functions(self) -> list[dict[str, Any]]:
        return await self._call(calls.functions(self.namespace))

    async def function(self, name: str) -> dict[str, Any]:
        return await self._call(calls.function(self.namespace, name))

    # ------------------------------------------------------------ quantum jobs
    async def submit_quantum_job(
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
        return await self._call(call)

    async def quantum_dry_run(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(calls.quantum_dry_run(self.namespace, body))

    async def quantum_job(self, job_id: str, *, wait: float | None = None) -> dict[str, Any]:
        return await self._call(calls.quantum_job(self.namespace, job_id, wait=wait))

    async def quantum_jobs(
        self, *, state: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        return await self._call(calls.quantum_jobs(self.namespace, state=state, limit=limit))

    async def cancel_quantum_job(self, job_id: str) -> dict[str, Any]:
        return await self._call(calls.cancel_quantum_job(self.namespace, job_id))

    async def quantum_backends(self) -> dict[str, Any]:
        return await self._call(calls.quantum_backends(self.namespace))

    # `timeout` as in Client (ruff's ASYNC109 prefers asyncio.timeout): it bounds the
    # long-polls themselves, and its TimeoutError names the job and the state it is stuck in.
    async def wait_quantum_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Long-poll until the job is terminal; TimeoutError after `timeout` seconds."""
        poll = calls.QuantumPoll(job_id, timeout)
        job = await self.quantum_job(job_id)
        while (wait := poll.next_wait(job)) is not None:
            job = await self.quantum_job(job_id, wait=wait)
        return job

    async def run_quantum_job(
        self,
        body: dict[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit and wait: the succeeded job; QuantumJobError if it failed or was cancelled."""
        job = await self.submit_quantum_job(body, idempotency_key=idempotency_key)
        job = await self.wait_quantum_job(job["id"], timeout=timeout)
        raise_for_quantum_job(job)
        return job
