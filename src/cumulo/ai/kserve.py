"""The Open Inference Protocol (KServe V2, REST) for `@cumulo.model` functions.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     liveness, readiness (no key needed)
    GET  /v2/models/{name}[/versions/{v}]      model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

The namespace is `?namespace=` (default: the key's own); `read` scope to look, `invoke` to
infer. An infer request's tensors are split along their first dimension into instances,
which go through the model's batcher one by one (so they batch with every other caller):
with one input an instance is that input's row, with several it is `{input name: row}`.
The predictions come back as one output tensor `output-0` (or one per key when predict
returns dicts). Tensors are handled in plain Python: the gateway never imports numpy.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request

import cumulo
from cumulo.ai.batching import ModelBatching
from cumulo.control.routes import Route, RouteCache
from cumulo.errors import BadRequest, NotFound
from cumulo.request_body import read_json
from cumulo.runtime.loader import KIND_MODEL
from cumulo.runtime.spec import VersionSpec
from cumulo.security.auth import principal_of

NUMERIC = {
    "UINT8": int,
    "UINT16": int,
    "UINT32": int,
    "UINT64": int,
    "INT8": int,
    "INT16": int,
    "INT32": int,
    "INT64": int,
    "FP16": float,
    "FP32": float,
    "FP64": float,
}
DATATYPES = frozenset({*NUMERIC, "BOOL", "BYTES"})
MAX_INPUTS = 64


# ------------------------------------------------------------------ tensors ↔ instances
def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _reshape(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) == 1:
        return flat
    size = math.prod(shape[1:])
    return [_reshape(flat[i * size : (i + 1) * size], shape[1:]) for i in range(shape[0])]


def _check_values(name: str, datatype: str, values: list[Any]) -> None:
    if datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in values)
    elif datatype == "BYTES":
        ok = all(isinstance(v, str) for v in values)
    elif NUMERIC[datatype] is int:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    else:
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not ok:
        raise BadRequest(f"input {name!r}: data does not match datatype {datatype}")


def instances_of(body: Any) -> list[Any]:
    """The instances of a V2 infer request (400 on anything malformed)."""
    if not isinstance(body, dict):
        raise BadRequest("an infer request is a JSON object with `inputs`")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("`inputs` must be a non-empty list of tensors")
    if len(inputs) > MAX_INPUTS:
        raise BadRequest(f"at most {MAX_INPUTS} input tensors")
    rows: dict[str, list[Any]] = {}
    batch: int | None = None
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise BadRequest("each input is an object with name, shape, datatype and data")
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if not isinstance(name, str) or not name:
            raise BadRequest("each input needs a non-empty `name`")
        if name in rows:
            raise BadRequest(f"input {name!r} appears twice")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise BadRequest(f"input {name!r}: `shape` must be a list of non-negative integers")
        if datatype not in DATATYPES:
            raise BadRequest(
                f"input {name!r}: unknown datatype {datatype!r} (use one of "
                f"{', '.join(sorted(DATATYPES))})"
            )
        if "data" not in tensor:
            raise BadRequest(f"input {name!r} has no `data`")
        flat = _flatten(tensor["data"])
        expected = math.prod(shape)
        if len(flat) != expected:
            raise BadRequest(
                f"input {name!r}: shape {shape} needs {expected} values, data has {len(flat)}"
            )
        _check_values(name, str(datatype), flat)
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            raise BadRequest("inputs disagree on the first (batch) dimension")
        rows[name] = _reshape(flat, shape)
    if not batch:
        raise BadRequest("the batch dimension is 0: nothing to infer")
    if len(rows) == 1:
        return next(iter(rows.values()))
    return [{name: values[i] for name, values in rows.items()} for i in range(batch)]


def _shape_of(value: Any) -> list[int] | None:
    """The shape of a rectangular nested list (None when ragged)."""
    if not isinstance(value, list):
        return []
    if not value:
        return [0]
    inner = [_shape_of(v) for v in value]
    first = inner[0]
    if first is None or any(s != first for s in inner):
        return None
    return [len(value), *first]


def _datatype(values: list[Any]) -> str | None:
    if all(isinstance(v, bool) for v in values):
        return "BOOL"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "FP64"
    if all(isinstance(v, str) for v in values):
        return "BYTES"
    return None


def tensor_of(name: str, predictions: list[Any]) -> dict[str, Any]:
    """One output tensor; predictions of uneven shape or mixed types go as JSON strings."""
    shape = _shape_of(predictions)
    flat = _flatten(predictions) if shape is not None else []
    datatype = _datatype(flat) if shape is not None else None
    if shape is None or datatype is None:
        flat = [orjson.dumps(p).decode() for p in predictions]
        shape, datatype = [len(predictions)], "BYTES"
    return {"name": name, "shape": shape, "datatype": datatype, "data": flat}


def outputs_of(predictions: list[Any]) -> list[dict[str, Any]]:
    if predictions and all(isinstance(p, dict) for p in predictions):
        keys = list(predictions[0])
        if keys and all(list(p) == keys for p in predictions):
            return [tensor_of(str(k), [p[k] for p in predictions]) for k in keys]
    return [tensor_of("output-0", predictions)]


# ------------------------------------------------------------------ routes
NamespaceOf = Callable[[Request], str]


def build_router(
    routes: RouteCache,
    models: ModelBatching,
    namespace_of: NamespaceOf,
    ready: Callable[[], bool],
    max_body_bytes: int,
) -> APIRouter:
    router = APIRouter(tags=["inference (KServe V2)"])

    async def model_spec(namespace: str, name: str, version: str | None) -> VersionSpec:
        route: Route | None = await routes.get(namespace, name)
        if route is None or route.specs[0].kind != KIND_MODEL:
            raise NotFound(f"model {name!r} not found", code="model_not_found")
        if version is None:
            return route.pick()
        for spec in route.specs:
            if str(spec.version) == version:
                return spec
        raise NotFound(f"model {name!r} has no live version {version!r}", code="model_not_found")

    def authenticated(request: Request) -> None:
        principal_of(request.scope)

    @router.get("/v2", dependencies=[Depends(authenticated)])
    async def server_metadata() -> dict[str, Any]:
        return {"name": "cumulo", "version": cumulo.__version__, "extensions": []}

    # Health answers without a key, like /healthz: Kubernetes-style probes carry none, and
    # the answer says nothing about any tenant (gateway/auth.py PUBLIC_PATHS).
    @router.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/v2/health/ready")
    async def server_ready() -> dict[str, bool]:
        return {"ready": ready()}

    async def metadata(namespace: str, name: str, version: str | None) -> dict[str, Any]:
        spec = await model_spec(namespace, name, version)
        route = await routes.get(namespace, name)
        versions = [str(s.version) for s in route.specs] if route else [str(spec.version)]
        return {
            "name": name,
            "versions": versions,
            "platform": "cumulo",
            "inputs": [],
            "outputs": [],
            "parameters": {
                "batch_max_size": spec.config.batch_max_size,
                "batch_wait_ms": spec.config.batch_wait_ms,
            },
        }

    @router.get("/v2/models/{name}")
    async def model_metadata(request: Request, name: str) -> dict[str, Any]:
        return await metadata(namespace_of(request), name, None)

    @router.get("/v2/models/{name}/versions/{version}")
    async def version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
        return await metadata(namespace_of(request), name, version)

    @router.get("/v2/models/{name}/ready")
    async def model_ready(request: Request, name: str) -> dict[str, Any]:
        # Scale-from-zero: a deployed model is ready; its first request loads it.
        await model_spec(namespace_of(request), name, None)
        return {"name": name, "ready": True}

    @router.get("/v2/models/{name}/versions/{version}/ready")
    async def version_ready(request: Request, name: str, version: str) -> dict[str, Any]:
        await model_spec(namespace_of(request), name, version)
        return {"name": name, "ready": True}

    async def infer(request: Request, name: str, version: str | None) -> dict[str, Any]:
        spec = await model_spec(namespace_of(request), name, version)
        body = await read_json(request, max_body_bytes)
        instances = instances_of(body)
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise BadRequest("`id` must be a string")
        key_id = principal_of(request.scope).key_id
        answers = await models.predict_many(
            spec, [orjson.dumps(instance) for instance in instances], key_id
        )
        return {
            "model_name": name,
            "model_version": str(spec.version),
            "id": request_id or str(uuid.uuid4()),
            "outputs": outputs_of([orjson.loads(a.body) for a in answers]),
        }

    @router.post("/v2/models/{name}/infer")
    async def model_infer(request: Request, name: str) -> dict[str, Any]:
        return await infer(request, name, None)

    @router.post("/v2/models/{name}/versions/{version}/infer")
    async def version_infer(request: Request, name: str, version: str) -> dict[str, Any]:
        return await infer(request, name, version)

    return router
