"""An ONNX graph whose KServe V2 signature is read from the graph itself."""

from pathlib import Path

import numpy as np

import cumulo
from cumulo.ai.formats import load_onnx, onnx_signature

GRAPH = Path(__file__).parent / "linear.onnx"


@cumulo.model(name="onnx-signed", batch_wait_ms=10, **onnx_signature(GRAPH))
class OnnxSigned:
    def load(self) -> None:
        self.session = load_onnx(GRAPH, threads=1)

    def predict(self, batch: list) -> list:
        (out,) = self.session.run(None, {"x": np.asarray(batch, dtype=np.float32)})
        return out.tolist()
