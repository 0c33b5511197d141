"""A scikit-learn model in a raw joblib file: served only with --trust-pickle."""

import numpy as np

import cumulo
from cumulo.ai.formats import load_joblib


@cumulo.model(name="pickled", batch_wait_ms=5)
class Pickled:
    def load(self) -> None:
        self.model = load_joblib("model.joblib")

    def predict(self, batch: list) -> list:
        return self.model.predict(np.asarray(batch, dtype=np.float64)).tolist()
