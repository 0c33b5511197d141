"""An ONNX graph served through onnxruntime: y = x @ W + b."""

import numpy as np

import cumulo
from cumulo.ai.formats import load_onnx


@cumulo.model(name="onnx-linear", batch_wait_ms=20)
class OnnxLinear:
    def load(self) -> None:
        self.session = load_onnx("linear.onnx", threads=1)

    def predict(self, batch: list) -> list:
        (out,) = self.session.run(None, {"x": np.asarray(batch, dtype=np.float32)})
        return out.tolist()
