"""Unsupervised anomaly detection on usage windows (cumulo.ai.windows.UsageRow).

Runs in the sidecar; scikit-learn and numpy are imported inside the methods. One
`IsolationForest` per entity kind ("caller": API keys and anonymous sources; "function"),
trained on the recent windows judged normal, refitted as history grows. A window is an
anomaly when either holds:
- its isolation score is below the `strong_quantile` of the training windows' scores
  (isolated faster than nearly everything seen: an unusual combination), or
- at least one feature lies clearly beyond the training range (above the training's
  99.5th percentile plus a margin, `MARGINS`) and its isolation score is below the
  training median. A single wild feature among seven is isolated only by the trees that
  split on it, so the forest alone under-scores it; the range test catches it, keeps the
  false-positive rate low, and names the reason (`REASONS`) an operator reads.
Anomalous windows are kept out of the training history, so an attack does not teach the
model that attacks are normal.

Features (counts as log1p): requests, errors, error ratio, auth failures, distinct
functions (callers) or callers (functions), mean latency, and the surge = log1p(requests)
over the entity's own running mean of it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

FEATURES = ("requests", "errors", "error_ratio", "denials", "distinct", "latency", "surge")
# What a feature far beyond the norm means, in an alert.
REASONS = {
    "requests": "rate_spike",
    "surge": "rate_spike",
    "errors": "error_storm",
    "error_ratio": "error_storm",
    "denials": "auth_failures",
    "distinct": "many_functions",
    "latency": "latency",
}
# How far beyond the training's 99.5th percentile a feature must be (in feature units).
MARGINS = {
    "requests": math.log(2),
    "errors": math.log(3),
    "error_ratio": 0.25,
    "denials": math.log(3),
    "distinct": math.log(2),
    "latency": math.log(3),
    "surge": math.log(3),
}
SURGE_EWMA = 0.2
MAX_ENTITIES = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    anomalous: bool
    score: float  # isolation score: lower is more anomalous (sklearn score_samples)
    reasons: tuple[str, ...]


@dataclass
class _Model:
    history: deque[list[float]]
    forest: Any = None
    strong_threshold: float = -math.inf  # isolated like almost nothing seen
    usual_threshold: float = -math.inf  # the training windows' median score
    upper: list[float] = field(default_factory=list)
    added: int = 0  # rows learnt since the last fit


class Detector:
    def __init__(
        self,
        *,
        min_train: int = 50,
        max_history: int = 5000,
        refit_growth: float = 0.2,
        strong_quantile: float = 0.002,
        seed: int = 0,
    ) -> None:
        self.min_train = min_train
        self.max_history = max_history
        self.refit_growth = refit_growth
        self.strong_quantile = strong_quantile
        self.seed = seed
        self._models: dict[str, _Model] = {}
        self._baseline: dict[str, float] = {}  # entity -> running mean of log1p(requests)

    def features(self, row: dict[str, Any]) -> list[float]:
        requests = float(row.get("requests", 0))
        errors = float(row.get("errors", 0))
        log_requests = math.log1p(requests)
        entity = str(row.get("entity", ""))
        base = self._baseline.get(entity, log_requests)
        return [
            log_requests,
            math.log1p(errors),
            errors / requests if requests else 0.0,
            math.log1p(float(row.get("denials", 0))),
            math.log1p(float(row.get("distinct", 0))),
            math.log1p(float(row.get("latency_ms", 0.0))),
            max(0.0, log_requests - base),
        ]

    def observe(self, rows: list[dict[str, Any]]) -> None:
        """Learn from windows without judging them (the backlog before the first fit)."""
        for row in rows:
            self._learn(row, self.features(row))
        self._refit_all()

    def score(self, rows: list[dict[str, Any]]) -> list[Verdict]:
        """Judge one closed window's rows, then learn from the normal ones."""
        feats = [self.features(row) for row in rows]
        kinds = [str(row.get("kind", "")) for row in rows]
        scores = [0.0] * len(rows)
        for kind in set(kinds):
            model = self._models.get(kind)
            if model is None or model.forest is None:
                continue
            index = [i for i, k in enumerate(kinds) if k == kind]
            # One call per kind: sklearn's per-call overhead dwarfs a single row's work.
            values = model.forest.score_samples([feats[i] for i in index])
            for i, value in zip(index, values, strict=True):
                scores[i] = float(value)
        verdicts = [self._judge(k, f, s) for k, f, s in zip(kinds, feats, scores, strict=True)]
        for row, f, verdict in zip(rows, feats, verdicts, strict=True):
            if not verdict.anomalous:
                self._learn(row, f)
        self._refit_all()
        return verdicts

    def ready(self, kind: str) -> bool:
        model = self._models.get(kind)
        return model is not None and model.forest is not None

    # ---------------------------------------------------------------- internals
    def _model(self, kind: str) -> _Model:
        model = self._models.get(kind)
        if model is None:
            model = self._models[kind] = _Model(deque(maxlen=self.max_history))
        return model

    def _learn(self, row: dict[str, Any], feats: list[float]) -> None:
        model = self._model(str(row.get("kind", "")))
        model.history.append(feats)
        model.added += 1
        entity = str(row.get("entity", ""))
        if entity in self._baseline or len(self._baseline) < MAX_ENTITIES:
            old = self._baseline.get(entity, feats[0])
            self._baseline[entity] = old + (feats[0] - old) * SURGE_EWMA

    def _refit_all(self) -> None:
        for model in self._models.values():
            rows = len(model.history)
            if rows < self.min_train:
                continue
            # Refit once the history grew (or, when full, turned over) by refit_growth.
            if model.forest is None or model.added >= max(1, rows * self.refit_growth):
                self._fit(model)

    def _fit(self, model: _Model) -> None:
        import numpy as np
        from sklearn.ensemble import IsolationForest  # type: ignore[import-untyped]

        x = np.asarray(model.history, dtype=float)
        forest = IsolationForest(n_estimators=100, random_state=self.seed).fit(x)
        scores = forest.score_samples(x)
        model.forest = forest
        model.strong_threshold = float(np.quantile(scores, self.strong_quantile))
        model.usual_threshold = float(np.quantile(scores, 0.5))
        hi = np.quantile(x, 0.995, axis=0)
        model.upper = [float(h) + MARGINS[name] for h, name in zip(hi, FEATURES, strict=True)]
        model.added = 0

    def _judge(self, kind: str, feats: list[float], score: float) -> Verdict:
        model = self._models.get(kind)
        if model is None or model.forest is None:
            return Verdict(False, 0.0, ())
        beyond = tuple(
            dict.fromkeys(
                REASONS[name]
                for name, value, upper in zip(FEATURES, feats, model.upper, strict=True)
                if value > upper
            )
        )
        if score < model.strong_threshold:
            return Verdict(True, score, beyond or ("unusual_pattern",))
        return Verdict(bool(beyond) and score < model.usual_threshold, score, beyond)
