"""scalelab.tabular: learning curves of neural networks against classical and tree models on tabular data.

    from scalelab.tabular import MLPClassifier, load_dataset, make_model
    clf = MLPClassifier(hidden_layer_sizes=(64, 64), random_state=0).fit(X, y)

The public names resolve on first use (PEP 562 ``__getattr__``), so ``import scalelab.tabular`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "MLPClassifier": "scalelab.tabular.mlp",
    "MLPRegressor": "scalelab.tabular.mlp",
    "Dataset": "scalelab.tabular.datasets",
    "load_dataset": "scalelab.tabular.datasets",
    "load_csv": "scalelab.tabular.datasets",
    "dataset_names": "scalelab.tabular.datasets",
    "make_model": "scalelab.tabular.baselines",
    "model_names": "scalelab.tabular.baselines",
    "PiecewiseLinearEncoder": "scalelab.tabular.embeddings",
    "fit_power_law": "scalelab.tabular.fits",
    "CurvesConfig": "scalelab.tabular.curves",
    "run_curves": "scalelab.tabular.curves",
    "BenchConfig": "scalelab.tabular.bench",
    "run_bench": "scalelab.tabular.bench",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'scalelab.tabular' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
