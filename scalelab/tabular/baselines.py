"""Every model in one kind of pipeline: the same preprocessing in front of our MLPs, trees, kernels and linear models.

    from scalelab.tabular.baselines import make_model, model_names
    pipe = make_model("hgb", ds, random_state=0)    # Pipeline(ColumnTransformer(scale | one-hot), HistGradientBoosting)
    pipe.fit(ds.X, ds.y)

Preprocessing: ``StandardScaler`` on numeric columns, ``OneHotEncoder(handle_unknown="ignore")`` on categorical
ones, inside the pipeline, so each model fits it on its own training rows and sees identical inputs (trees are
unaffected by the scaling; the tuned MLP adds its own numeric encoding after it, as part of the model).

Models by family (``FAMILY``): linear (logreg | linear, ridge), kernel (svm), trees (hgb; lightgbm, xgboost, catboost
with the ``[trees]`` extra), mlp (mlp: the plain MLP; mlp_ple: the tuned recipe below), pretrained (tabpfn, tabicl
with the ``[pfn]`` extra and weights the user already has). A model whose extra is missing is a ``UsageError``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import LabelEncoder, OneHotEncoder, StandardScaler
from sklearn.svm import SVC, SVR
from sklearn.utils.validation import check_is_fitted

from scalelab.common import UsageError
from scalelab.tabular.datasets import Dataset
from scalelab.tabular.embeddings import PiecewiseLinearEncoder
from scalelab.tabular.mlp import MLPClassifier, MLPRegressor
from scalelab.tabular.pretrained import InContextClassifier, InContextRegressor


def make_preprocessor(numeric: list[str], categorical: list[str]) -> ColumnTransformer:
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(("num", StandardScaler(), numeric))
    if categorical:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical))
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def default_mlp_params(n_train: int | None = None, task: str = "classification") -> dict[str, Any]:
    """The plain MLP's settings, from ~25 to ~100k rows: a minimum number of optimizer steps on tiny sets (a few
    epochs of 25 rows is not training), and for a regressor early stopping once there is enough data to hold some
    out. A classifier trains with a cosine decay and the gce loss at every size (cross-entropy misplaces the
    boundaries on noisy labels, see ``MLPClassifier``), for up to 100 epochs from 1,000 rows (more passes over noisy
    labels memorise them, while small clean sets need the extra passes), with ``early_stopping="refit"``: a held-out
    tenth decides whether to stop sooner, and only where it shows overfitting beyond its noise (one-hot columns
    that the net memorises), then every row is refitted. Stopping on a tenth's accuracy instead stops on noise and
    trains on a tenth less data, which costs accuracy wherever all the epochs help."""
    params: dict[str, Any] = {"hidden_layer_sizes": (128, 128), "learning_rate": 2e-3, "batch_size": 128,
                              "weight_decay": 1e-4, "max_epochs": 300, "n_iter_no_change": 20}
    if n_train is not None:
        params["early_stopping"] = n_train >= 1000
        params["max_epochs"] = int(min(300, max(100, 4000 * 128 // max(n_train, 1))))
        if task == "classification":
            params.update(loss="gce", lr_schedule="cosine", early_stopping="refit")
            if n_train >= 1000:
                params["max_epochs"] = 100
    return params


def tuned_mlp_params(n_train: int | None = None) -> dict[str, Any]:
    """The tuned recipe (RealMLP / TabM-style defaults): piecewise-linear numeric encoding in front, a wider net,
    AdamW with decoupled weight decay, a cosine learning-rate decay to zero (the end of training averages out label
    noise instead of bouncing on it) and early stopping on a held-out tenth that keeps the best weights."""
    params: dict[str, Any] = {"hidden_layer_sizes": (256, 256), "activation": "relu", "optimizer": "adamw",
                              "learning_rate": 1e-3, "lr_schedule": "cosine", "weight_decay": 1e-2,
                              "batch_size": 256, "max_epochs": 100, "n_iter_no_change": 30}
    if n_train is not None:
        params["early_stopping"] = n_train >= 1000
        params["batch_size"] = int(min(256, max(32, n_train // 16)))  # at least ~16 steps an epoch on small sets
        params["max_epochs"] = int(min(300, max(60, 6000 * params["batch_size"] // max(n_train, 1))))
    return params


def _tuned_mlp(task: str, rs: Any, n_bins: int = 16, **kw: Any) -> Pipeline:
    est = MLPClassifier if task == "classification" else MLPRegressor
    return make_pipeline(PiecewiseLinearEncoder(n_bins=n_bins), est(random_state=rs, **kw))


def _lightgbm(task: str, rs: Any, **kw: Any) -> Any:
    import lightgbm

    cls = lightgbm.LGBMClassifier if task == "classification" else lightgbm.LGBMRegressor
    return cls(random_state=rs, n_jobs=1, verbose=-1, **kw)


class LabelEncoded(ClassifierMixin, BaseEstimator):
    """A classifier fitted on labels 0..k-1 (what XGBoost insists on) that predicts the original labels."""

    def __init__(self, estimator: Any = None) -> None:
        self.estimator = estimator

    def fit(self, X: Any, y: Any) -> LabelEncoded:
        self.encoder_ = LabelEncoder().fit(y)
        self.classes_ = self.encoder_.classes_
        self.estimator_ = clone(self.estimator).fit(X, self.encoder_.transform(y))
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[np.asarray(self.estimator_.predict(X)).astype(int).ravel()]


def _xgboost(task: str, rs: Any, **kw: Any) -> Any:
    import xgboost

    if task == "classification":
        return LabelEncoded(xgboost.XGBClassifier(random_state=rs, n_jobs=1, tree_method="hist", **kw))
    return xgboost.XGBRegressor(random_state=rs, n_jobs=1, tree_method="hist", **kw)


def _catboost(task: str, rs: Any, **kw: Any) -> Any:
    import catboost

    cls = catboost.CatBoostClassifier if task == "classification" else catboost.CatBoostRegressor
    kw.setdefault("iterations", 500)  # half the library default: the benchmark fits it hundreds of times
    return cls(random_seed=rs, thread_count=1, verbose=0, allow_writing_files=False, **kw)


def _both(make: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    return {task: (lambda rs, _t=task, **kw: make(_t, rs, **kw)) for task in ("classification", "regression")}


# name -> (task -> factory(random_state, **overrides)); a plain dict, next to its user
MODELS: dict[str, dict[str, Callable[..., Any]]] = {
    "mlp": {"classification": lambda rs, **kw: MLPClassifier(random_state=rs, **kw),
            "regression": lambda rs, **kw: MLPRegressor(random_state=rs, **kw)},
    "mlp_ple": _both(_tuned_mlp),
    "svm": {"classification": lambda rs, **kw: SVC(kernel="rbf", random_state=rs, **kw),
            "regression": lambda rs, **kw: SVR(kernel="rbf", **kw)},
    "logreg": {"classification": lambda rs, **kw: LogisticRegression(max_iter=2000, **kw)},
    "linear": {"regression": lambda rs, **kw: LinearRegression(**kw)},
    "ridge": {"regression": lambda rs, **kw: Ridge(**kw)},
    "hgb": {"classification": lambda rs, **kw: HistGradientBoostingClassifier(random_state=rs, **kw),
            "regression": lambda rs, **kw: HistGradientBoostingRegressor(random_state=rs, **kw)},
    "lightgbm": _both(_lightgbm),
    "xgboost": _both(_xgboost),
    "catboost": _both(_catboost),
    "tabpfn": {"classification": lambda rs, **kw: InContextClassifier("tabpfn", random_state=rs, **kw),
               "regression": lambda rs, **kw: InContextRegressor("tabpfn", random_state=rs, **kw)},
    "tabicl": {"classification": lambda rs, **kw: InContextClassifier("tabicl", random_state=rs, **kw)},
}
DEFAULT_MODELS = {"classification": ["mlp", "mlp_ple", "hgb", "svm", "logreg"],
                  "regression": ["mlp", "mlp_ple", "hgb", "svm", "linear", "ridge"]}
LINEAR = {"logreg", "linear", "ridge"}
FAMILY = {"logreg": "linear", "linear": "linear", "ridge": "linear", "svm": "kernel", "hgb": "trees",
          "lightgbm": "trees", "xgboost": "trees", "catboost": "trees", "mlp": "mlp", "mlp_ple": "mlp",
          "tabpfn": "pretrained", "tabicl": "pretrained"}
# model -> (module it needs, the pyproject extra that installs it)
EXTRAS = {"lightgbm": ("lightgbm", "trees"), "xgboost": ("xgboost", "trees"), "catboost": ("catboost", "trees"),
          "tabpfn": ("tabpfn", "pfn"), "tabicl": ("tabicl", "pfn")}
PRETRAINED = {"tabpfn", "tabicl"}


def model_names(task: str) -> list[str]:
    return [name for name, by_task in MODELS.items() if task in by_task]


def check_models(models: list[str], task: str, weights: dict[str, str] | None = None) -> list[str]:
    """The models to run (the task's default set when empty); a UsageError for an unknown model, one that does not
    do ``task``, one whose optional extra is not installed, or a pretrained one without a weights file."""
    models = list(models) or DEFAULT_MODELS[task]
    for m in models:
        if m not in MODELS:
            raise UsageError(f"unknown model '{m}' (choose from {', '.join(MODELS)})")
        if task not in MODELS[m]:
            raise UsageError(f"model '{m}' does not do {task} (for {task}: {', '.join(model_names(task))})")
        if m in EXTRAS and importlib.util.find_spec(EXTRAS[m][0]) is None:
            module, extra = EXTRAS[m]
            raise UsageError(f"model '{m}' needs the optional extra [{extra}] ({module} is not installed): "
                             f"pip install 'scalelab[{extra}]'")
        if m in PRETRAINED:
            path = (weights or {}).get(m)
            if not path:
                raise UsageError(f"model '{m}' needs its weights file: --weights {m}=PATH (never downloaded)")
            if not Path(path).is_file():
                raise UsageError(f"{path}: weights file for '{m}' not found")
    return models


def parse_weights(specs: list[str]) -> dict[str, str]:
    """['tabpfn=/w/clf.ckpt'] -> {'tabpfn': '/w/clf.ckpt'}."""
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name not in PRETRAINED or not path:
            raise UsageError(f"--weights '{spec}': expected MODEL=PATH, MODEL one of {', '.join(sorted(PRETRAINED))}")
        out[name] = path
    return out


def make_model(name: str, ds: Dataset, random_state: int = 0, **overrides: Any) -> Pipeline:
    """A fresh, unfitted pipeline for model ``name`` on ``ds``'s columns (``overrides`` go to the estimator)."""
    if name not in MODELS or ds.task not in MODELS[name]:
        check_models([name], ds.task)
    est = MODELS[name][ds.task](random_state, **overrides)
    return Pipeline([("pre", make_preprocessor(ds.numeric, ds.categorical)), ("model", est)])


def model_overrides(name: str, n_train: int, mlp: dict[str, Any] | None = None,
                    weights: dict[str, str] | None = None, device: str = "cpu",
                    task: str = "classification") -> dict[str, Any]:
    """Size-dependent defaults for ``name`` at ``n_train`` rows of a ``task``; ``mlp`` overrides the plain MLP's
    settings."""
    if name == "mlp":
        kw = default_mlp_params(n_train, task)
        kw.update(mlp or {})
        kw["device"] = device
        return kw
    if name == "mlp_ple":
        return {**tuned_mlp_params(n_train), "device": device}
    if name in PRETRAINED:
        return {"weights": (weights or {}).get(name), "device": device}
    return {}
