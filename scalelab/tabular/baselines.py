"""Every model in one kind of pipeline: the same preprocessing in front of our MLP and the scikit-learn baselines.

    from scalelab.tabular.baselines import make_model, model_names
    pipe = make_model("svm", ds, random_state=0)    # Pipeline(ColumnTransformer(scale | one-hot), SVC(rbf))
    pipe.fit(ds.X, ds.y)

Preprocessing: ``StandardScaler`` on numeric columns, ``OneHotEncoder(handle_unknown="ignore")`` on categorical
ones, inside the pipeline, so each model fits it on its own training rows and sees identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC, SVR

from scalelab.common import UsageError
from scalelab.tabular.datasets import Dataset
from scalelab.tabular.mlp import MLPClassifier, MLPRegressor


def make_preprocessor(numeric: list[str], categorical: list[str]) -> ColumnTransformer:
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(("num", StandardScaler(), numeric))
    if categorical:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical))
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def default_mlp_params(n_train: int | None = None) -> dict[str, Any]:
    """MLP settings that work from ~25 to ~100k rows: early stopping once there is enough data to hold some out,
    and a minimum number of optimizer steps on tiny sets (a few epochs of 25 rows is not training)."""
    params: dict[str, Any] = {"hidden_layer_sizes": (128, 128), "learning_rate": 2e-3, "batch_size": 128,
                              "weight_decay": 1e-4, "max_epochs": 300, "n_iter_no_change": 20}
    if n_train is not None:
        params["early_stopping"] = n_train >= 1000
        params["max_epochs"] = int(min(300, max(100, 4000 * 128 // max(n_train, 1))))
    return params


# name -> (task -> factory(random_state, **overrides)); a plain dict, next to its user
MODELS: dict[str, dict[str, Callable[..., Any]]] = {
    "mlp": {"classification": lambda rs, **kw: MLPClassifier(random_state=rs, **kw),
            "regression": lambda rs, **kw: MLPRegressor(random_state=rs, **kw)},
    "svm": {"classification": lambda rs, **kw: SVC(kernel="rbf", random_state=rs, **kw),
            "regression": lambda rs, **kw: SVR(kernel="rbf", **kw)},
    "logreg": {"classification": lambda rs, **kw: LogisticRegression(max_iter=2000, **kw)},
    "linear": {"regression": lambda rs, **kw: LinearRegression(**kw)},
    "ridge": {"regression": lambda rs, **kw: Ridge(**kw)},
}
DEFAULT_MODELS = {"classification": ["mlp", "svm", "logreg"], "regression": ["mlp", "svm", "linear", "ridge"]}
LINEAR = {"logreg", "linear", "ridge"}


def model_names(task: str) -> list[str]:
    return [name for name, by_task in MODELS.items() if task in by_task]


def check_models(models: list[str], task: str) -> list[str]:
    models = list(models) or DEFAULT_MODELS[task]
    for m in models:
        if m not in MODELS:
            raise UsageError(f"unknown model '{m}' (choose from {', '.join(MODELS)})")
        if task not in MODELS[m]:
            raise UsageError(f"model '{m}' does not do {task} (for {task}: {', '.join(model_names(task))})")
    return models


def make_model(name: str, ds: Dataset, random_state: int = 0, **overrides: Any) -> Pipeline:
    """A fresh, unfitted pipeline for model ``name`` on ``ds``'s columns (``overrides`` go to the estimator)."""
    check_models([name], ds.task)
    est = MODELS[name][ds.task](random_state, **overrides)
    return Pipeline([("pre", make_preprocessor(ds.numeric, ds.categorical)), ("model", est)])
