"""A model over BYTES: each text in, its upper case and length out."""

import cumulo


@cumulo.model(
    name="words",
    memory_mb=128,
    inputs=[("text", "BYTES", [-1])],
    outputs=[("upper", "BYTES", [-1]), ("length", "INT32", [-1])],
)
class Words:
    def predict(self, batch: list) -> list:
        return [{"upper": text.upper(), "length": len(text)} for text in batch]
