"""A model with a declared KServe V2 signature: rows of 4 FP32 in, each row doubled (FP32)
and its sum (FP64) out."""

import cumulo


@cumulo.model(
    name="scaler",
    batch_wait_ms=10,
    memory_mb=128,
    inputs=[("x", "FP32", [-1, 4])],
    outputs=[("doubled", "FP32", [-1, 4]), ("total", "FP64", [-1])],
)
class Scaler:
    def predict(self, batch: list) -> list:
        return [{"doubled": [2 * v for v in row], "total": sum(row)} for row in batch]
