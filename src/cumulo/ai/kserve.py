"""The Open Inference Protocol (KServe V2, REST) for `@cumulo.model` functions.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     liveness, readiness (no key needed)
    GET  /v2/models/{name}[/versions/{v}]      model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
    POST /v2/repository/index                  the namespace's models (Triton's extension)

The namespace is `?namespace=` (default: the key's own); `read` scope to look, `invoke` to
infer. An infer request's tensors are split along their first dimension into instances,
which go through the model's batcher one by one (so they batch with every other caller):
with one input an instance is that input's row, with several it is `{input name: row}`.
Tensor data comes as JSON or, with the binary tensor extension, as raw bytes after the
JSON header (`Inference-Header-Content-Length`, `binary_data_size`); outputs go back the
same two ways (`binary_data`, `binary_data_output`). A model that declares `inputs=` /
`outputs=` gets them in its metadata, its requests checked against them and its outputs
named and typed by them; one that does not answers `output-0` (or one tensor per key when
predict returns dicts). Errors on these routes have the protocol's shape,
`{"error": "message"}` (V2Errors). Tensors are plain Python: the gateway never imports numpy.
"""

from __future__ import annotations

import itertools
import math
import struct
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import cumulo
from cumulo.ai.batching import ModelBatching
from cumulo.ai.tensors import (
    DATATYPES,
    FLOAT,
    decode_binary,
    encode_binary,
    shape_fits,
    values_match,
)
from cumulo.control.routes import Route, RouteCache
from cumulo.errors import ApiError, BadRequest, NotFound, load_json
from cumulo.request_body import read_limited
from cumulo.runtime.loader import KIND_MODEL
from cumulo.runtime.spec import VersionSpec
from cumulo.sdk.spec import validate_name
from cumulo.security.auth import ALL_NAMESPACES, principal_of

MAX_INPUTS = 64
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data", "model_repository_index"]


class ModelOutputMismatch(ApiError):
    """predict() answered something its declared outputs cannot hold."""

    status = 502
    default_code = "model_output"


# ------------------------------------------------------------------ the protocol's errors
def _is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def v2_error_body(body: bytes) -> bytes:
    """cumulo's `{"error": {"code", "message"}}` as the protocol's `{"error": "message"}`;
    any other body as it was."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return orjson.dumps({"error": error["message"]})
    return body


class V2Errors:
    """ASGI middleware: every error answered on a /v2 path (by a route, authentication, a
    body limit or routing itself) leaves in the protocol's shape, which Triton's and
    KServe's clients read (`response["error"]` as a string). Other paths pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_v2(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def reshape(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message  # error bodies are small: hold them to rewrite
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = v2_error_body(b"".join(chunks))
            headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**held, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshape)


# ------------------------------------------------------------------ tensors ↔ instances
def _flatten(data: Any) -> list[Any]:
    """Nested lists → one row-major list; a level of lists only is joined in C."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = data  # already flat, the common case: no copy
    while True:
        types = set(map(type, flat))
        if list not in types:
            return flat
        if types != {list}:
            return _flatten_mixed(flat)
        flat = list(itertools.chain.from_iterable(flat))


def _flatten_mixed(data: list[Any]) -> list[Any]:
    # Lists beside scalars (a ragged tensor): the element count check then refuses it.
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


def _parameters(where: Any, what: str) -> dict[str, Any]:
    parameters = where.get("parameters") if isinstance(where, dict) else None
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{what}: `parameters` must be an object")
    return parameters


def _read_tensor(
    tensor: Any, binary: memoryview | None, offset: int
) -> tuple[str, list[int], str, list[Any], int]:
    """(name, shape, datatype, flat values, offset after its binary data) of one input."""
    if not isinstance(tensor, dict):
        raise BadRequest("each input is an object with name, shape, datatype and data")
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str) or not name:
        raise BadRequest("each input needs a non-empty `name`")
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
    size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a byte count")
        if "data" in tensor:
            raise BadRequest(f"input {name!r} has both `data` and binary_data_size")
        if binary is None:
            raise BadRequest(
                f"input {name!r} has binary_data_size but the request has no "
                "Inference-Header-Content-Length header"
            )
        if offset + size > len(binary):
            raise BadRequest(
                f"input {name!r}: binary_data_size is {size} but only "
                f"{len(binary) - offset} bytes of binary data are left after the JSON header"
            )
        flat = decode_binary(name, str(datatype), shape, binary[offset : offset + size])
        return name, shape, str(datatype), flat, offset + size
    if "data" not in tensor:
        raise BadRequest(f"input {name!r} has no `data` (nor binary_data_size)")
    flat = _flatten(tensor["data"])
    expected = math.prod(shape)
    if len(flat) != expected:
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {expected} values, data has {len(flat)}"
        )
    if not values_match(str(datatype), flat):
        raise BadRequest(f"input {name!r}: data does not match datatype {datatype}")
    return name, shape, str(datatype), flat, offset


def _check_declared(
    model: str, tensors: dict[str, tuple[list[int], str]], spec: VersionSpec
) -> None:
    declared = {t["name"]: t for t in spec.config.inputs}
    for name, (shape, datatype) in tensors.items():
        want = declared.get(name)
        if want is None:
            raise BadRequest(
                f"model {model!r} has no input {name!r} (its inputs: {', '.join(declared)})"
            )
        if datatype != want["datatype"]:
            raise BadRequest(
                f"input {name!r}: datatype {datatype} does not match the model's {want['datatype']}"
            )
        if not shape_fits(shape, want["shape"]):
            raise BadRequest(
                f"input {name!r}: shape {shape} does not match the model's {want['shape']}"
            )
    missing = [n for n in declared if n not in tensors]
    if missing:
        raise BadRequest(f"model {model!r} needs input {missing[0]!r}")


def instances_of(
    body: Any,
    binary: memoryview | None = None,
    spec: VersionSpec | None = None,
    model: str = "",
) -> list[Any]:
    """The instances of a V2 infer request (400 on anything malformed): its JSON header
    `body`, the binary tensor data after it (None: the request has no binary part), and
    the model's declared inputs if any."""
    if not isinstance(body, dict):
        raise BadRequest("an infer request is a JSON object with `inputs`")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("`inputs` must be a non-empty list of tensors")
    if len(inputs) > MAX_INPUTS:
        raise BadRequest(f"at most {MAX_INPUTS} input tensors")
    rows: dict[str, list[Any]] = {}
    seen: dict[str, tuple[list[int], str]] = {}
    batch: int | None = None
    offset = 0
    for tensor in inputs:
        name, shape, datatype, flat, offset = _read_tensor(tensor, binary, offset)
        if name in rows:
            raise BadRequest(f"input {name!r} appears twice")
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            raise BadRequest("inputs disagree on the first (batch) dimension")
        seen[name] = (shape, datatype)
        rows[name] = _reshape(flat, shape)
    if binary is not None and offset != len(binary):
        raise BadRequest(
            f"the body carries {len(binary) - offset} bytes of binary data after the JSON "
            "header that no input's binary_data_size accounts for"
        )
    if spec is not None and spec.config.inputs:
        _check_declared(model, seen, spec)
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
    types = set(map(type, value))
    if list not in types:
        return [len(value)]
    if types != {list}:
        return None
    inner = [_shape_of(v) for v in value]
    first = inner[0]
    if first is None or any(s != first for s in inner):
        return None
    return [len(value), *first]


def _datatype(values: list[Any]) -> str | None:
    types = set(map(type, values))
    if types <= {bool}:
        return "BOOL"
    if types <= {int} and values_match("INT64", values):
        return "INT64"
    if types <= {int, float}:
        # An integer past float range cannot be an FP64 element: the JSON strings then.
        ints = [v for v in values if type(v) is int] if int in types else []
        return "FP64" if not ints or max(map(abs, ints)) < 2**1023 else None
    if types <= {str}:
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


def declared_tensor(declared: dict[str, Any], predictions: list[Any]) -> dict[str, Any]:
    """An output the model declared: its name and datatype, checked against predict()."""
    name, datatype = declared["name"], declared["datatype"]
    shape = _shape_of(predictions)
    if shape is None:
        raise ModelOutputMismatch(f"predict() output {name!r} is ragged: not a tensor")
    if not shape_fits(shape, declared["shape"]):
        raise ModelOutputMismatch(
            f"predict() output {name!r} has shape {shape}; the model declares {declared['shape']}"
        )
    flat = _flatten(predictions)
    if datatype in FLOAT and int in set(map(type, flat)):
        try:
            flat = [float(v) if type(v) is int else v for v in flat]
        except OverflowError:
            raise ModelOutputMismatch(
                f"predict() output {name!r} holds an integer too large for {datatype}"
            ) from None
    if not values_match(datatype, flat):
        raise ModelOutputMismatch(f"predict() output {name!r} does not match datatype {datatype}")
    return {"name": name, "shape": shape, "datatype": datatype, "data": flat}


def outputs_of(predictions: list[Any], spec: VersionSpec | None = None) -> list[dict[str, Any]]:
    declared = list(spec.config.outputs) if spec is not None else []
    if len(declared) > 1 or (
        len(declared) == 1
        and predictions
        and all(isinstance(p, dict) and list(p) == [declared[0]["name"]] for p in predictions)
    ):
        names = [d["name"] for d in declared]
        if not all(isinstance(p, dict) and set(p) == set(names) for p in predictions):
            raise ModelOutputMismatch(
                f"predict() must return one dict per instance with the keys {', '.join(names)} "
                "(the declared outputs)"
            )
        return [declared_tensor(d, [p[d["name"]] for p in predictions]) for d in declared]
    if declared:
        return [declared_tensor(declared[0], predictions)]
    if predictions and all(isinstance(p, dict) for p in predictions):
        keys = list(predictions[0])
        if keys and all(list(p) == keys for p in predictions):
            return [tensor_of(str(k), [p[k] for p in predictions]) for k in keys]
    return [tensor_of("output-0", predictions)]


# ------------------------------------------------------------------ requested outputs
def requested_outputs(body: dict[str, Any]) -> tuple[bool, dict[str, bool] | None]:
    """(binary by default, {output name: binary} when the request names its outputs)."""
    binary_all = _parameters(body, "the request").get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise BadRequest("binary_data_output must be true or false")
    outputs = body.get("outputs")
    if outputs is None:
        return binary_all, None
    if not isinstance(outputs, list):
        raise BadRequest("`outputs` must be a list of requested outputs")
    wanted: dict[str, bool] = {}
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest("each requested output needs a non-empty `name`")
        parameters = _parameters(output, f"output {name!r}")
        if "classification" in parameters:
            raise BadRequest(f"output {name!r}: the classification extension is not supported")
        binary = parameters.get("binary_data", binary_all)
        if not isinstance(binary, bool):
            raise BadRequest(f"output {name!r}: binary_data must be true or false")
        wanted[name] = binary
    return binary_all, wanted


def infer_response(
    answer: dict[str, Any], binary_all: bool, wanted: dict[str, bool] | None
) -> Response:
    """The infer answer: JSON, or (when any output goes binary) the JSON header followed by
    the outputs' bytes, its length in Inference-Header-Content-Length."""
    outputs: list[dict[str, Any]] = answer["outputs"]
    if wanted is not None:
        by_name = {o["name"]: o for o in outputs}
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise BadRequest(
                f"model {answer['model_name']!r} has no output {unknown[0]!r} (its outputs: "
                f"{', '.join(by_name)})"
            )
        outputs = [by_name[n] for n in wanted]
    blobs: list[bytes] = []
    header_outputs = []
    for output in outputs:
        binary = wanted[output["name"]] if wanted is not None else binary_all
        if binary:
            try:
                blob = encode_binary(output["datatype"], output["data"])
            except (OverflowError, struct.error) as exc:
                raise ModelOutputMismatch(
                    f"predict() output {output['name']!r} does not fit {output['datatype']}: {exc}"
                ) from None
            blobs.append(blob)
            output = {k: v for k, v in output.items() if k != "data"}
            output["parameters"] = {"binary_data_size": len(blob)}
        header_outputs.append(output)
    header = orjson.dumps({**answer, "outputs": header_outputs})
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


async def read_infer_request(request: Request, limit: int) -> tuple[Any, memoryview | None]:
    """The JSON header and the binary tensor data after it (None without the extension)."""
    raw = await read_limited(request, limit)
    declared = request.headers.get(HEADER_LENGTH)
    if declared is None:
        return load_json(raw), None
    if not declared.isdigit():
        raise BadRequest(f"Inference-Header-Content-Length must be a byte count, not {declared!r}")
    length = int(declared)
    if length > len(raw):
        raise BadRequest(
            f"Inference-Header-Content-Length is {length} but the body has only {len(raw)} bytes"
        )
    view = memoryview(raw)
    return load_json(bytes(view[:length])), view[length:]


# ------------------------------------------------------------------ routes
NamespaceOf = Callable[[Request], str]


class Named(Protocol):
    @property
    def name(self) -> str: ...


# The namespace's functions (control's records); the index keeps the models among them.
FunctionsOf = Callable[[str], Awaitable[Sequence[Named]]]


def _tensor_metadata(tensors: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [{"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in tensors]


def build_router(
    routes: RouteCache,
    models: ModelBatching,
    namespace_of: NamespaceOf,
    ready: Callable[[], bool],
    max_body_bytes: int,
    functions_of: FunctionsOf | None = None,
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

    def read_namespace(request: Request) -> str:
        # The repository index is a POST that only looks: `read`, where namespace_of would
        # ask a POST for `invoke`.
        principal = principal_of(request.scope)
        namespace = request.query_params.get("namespace") or (
            "default" if principal.namespace == ALL_NAMESPACES else principal.namespace
        )
        validate_name(namespace, "namespace")
        principal.require("read", namespace)
        return namespace

    @router.get("/v2", dependencies=[Depends(authenticated)])
    async def server_metadata() -> dict[str, Any]:
        return {"name": "cumulo", "version": cumulo.__version__, "extensions": EXTENSIONS}

    # Health answers without a key, like /healthz: Kubernetes-style probes carry none, and
    # the answer says nothing about any tenant (gateway/auth.py PUBLIC_PATHS).
    @router.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/v2/health/ready")
    async def server_ready() -> Response:
        # The protocol's readiness is the status (clients read 200); the body says it too.
        is_ready = ready()
        return Response(
            orjson.dumps({"ready": is_ready}),
            status_code=200 if is_ready else 503,
            media_type="application/json",
        )

    async def metadata(namespace: str, name: str, version: str | None) -> dict[str, Any]:
        spec = await model_spec(namespace, name, version)
        route = await routes.get(namespace, name)
        versions = [str(s.version) for s in route.specs] if route else [str(spec.version)]
        return {
            "name": name,
            "versions": versions,
            "platform": "cumulo",
            "inputs": _tensor_metadata(spec.config.inputs),
            "outputs": _tensor_metadata(spec.config.outputs),
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

    @router.post("/v2/repository/index")
    async def repository_index(request: Request) -> list[dict[str, Any]]:
        """The namespace's models, one entry per live version (all READY: models scale
        from zero). Body: optional `{"ready": bool}`."""
        namespace = read_namespace(request)
        raw = await read_limited(request, max_body_bytes)
        body = load_json(raw) if raw.strip() else {}
        if not isinstance(body, dict) or not isinstance(body.get("ready", False), bool):
            raise BadRequest('the index request is {} or {"ready": true|false}')
        functions = await functions_of(namespace) if functions_of is not None else []
        index = []
        for name in sorted(f.name for f in functions):
            route = await routes.get(namespace, name)
            if route is None or not route.specs or route.specs[0].kind != KIND_MODEL:
                continue
            for spec in sorted(route.specs, key=lambda s: s.version):
                index.append({"name": name, "version": str(spec.version), "state": "READY"})
        return index

    async def infer(request: Request, name: str, version: str | None) -> Response:
        spec = await model_spec(namespace_of(request), name, version)
        body, binary = await read_infer_request(request, max_body_bytes)
        instances = instances_of(body, binary, spec, name)
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise BadRequest("`id` must be a string")
        binary_all, wanted = requested_outputs(body)
        declared = [t["name"] for t in spec.config.outputs]
        unknown = [n for n in wanted or () if declared and n not in declared]
        if unknown:  # known before predict runs: refuse without spending it
            raise BadRequest(
                f"model {name!r} has no output {unknown[0]!r} (its outputs: {', '.join(declared)})"
            )
        key_id = principal_of(request.scope).key_id
        answers = await models.predict_many(
            spec, [orjson.dumps(instance) for instance in instances], key_id
        )
        answer = {
            "model_name": name,
            "model_version": str(spec.version),
            "id": request_id or str(uuid.uuid4()),
            "outputs": outputs_of([orjson.loads(a.body) for a in answers], spec),
        }
        return infer_response(answer, binary_all, wanted)

    @router.post("/v2/models/{name}/infer", response_class=Response)
    async def model_infer(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @router.post("/v2/models/{name}/versions/{version}/infer", response_class=Response)
    async def version_infer(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)

    return router
