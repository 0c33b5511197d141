"""HTTP routes for quantum jobs, under /v1/quantum.

The body is read and checked by hand (not by a pydantic model) so that every bad input gets
the platform's `{"error": {"code", "message"}}` with a 400 naming the field, rather than
FastAPI's own 422 format.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Request, Response

from cumulo.errors import BadRequest
from cumulo.quantum.spec import MAX_WAIT_S
from cumulo.request_body import read_json

if TYPE_CHECKING:  # the service pulls in NumPy; the gateway loads it on first use
    from cumulo.quantum.service import QuantumService

MAX_BODY_BYTES = 16 * 1024 * 1024

_JOB_EXAMPLE = {
    "pubs": [
        {
            "circuit": 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
            "h q[0];\ncx q[0], q[1];\nc = measure q;\n",
            "shots": 1000,
        },
        {
            "circuit": 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n'
            "h q[0];\ncx q[0], q[1];\n",
            "observables": ["ZZ", "XX"],
        },
    ],
    "method": "auto",
    "seed": 7,
}
_OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["pubs"],
                    "properties": {
                        "pubs": {"type": "array", "items": {"type": "object"}},
                        "method": {"type": "string", "default": "auto"},
                        "device": {"type": "string", "enum": ["CPU", "GPU"]},
                        "seed": {"type": "integer"},
                        "bitstrings": {"type": "boolean", "default": False},
                        "bit_order": {"type": "string", "enum": ["little", "big"]},
                        "timeout_s": {"type": "number"},
                    },
                },
                "example": _JOB_EXAMPLE,
            }
        },
    }
}


def _json(data: Any, status: int = 200) -> Response:
    return Response(content=orjson.dumps(data), status_code=status, media_type="application/json")


def _wait_param(value: float | None) -> float:
    if value is None:
        return 0.0
    if not 0 <= value <= MAX_WAIT_S:
        raise BadRequest(f"wait must be between 0 and {MAX_WAIT_S:g} seconds", code="bad_wait")
    return value


async def _body(request: Request) -> Any:
    return await read_json(request, MAX_BODY_BYTES)


def build_router(
    get_service: Callable[[], Awaitable[QuantumService]],
    get_namespace: Callable[[Request], str],
) -> APIRouter:
    router = APIRouter(prefix="/v1/quantum", tags=["quantum"])

    @router.post(
        "/jobs",
        status_code=202,
        summary="Submit a quantum job (sampler and estimator PUBs in OpenQASM 2 or 3)",
        openapi_extra=_OPENAPI_BODY,
    )
    async def submit_job(
        request: Request, dry_run: bool = False, wait: float | None = None
    ) -> Response:
        body = await _body(request)
        namespace = get_namespace(request)
        service = await get_service()
        key = request.headers.get("idempotency-key")
        wait_s = _wait_param(wait)
        job = await service.submit(namespace, body, idempotency_key=key, dry_run=dry_run)
        if dry_run:
            return _json(job, 200)
        if wait_s > 0:
            job = await service.wait(namespace, job["id"], wait_s)
        return _json(job, 202)

    @router.get("/jobs", summary="List quantum jobs, newest first")
    async def list_jobs(request: Request, state: str | None = None, limit: int = 50) -> Response:
        jobs = await (await get_service()).list_jobs(
            get_namespace(request), state=state, limit=limit
        )
        return _json({"object": "list", "data": jobs})

    @router.get("/jobs/{job_id}", summary="A quantum job; ?wait=SECONDS long-polls until done")
    async def get_job(request: Request, job_id: str, wait: float | None = None) -> Response:
        service = await get_service()
        namespace = get_namespace(request)
        wait_s = _wait_param(wait)
        if wait_s > 0:
            return _json(await service.wait(namespace, job_id, wait_s))
        return _json(await service.get(namespace, job_id))

    @router.delete("/jobs/{job_id}", summary="Cancel a queued or running quantum job")
    async def cancel_job(request: Request, job_id: str) -> Response:
        job = await (await get_service()).cancel(get_namespace(request), job_id)
        return _json(job, 202 if job["state"] == "cancelling" else 200)

    @router.get("/backends", summary="Methods, devices, versions, limits, basis gates, widths")
    async def backends(request: Request) -> Response:
        get_namespace(request)
        return _json((await get_service()).capabilities())

    return router
