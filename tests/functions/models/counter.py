"""A model that reports how it was batched and where it was loaded."""

import os
import uuid

import cumulo


@cumulo.model(name="counter", batch_max_size=8, batch_wait_ms=300, max_instances=1, memory_mb=256)
class Counter:
    def load(self) -> None:
        self.loaded_in = os.getpid()
        self.load_id = uuid.uuid4().hex

    def predict(self, batch: list) -> list:
        if any(item == {"break": "length"} for item in batch):
            return batch[1:]
        if any(item == {"break": "type"} for item in batch):
            return {"not": "a list"}  # type: ignore[return-value]
        return [
            {
                "x": item,
                "batch": len(batch),
                "pid": os.getpid(),
                "loaded_in": self.loaded_in,
                "load_id": self.load_id,
            }
            for item in batch
        ]
