"""`@cumulo.model`: load() once in the zygote, dynamic batching in the gateway, the three
model formats and the pickle rule (the KServe V2 routes: test_kserve.py)."""

from __future__ import annotations

import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FUNCTIONS, RunningPlatform, wait_until

MODELS = FUNCTIONS / "models"


@pytest.fixture(scope="module")
def counter(platform: RunningPlatform) -> str:
    platform.client().deploy(MODELS / "counter.py")
    return f"{platform.url}/fn/default/counter"


def _post_many(platform: RunningPlatform, url: str, bodies: list[Any]) -> list[httpx.Response]:
    def post(body: Any) -> httpx.Response:
        with platform.http() as http:
            return http.post(url, json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def _metric(text: str, name: str, function: str) -> float:
    prefix = f'{name}{{function="{function}",namespace="default"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def test_concurrent_requests_share_one_batch_and_one_loaded_model(
    platform: RunningPlatform, counter: str
) -> None:
    responses = _post_many(platform, counter, [{"i": i} for i in range(8)])
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    results = [r.json() for r in responses]
    # Each caller got its own instance back, in a batch bigger than one.
    assert [r["x"] for r in results] == [{"i": i} for i in range(8)]
    assert max(r["batch"] for r in results) > 1
    big = next(r for r in responses if r.json()["batch"] > 1)
    assert big.headers["x-cumulo-batch-size"] == str(big.json()["batch"])
    # load() ran once, in the zygote: every worker is a fork of it and shares its state.
    assert len({r["load_id"] for r in results}) == 1
    assert all(r["pid"] != r["loaded_in"] for r in results)
    with platform.http() as http:
        metrics = http.get("/metrics").text
        assert _metric(metrics, "cumulo_model_batch_size_count", "counter") < 8
        assert _metric(metrics, "cumulo_model_batch_size_sum", "counter") >= 8
        assert _metric(metrics, "cumulo_model_batch_wait_seconds_count", "counter") >= 8
        # The batch is one invocation, with a record of its own.
        batch_id = big.headers["x-cumulo-invocation-id"]
        record = http.get(f"/v1/namespaces/default/invocations/{batch_id}")
    assert record.status_code == 200, record.text
    assert record.json()["function"] == "counter"


def test_a_broken_predict_or_bad_instance_is_a_clear_error(
    platform: RunningPlatform, counter: str
) -> None:
    with platform.http() as http:
        short = http.post(counter, json={"break": "length"})
        not_list = http.post(counter, json={"break": "type"})
        not_json = http.post(counter, content=b"{nope")
        empty = http.post(counter)
    assert short.status_code == 502
    assert short.json()["error"]["message"] == (
        "predict() returned 0 results for a batch of 1 instances"
    )
    assert not_list.status_code == 502
    assert "predict() must return a list" in not_list.json()["error"]["message"]
    assert not_json.status_code == 400
    assert empty.status_code == 400
    assert "one JSON instance" in empty.json()["error"]["message"]


def test_a_failing_load_reports_the_users_error(platform: RunningPlatform) -> None:
    platform.client().deploy(MODELS / "broken_load.py")
    with platform.http() as http:
        response = http.post("/fn/default/broken-load", json=1)
    assert response.status_code == 502, response.text
    message = response.json()["error"]["message"]
    assert "RuntimeError: weights.bin is missing" in message
    assert "\n" not in message


# ------------------------------------------------------------------ formats
def _bundle(tmp_path: Path, source: str) -> Path:
    """A deploy directory: the model's module beside the artifacts the test writes."""
    bundle = tmp_path / source.removesuffix(".py")
    bundle.mkdir()
    shutil.copy(MODELS / source, bundle / source)
    return bundle


def test_an_onnx_graph(platform: RunningPlatform, tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[1.0], [2.0]], dtype=np.float32)
    bias = np.array([0.5], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    bundle = _bundle(tmp_path, "onnx_model.py")
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
        bundle / "linear.onnx",
    )
    platform.client().deploy(bundle)
    responses = _post_many(platform, f"{platform.url}/fn/default/onnx-linear", [[1, 1], [2, 3]])
    assert [r.json() for r in responses] == [[3.5], [8.5]]


def test_a_scikit_learn_model_saved_with_skops(platform: RunningPlatform, tmp_path: Path) -> None:
    import numpy as np
    import skops.io
    from sklearn.linear_model import LogisticRegression

    x = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 2.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    model = LogisticRegression().fit(x, y)
    bundle = _bundle(tmp_path, "skops_model.py")
    skops.io.dump(model, bundle / "logreg.skops")
    platform.client().deploy(bundle)
    queries = [[0.0, 0.5], [2.5, 2.0]]
    responses = _post_many(platform, f"{platform.url}/fn/default/skops-logreg", queries)
    expected = model.predict_proba(np.array(queries)).tolist()
    for response, probabilities in zip(responses, expected, strict=True):
        assert response.json() == pytest.approx(probabilities, abs=1e-12)


def test_a_torch_state_dict_and_torchscript(platform: RunningPlatform, tmp_path: Path) -> None:
    import torch

    torch.manual_seed(7)
    linear = torch.nn.Linear(3, 2)
    bundle = _bundle(tmp_path, "torch_model.py")
    torch.save(linear.state_dict(), bundle / "linear_state.pt")
    with warnings.catch_warnings():
        # Deprecated in favour of torch.export, still what many deployed models are.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(linear).save(str(bundle / "linear_script.pt"))
    platform.client().deploy(bundle)
    with platform.http() as http:
        response = http.post("/fn/default/torch-linear", json=[1.0, -2.0, 0.5])
    assert response.status_code == 200, response.text
    with torch.no_grad():
        expected = linear(torch.tensor([1.0, -2.0, 0.5])).tolist()
    from_state, scripted = response.json()
    assert from_state == pytest.approx(expected, abs=1e-6)
    assert scripted == pytest.approx(expected, abs=1e-6)


def test_pickle_is_refused_without_trust_pickle(platform: RunningPlatform, tmp_path: Path) -> None:
    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(np.array([[0.0], [1.0], [2.0]]), np.array([1.0, 3.0, 5.0]))
    bundle = _bundle(tmp_path, "pickle_model.py")
    joblib.dump(model, bundle / "model.joblib")
    platform.client().deploy(bundle)
    with platform.http() as http:
        refused = http.post("/fn/default/pickled", json=[4.0])
    assert refused.status_code == 502
    message = refused.json()["error"]["message"]
    assert "refusing to load model.joblib with joblib" in message
    assert "--trust-pickle" in message

    deployed = platform.cli("deploy", str(bundle), "--trust-pickle")
    assert deployed.returncode == 0, deployed.stderr
    with platform.http() as http:
        accepted = http.post("/fn/default/pickled", json=[4.0])
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == pytest.approx(9.0)


# ------------------------------------------------------------------ KServe V2
@pytest.fixture(scope="module")
def doubler(platform: RunningPlatform) -> str:
    platform.client().deploy(MODELS / "doubler.py")
    return "/v2/models/doubler"


# The KServe V2 routes themselves: tests/ai/test_kserve.py.


def test_an_async_invocation_is_a_batch_of_one(platform: RunningPlatform, doubler: str) -> None:
    with platform.http() as http:
        job_id = http.post("/async/default/doubler", json=[1, 2, 3]).json()["id"]
        view: dict[str, Any] = {}

        def done() -> bool:
            view.update(http.get(f"/v1/invocations/{job_id}").json())
            return view.get("status") in ("succeeded", "failed", "dead")

        wait_until(done, 30, "the async model invocation")
    assert view["status"] == "succeeded", view
    assert view["result"] == 12.0
