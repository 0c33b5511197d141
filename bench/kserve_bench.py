"""KServe V2 binary tensors against JSON tensors (issue 16): one 1 MB float32 tensor through
cumulo's `/v2/models/{name}/infer`, echoed back by the model in the same encoding.

Each call includes what a client does on its side too: encode the tensor (JSON: a list of
floats; binary: its raw bytes after the JSON header), send it, wait, and decode the answer
into a numpy array. The model declares `inputs=`/`outputs=` FP32 [-1, 262144] and returns
its instance, so both encodings carry the same 1 MB each way. Calls alternate between the
two encodings on one keep-alive connection (after a few warm-up calls each); the result is
the median milliseconds of each and the ratio JSON / binary.

python -m bench.kserve_bench [--calls 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BenchError, HttpConn, Platform, log, median

ELEMENTS = 262_144  # float32: 1 MiB
CALLS = 30
WARMUP = 3
MODEL = "kserve-echo"
MODEL_SOURCE = f'''
import cumulo


@cumulo.model(
    name="{MODEL}",
    batch_max_size=1,
    batch_wait_ms=0,
    memory_mb=1024,
    inputs=[("x", "FP32", [-1, {ELEMENTS}])],
    outputs=[("y", "FP32", [-1, {ELEMENTS}])],
)
class Echo:
    def predict(self, batch: list) -> list:
        return batch
'''


def _json_call(conn: HttpConn, auth: dict[str, str], tensor: np.ndarray) -> np.ndarray:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, ELEMENTS],
                    "datatype": "FP32",
                    "data": tensor.ravel().tolist(),
                }
            ]
        }
    ).encode()
    response = conn.request("POST", f"/v2/models/{MODEL}/infer", body, auth)
    if response.status != 200:
        raise BenchError(f"JSON infer answered {response.status}: {response.body[:300]!r}")
    output = response.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def _binary_call(conn: HttpConn, auth: dict[str, str], tensor: np.ndarray) -> np.ndarray:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, ELEMENTS],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    headers = {
        **auth,
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    response = conn.request(
        "POST", f"/v2/models/{MODEL}/infer", header + tensor.astype("<f4").tobytes(), headers
    )
    if response.status != 200:
        raise BenchError(f"binary infer answered {response.status}: {response.body[:300]!r}")
    length = int(response.headers["inference-header-content-length"])
    output = json.loads(response.body[:length])["outputs"][0]
    return np.frombuffer(response.body[length:], dtype="<f4").reshape(output["shape"])


def main(calls: int = CALLS) -> dict[str, Any]:
    tensor = np.random.default_rng(16).random((1, ELEMENTS), dtype=np.float32)
    with (
        tempfile.TemporaryDirectory(prefix="cumulo-kserve-bench-") as tmp,
        Platform(
            idle_timeout=600, zygote_idle_timeout=600, extra=["--max-body-mb", "16"], label="cumulo"
        ) as platform,
    ):
        source = Path(tmp) / "kserve_echo.py"
        source.write_text(MODEL_SOURCE)
        platform.deploy(source, MODEL)
        conn = HttpConn(platform.url, timeout=120)
        timings: dict[str, list[float]] = {"json": [], "binary": []}
        try:
            for i in range(WARMUP + calls):
                for kind, call in (("json", _json_call), ("binary", _binary_call)):
                    t0 = time.perf_counter()
                    echoed = call(conn, platform.auth, tensor)
                    elapsed = time.perf_counter() - t0
                    if not np.array_equal(echoed, tensor):
                        raise BenchError(f"the {kind} infer did not echo the tensor")
                    if i >= WARMUP:
                        timings[kind].append(elapsed * 1000)
        finally:
            conn.close()
    json_ms, binary_ms = median(timings["json"]), median(timings["binary"])
    result = {
        "tensor": f"FP32 [1, {ELEMENTS}] ({tensor.nbytes} bytes), echoed back",
        "calls_each": calls,
        "json_median_ms": round(json_ms, 2),
        "binary_median_ms": round(binary_ms, 2),
        "json_over_binary": round(json_ms / binary_ms, 2),
    }
    log(f"kserve: json {json_ms:.1f} ms, binary {binary_ms:.1f} ms per 1 MB infer")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=CALLS)
    print(json.dumps(main(parser.parse_args().calls), indent=2))
