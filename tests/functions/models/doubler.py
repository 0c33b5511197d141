"""A plain-Python model for the KServe V2 routes: twice the sum of each instance."""

from typing import Any

import cumulo


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [float(value)]


@cumulo.model(name="doubler", batch_wait_ms=20, memory_mb=128)
class Doubler:
    def predict(self, batch: list) -> list:
        return [2 * sum(_numbers(instance)) for instance in batch]
