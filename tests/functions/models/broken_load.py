"""A model whose load() fails: the error reaches the caller as one line."""

import cumulo


@cumulo.model(name="broken-load")
class BrokenLoad:
    def load(self) -> None:
        raise RuntimeError("weights.bin is missing")

    def predict(self, batch: list) -> list:
        return batch
