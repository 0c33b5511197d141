"""A scikit-learn LogisticRegression saved with skops."""

import numpy as np

import cumulo
from cumulo.ai.formats import load_skops


@cumulo.model(name="skops-logreg", batch_wait_ms=20)
class SkopsLogReg:
    def load(self) -> None:
        self.model = load_skops("logreg.skops")

    def predict(self, batch: list) -> list:
        return self.model.predict_proba(np.asarray(batch, dtype=np.float64)).tolist()
