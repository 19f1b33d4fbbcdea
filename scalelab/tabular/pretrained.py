"""Pretrained in-context tabular models (TabPFN v2, TabICL) as scikit-learn estimators, from weights the user has.

    pip install 'scalelab[pfn]'            # the tabpfn / tabicl packages; no weights come with them
    scalelab curves --dataset uci_pendigits --models tabpfn hgb --weights tabpfn=~/weights/tabpfn-v2-classifier.ckpt

``fit`` stores the training rows as the model's context and ``predict`` runs one forward pass over them; nothing is
trained. The weights path is handed to the library with downloads switched off where it has the switch, and a missing
file is refused before anything is imported, so no code path here reaches the network.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

# kind -> (module, classifier class, regressor class or None, extra keyword arguments that forbid downloads)
BACKENDS: dict[str, tuple[str, str, str | None, dict[str, Any]]] = {
    "tabpfn": ("tabpfn", "TabPFNClassifier", "TabPFNRegressor", {}),
    "tabicl": ("tabicl", "TabICLClassifier", None, {"allow_auto_download": False}),
}


class _InContext(BaseEstimator):
    def __init__(self, kind: str = "tabpfn", weights: str | None = None, device: str = "cpu",
                 random_state: Any = None) -> None:
        self.kind = kind
        self.weights = weights
        self.device = device
        self.random_state = random_state

    _regression = False

    def _backend(self) -> Any:
        if self.kind not in BACKENDS:
            raise ValueError(f"kind must be one of {sorted(BACKENDS)}, got {self.kind!r}")
        if not self.weights or not Path(self.weights).expanduser().is_file():
            raise ValueError(f"{self.kind}: weights file not found: {self.weights!r} (weights are never downloaded)")
        module, clf, reg, no_download = BACKENDS[self.kind]
        name = reg if self._regression else clf
        if name is None:
            raise ValueError(f"{self.kind} does not do regression")
        cls = getattr(importlib.import_module(module), name)
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        return cls(model_path=str(Path(self.weights).expanduser()), device=self.device, random_state=seed,
                   **no_download)

    def fit(self, X: Any, y: Any) -> _InContext:
        X, y = validate_data(self, X, y, dtype=np.float32, y_numeric=self._regression)
        self.model_ = self._backend().fit(X, y)
        if not self._regression:
            self.classes_ = np.asarray(self.model_.classes_)
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(self.model_.predict(validate_data(self, X, dtype=np.float32, reset=False)))


class InContextClassifier(ClassifierMixin, _InContext):
    """TabPFN or TabICL classifier from a local weights file (``kind`` tabpfn | tabicl)."""

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(self.model_.predict_proba(validate_data(self, X, dtype=np.float32, reset=False)))


class InContextRegressor(RegressorMixin, _InContext):
    """TabPFN regressor from a local weights file."""

    _regression = True
