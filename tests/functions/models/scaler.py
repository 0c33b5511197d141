"""A model with a declared KServe V2 signature: rows of 4 FP32 in, each row doubled (FP32)
and its sum (FP64) out. A row starting below -1000 gets an answer that breaks the
declaration (two values, not four), for the test of that error."""

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
        return [
            {"doubled": [2 * v for v in (row[:2] if row[0] < -1000 else row)], "total": sum(row)}
            for row in batch
        ]
