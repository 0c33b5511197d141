"""KServe V2 / Open Inference Protocol on `@cumulo.model` functions: JSON and binary tensors,
the protocol's error shape, metadata from a declared signature, the repository index,
Triton's own HTTP client against the real platform, and the OpenAI models list."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cumulo.ai.tensors import decode_binary, encode_binary, tensor_specs
from cumulo.errors import BadRequest
from cumulo.sdk.spec import FunctionConfig
from tests.conftest import FUNCTIONS, RunningPlatform

MODELS = FUNCTIONS / "models"
INDEX_NS = "kserve-index"


@pytest.fixture(scope="module")
def doubler(platform: RunningPlatform) -> str:
    platform.client().deploy(MODELS / "doubler.py")
    return "/v2/models/doubler"


@pytest.fixture(scope="module")
def scaler(platform: RunningPlatform) -> str:
    platform.client().deploy(MODELS / "scaler.py")
    return "/v2/models/scaler"


@pytest.fixture(scope="module")
def words(platform: RunningPlatform) -> str:
    platform.client().deploy(MODELS / "words.py")
    return "/v2/models/words"


def binary_request(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    """A request body with the binary tensor extension, as the protocol lays it out."""
    encoded = json.dumps(header).encode()
    return encoded + b"".join(blobs), {"Inference-Header-Content-Length": str(len(encoded))}


def binary_outputs(response: httpx.Response) -> tuple[dict[str, Any], dict[str, bytes]]:
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    blobs, at = {}, length
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[output["name"]] = response.content[at : at + size]
            at += size
    assert at == len(response.content)
    return header, blobs


# ------------------------------------------------------------------ in process
@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [
        ("BOOL", "?"),
        ("UINT8", "u1"),
        ("UINT16", "<u2"),
        ("UINT32", "<u4"),
        ("UINT64", "<u8"),
        ("INT8", "i1"),
        ("INT16", "<i2"),
        ("INT32", "<i4"),
        ("INT64", "<i8"),
        ("FP16", "<f2"),
        ("FP32", "<f4"),
        ("FP64", "<f8"),
    ],
)
def test_the_binary_codec_matches_numpys_little_endian_layout(datatype: str, dtype: str) -> None:
    array = (np.arange(6) % 2 == 1) if dtype == "?" else np.arange(6).astype(dtype) * 3
    array = array.reshape(2, 3)
    flat = decode_binary("x", datatype, [2, 3], memoryview(array.tobytes()))
    assert flat == array.ravel().tolist()
    assert encode_binary(datatype, flat) == array.tobytes()


def test_a_binary_tensor_of_the_wrong_size_or_bad_bytes_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"^input 'x': shape \[2, 3\] of FP32 needs 24 bytes, "):
        decode_binary("x", "FP32", [2, 3], memoryview(bytes(20)))
    with pytest.raises(BadRequest, match=r"^input 's': BYTES element 0 is not UTF-8 text$"):
        decode_binary("s", "BYTES", [1], memoryview(struct.pack("<I", 1) + b"\xff"))
    with pytest.raises(BadRequest, match=r"needs 2 BYTES elements, the binary data holds 1$"):
        decode_binary("s", "BYTES", [2], memoryview(struct.pack("<I", 1) + b"a"))


def test_a_declared_signature_is_checked_at_decoration() -> None:
    assert tensor_specs([("x", "FP32", [-1, 4])], "inputs") == (
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
    )
    with pytest.raises(BadRequest, match="inputs: tensor 'x' has unknown datatype 'FP33'"):
        FunctionConfig(inputs=(("x", "FP33", [1]),))
    with pytest.raises(BadRequest, match="outputs: tensor 'y' needs a shape of integers"):
        FunctionConfig(outputs=({"name": "y", "datatype": "FP32", "shape": "4"},))
    config = FunctionConfig(inputs=(("x", "FP32", (-1, 4)),))
    assert FunctionConfig.from_dict(config.to_dict()) == config


# ------------------------------------------------------------------ the protocol over HTTP
def test_metadata_readiness_and_health(platform: RunningPlatform, doubler: str) -> None:
    with platform.http() as http:
        metadata = http.get(doubler)
        ready = http.get(f"{doubler}/ready")
        unknown = http.get("/v2/models/no-such-model")
        not_a_model = http.get("/v2/models/embedder-missing/ready")
        server = http.get("/v2")
    assert metadata.status_code == 200, metadata.text
    body = metadata.json()
    assert body["name"] == "doubler"
    assert body["versions"]
    assert body["platform"] == "cumulo"
    assert (body["inputs"], body["outputs"]) == ([], [])  # doubler declares no signature
    assert ready.json() == {"name": "doubler", "ready": True}
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "model 'no-such-model' not found"}
    assert not_a_model.status_code == 404
    assert server.json()["extensions"] == ["binary_tensor_data", "model_repository_index"]
    # Probes carry no key (like /healthz); model metadata still needs one.
    assert httpx.get(f"{platform.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{platform.url}/v2/health/ready").json() == {"ready": True}
    anonymous = httpx.get(f"{platform.url}{doubler}")
    assert anonymous.status_code == 401
    assert isinstance(anonymous.json()["error"], str)


def test_a_declared_signature_is_the_metadata(platform: RunningPlatform, scaler: str) -> None:
    with platform.http() as http:
        body = http.get(scaler).json()
    assert body["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert body["outputs"] == [
        {"name": "doubled", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "total", "datatype": "FP64", "shape": [-1]},
    ]


def test_json_infer(platform: RunningPlatform, doubler: str) -> None:
    request = {
        "id": "req-1",
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}],
    }
    two_inputs = {
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]},
            {"name": "b", "shape": [2, 1], "datatype": "FP64", "data": [[0.5], [1.5]]},
        ]
    }
    with platform.http() as http:
        answer = http.post(f"{doubler}/infer", json=request)
        nested = http.post(f"{doubler}/infer", json=two_inputs)
        versions = http.get(doubler).json()["versions"]
        pinned = http.post(f"{doubler}/versions/{versions[0]}/infer", json=request)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "model_name": "doubler",
        "model_version": versions[0],
        "id": "req-1",
        "outputs": [{"name": "output-0", "shape": [2], "datatype": "FP64", "data": [12.0, 30.0]}],
    }
    assert nested.json()["outputs"][0]["data"] == [3.0, 7.0]
    assert nested.json()["id"]  # generated when the request has none
    assert pinned.json()["outputs"] == answer.json()["outputs"]


def test_binary_infer_with_declared_outputs(platform: RunningPlatform, scaler: str) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
    body, headers = binary_request(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [3, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [
                {"name": "doubled", "parameters": {"binary_data": True}},
                {"name": "total"},
            ],
        },
        x.tobytes(),
    )
    with platform.http() as http:
        response = http.post(f"{scaler}/infer", content=body, headers=headers)
        everything = http.post(
            f"{scaler}/infer",
            json={
                "inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.tolist()}],
                "parameters": {"binary_data_output": True},
            },
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, blobs = binary_outputs(response)
    doubled, total = header["outputs"]
    assert doubled == {
        "name": "doubled",
        "shape": [3, 4],
        "datatype": "FP32",
        "parameters": {"binary_data_size": 48},
    }
    assert np.array_equal(np.frombuffer(blobs["doubled"], "<f4").reshape(3, 4), x * 2)
    # Not asked for binary: JSON data in the header.
    assert total == {
        "name": "total",
        "shape": [3],
        "datatype": "FP64",
        "data": pytest.approx(x.sum(axis=1).tolist()),
    }
    _, all_blobs = binary_outputs(everything)
    assert set(all_blobs) == {"doubled", "total"}
    assert np.frombuffer(all_blobs["total"], "<f8").tolist() == pytest.approx(x.sum(axis=1))


def test_binary_bytes_tensors(platform: RunningPlatform, words: str) -> None:
    texts = ["héllo", "", "wörld"]
    blob = encode_binary("BYTES", texts)
    body, headers = binary_request(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [3],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        blob,
    )
    with platform.http() as http:
        response = http.post(f"{words}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    header, blobs = binary_outputs(response)
    assert [o["datatype"] for o in header["outputs"]] == ["BYTES", "INT32"]
    assert decode_binary("upper", "BYTES", [3], memoryview(blobs["upper"])) == [
        "HÉLLO",
        "",
        "WÖRLD",
    ]
    assert np.frombuffer(blobs["length"], "<i4").tolist() == [5, 0, 5]


FP32_2x2 = {"name": "x", "shape": [2, 2], "datatype": "FP32"}


@pytest.mark.parametrize(
    ("header", "tail", "length", "message"),
    [
        (
            {"inputs": [{**FP32_2x2, "parameters": {"binary_data_size": 12}}]},
            bytes(12),
            None,
            "input 'x': shape [2, 2] of FP32 needs 16 bytes, binary_data_size is 12",
        ),
        (
            {"inputs": [{**FP32_2x2, "parameters": {"binary_data_size": 16}}]},
            bytes(8),
            None,
            "input 'x': binary_data_size is 16 but only 8 bytes of binary data are left "
            "after the JSON header",
        ),
        (
            {"inputs": [{**FP32_2x2, "parameters": {"binary_data_size": 16}}]},
            bytes(20),
            None,
            "the body carries 4 bytes of binary data after the JSON header that no input's "
            "binary_data_size accounts for",
        ),
        (
            {"inputs": [{**FP32_2x2, "parameters": {"binary_data_size": 16}}]},
            bytes(16),
            "100000",
            "Inference-Header-Content-Length is 100000 but the body has only",
        ),
        (
            {"inputs": [{**FP32_2x2, "parameters": {"binary_data_size": 16}}]},
            bytes(16),
            "lots",
            "Inference-Header-Content-Length must be a byte count, not 'lots'",
        ),
        (
            {"inputs": [{**FP32_2x2, "data": [1, 2, 3, 4], "parameters": {"binary_data_size": 0}}]},
            b"",
            None,
            "input 'x' has both `data` and binary_data_size",
        ),
        (
            {"inputs": [{**FP32_2x2, "parameters": {"binary_data_size": 0}}]},
            b"",
            "",  # no header at all: a plain JSON request
            "input 'x' has binary_data_size but the request has no "
            "Inference-Header-Content-Length header",
        ),
    ],
)
def test_binary_tensors_whose_sizes_disagree_are_400s_in_the_protocols_shape(
    platform: RunningPlatform,
    doubler: str,
    header: dict[str, Any],
    tail: bytes,
    length: str | None,
    message: str,
) -> None:
    body, headers = binary_request(header, tail)
    if length == "":
        del headers["Inference-Header-Content-Length"]
    elif length is not None:
        headers["Inference-Header-Content-Length"] = length
    with platform.http() as http:
        response = http.post(f"{doubler}/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"]
    assert response.json()["error"].startswith(message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "`inputs` must be a non-empty list of tensors"),
        (
            {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]},
            "input 'x': shape [2, 2] needs 4 values, data has 3",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP33", "data": [1]}]},
            "input 'x': unknown datatype 'FP33'",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": ["a"]}]},
            "input 'x': data does not match datatype INT32",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]},
            "input 'x': data does not match datatype INT8",
        ),
        (
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                "outputs": [{"name": "nope"}],
            },
            "model 'doubler' has no output 'nope' (its outputs: output-0)",
        ),
    ],
)
def test_malformed_json_requests(
    platform: RunningPlatform, doubler: str, body: dict[str, Any], message: str
) -> None:
    with platform.http() as http:
        response = http.post(f"{doubler}/infer", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(message)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (
            {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]},
            "input 'x': datatype FP64 does not match the model's FP32",
        ),
        (
            {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
            "input 'x': shape [1, 3] does not match the model's [-1, 4]",
        ),
        (
            {"name": "y", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            "model 'scaler' has no input 'y' (its inputs: x)",
        ),
        (
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            "model 'scaler' has no output 'sum' (its outputs: doubled, total)",
        ),
    ],
)
def test_requests_are_checked_against_the_declared_inputs(
    platform: RunningPlatform, scaler: str, tensor: dict[str, Any], message: str
) -> None:
    outputs = [{"name": "sum"}]  # only reached once the inputs pass
    with platform.http() as http:
        response = http.post(f"{scaler}/infer", json={"inputs": [tensor], "outputs": outputs})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": message}


def test_an_answer_that_breaks_the_declared_outputs_is_a_502(
    platform: RunningPlatform, scaler: str
) -> None:
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [-2000, 0, 0, 0]}
    with platform.http() as http:
        response = http.post(f"{scaler}/infer", json={"inputs": [tensor]})
    assert response.status_code == 502, response.text
    assert response.json() == {
        "error": "predict() output 'doubled' has shape [1, 2]; the model declares [-1, 4]"
    }


def test_every_error_on_v2_routes_has_the_protocols_shape(
    platform: RunningPlatform, doubler: str
) -> None:
    with platform.http() as http:
        not_json = http.post(f"{doubler}/infer", content=b"{nope")
        no_route = http.get("/v2/models/doubler/config")
        too_big = http.post(f"{doubler}/infer", content=b" " * (2 * 1024 * 1024))
        elsewhere = http.get("/v1/namespaces/default/functions/no-such-function")
    assert not_json.status_code == 400
    assert not_json.json()["error"].startswith("the request body is not valid JSON")
    assert no_route.status_code == 404
    assert isinstance(no_route.json()["error"], str)
    assert too_big.status_code == 413
    assert too_big.json()["error"].startswith("the request body is")
    # Outside /v2, cumulo's own shape.
    assert elsewhere.json()["error"]["code"]


def test_the_repository_index_lists_the_namespaces_models(platform: RunningPlatform) -> None:
    client = platform.client(INDEX_NS)
    client.deploy(MODELS / "scaler.py")
    client.deploy(MODELS / "doubler.py")
    client.deploy(FUNCTIONS / "kit.py", name="not-a-model", handler="kit.echo")
    with platform.http() as http:
        index = http.post("/v2/repository/index", params={"namespace": INDEX_NS})
        ready = http.post(
            "/v2/repository/index", params={"namespace": INDEX_NS}, json={"ready": True}
        )
        bad = http.post("/v2/repository/index", params={"namespace": INDEX_NS}, json=[1])
    assert index.status_code == 200, index.text
    assert index.json() == [
        {"name": "doubler", "version": "1", "state": "READY"},
        {"name": "scaler", "version": "1", "state": "READY"},
    ]
    assert ready.json() == index.json()
    assert bad.status_code == 400
    assert bad.json() == {"error": 'the index request is {} or {"ready": true|false}'}


# ------------------------------------------------------------------ Triton's client, unchanged
def test_tritonclient_http_with_its_default_settings(
    platform: RunningPlatform, scaler: str, words: str
) -> None:
    import tritonclient.http as triton
    from tritonclient.http import InferenceServerClientPlugin
    from tritonclient.utils import InferenceServerException

    class Bearer(InferenceServerClientPlugin):
        """cumulo's API key on every request, through the client's own plugin hook."""

        def __call__(self, request: Any) -> None:
            request.headers["authorization"] = f"Bearer {platform.api_key}"

    url = platform.url.removeprefix("http://")
    client = triton.InferenceServerClient(url)
    client.register_plugin(Bearer())
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("scaler")
        assert not client.is_model_ready("no-such-model")
        assert client.get_server_metadata()["name"] == "cumulo"
        metadata = client.get_model_metadata("scaler")
        assert [i["name"] for i in metadata["inputs"]] == ["x"]
        assert {m["name"] for m in client.get_model_repository_index()} >= {"scaler", "words"}

        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        for binary in (True, False):
            tensor = triton.InferInput("x", [2, 4], "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            outputs = (
                None
                if binary  # the client's default: every output as binary
                else [
                    triton.InferRequestedOutput("doubled", binary_data=False),
                    triton.InferRequestedOutput("total", binary_data=False),
                ]
            )
            result = client.infer("scaler", [tensor], outputs=outputs, request_id="t-1")
            assert result.get_response()["id"] == "t-1"
            doubled = result.as_numpy("doubled")
            assert doubled.dtype == np.float32
            assert np.array_equal(doubled, x * 2)
            assert result.as_numpy("total").tolist() == pytest.approx(x.sum(axis=1))

        texts = triton.InferInput("text", [2], "BYTES")
        texts.set_data_from_numpy(np.array(["ab", "çd"], dtype=object))
        result = client.infer("words", [texts])
        assert result.as_numpy("upper").tolist() == [b"AB", "ÇD".encode()]
        assert result.as_numpy("length").tolist() == [2, 2]

        wrong = triton.InferInput("x", [2, 4], "FP64")
        wrong.set_data_from_numpy(x.astype(np.float64))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("scaler", [wrong])
        assert raised.value.status() == "400"
        assert raised.value.message() == "input 'x': datatype FP64 does not match the model's FP32"
    finally:
        client.close()

    anonymous = triton.InferenceServerClient(url)
    try:
        with pytest.raises(InferenceServerException) as raised:
            anonymous.get_model_metadata("scaler")
        assert raised.value.status() == "401"
        assert isinstance(raised.value.message(), str)
    finally:
        anonymous.close()


def test_an_onnx_models_signature_comes_from_its_graph(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    import onnx
    import tritonclient.http as triton
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[1.0], [2.0]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.array([0.5], dtype=np.float32), "b"),
        ],
    )
    bundle = tmp_path / "onnx_signed"
    bundle.mkdir()
    shutil.copy(MODELS / "onnx_signed.py", bundle / "onnx_signed.py")
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
        bundle / "linear.onnx",
    )
    platform.client().deploy(bundle)
    with platform.http() as http:
        metadata = http.get("/v2/models/onnx-signed").json()
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]

    client = triton.InferenceServerClient(platform.url.removeprefix("http://"))
    try:
        x = np.array([[1, 1], [2, 3], [0, -1]], dtype=np.float32)
        tensor = triton.InferInput("x", [3, 2], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(
            "onnx-signed", [tensor], headers={"authorization": f"Bearer {platform.api_key}"}
        )
        assert result.as_numpy("y").tolist() == [[3.5], [8.5], [-1.5]]
    finally:
        client.close()


# ------------------------------------------------------------------ OpenAI's models list
def test_the_openai_client_lists_the_embedding_models(platform: RunningPlatform) -> None:
    import openai

    with openai.OpenAI(base_url=f"{platform.url}/ai/v1", api_key=platform.api_key) as client:
        listed = client.models.list()
        assert [m.id for m in listed.data] == ["all-MiniLM-L6-v2"]
        assert listed.data[0].owned_by == "cumulo"
        alias = client.models.retrieve("sentence-transformers/all-MiniLM-L6-v2")
        assert alias.object == "model"
        with pytest.raises(openai.NotFoundError, match="model 'gpt-4' not found"):
            client.models.retrieve("gpt-4")
