"""Tabular data sets by name: scikit-learn's bundled ones, the real public sets (found through
scalelab/data_sources.py: data folder, cache), any CSV, and synthetic
tasks whose floor is known exactly.

    from scalelab.tabular.datasets import load_dataset, load_csv
    ds = load_dataset("magic_gamma_telescope")          # a Dataset: X (DataFrame), y, task, columns, floor
    ds = load_csv("my.csv", target="price")             # what `scalelab curves --data my.csv --target price` does
    ds = load_dataset("teacher", n_samples=20000)       # Bayes accuracy is exactly 1 - noise
    ds = load_dataset("teacher", teacher_kind="plain")  # no even symmetry: logistic regression well above majority

Every problem with a file (missing, empty, unknown column, NaNs, text where numbers are needed, one class) raises
``UsageError`` with one line that names the file.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scalelab import data_sources
from scalelab.common import UsageError


@dataclass
class Dataset:
    """Features, target and what is known about them. ``X_test``/``y_test`` hold a split that ships with the data."""

    name: str
    X: pd.DataFrame
    y: np.ndarray
    task: str  # "classification" | "regression"
    numeric: list[str]
    categorical: list[str]
    floor: float | None = None  # Bayes accuracy (classification) or irreducible MSE (regression), when known
    X_test: pd.DataFrame | None = None
    y_test: np.ndarray | None = None
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return int(len(np.unique(self.y))) if self.task == "classification" else 0


# ----------------------------------------------------------------------------------------------- the CSV loader

def _is_text(col: pd.Series) -> bool:
    """Text column (object or pandas' string dtype), not numbers or booleans."""
    return not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col))


def load_csv(path: str | Path, target: str, task: str = "auto", header: bool = True,
             names: list[str] | None = None, categorical: list[str] | None = None, name: str | None = None,
             **read_kw: Any) -> Dataset:
    """Read a CSV into a ``Dataset``: text columns become categorical, the rest numeric.

    ``task`` "auto" makes a text target, or an integer target with at most 50 distinct values, a classification.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, header=0 if header else None, names=names, skipinitialspace=True, **read_kw)
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot parse as CSV ({str(e).splitlines()[0]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise UsageError(f"{path}: no data rows")
    if target not in df.columns:
        cols = ", ".join(df.columns[:20]) + (" ..." if len(df.columns) > 20 else "")
        raise UsageError(f"{path}: no column '{target}' (columns: {cols})")
    first_line = 2 if header else 1  # file line of data row 0
    nan_rows, nan_cols = np.nonzero(df.isna().to_numpy())
    if len(nan_rows):
        col = df.columns[nan_cols[0]]
        raise UsageError(f"{path}: line {nan_rows[0] + first_line}: missing value (NaN) in column '{col}' "
                         f"({len(nan_rows)} missing in all; fill or drop them first)")
    numeric = df.select_dtypes(include="number")
    inf_rows, inf_cols = np.nonzero(np.isinf(numeric.to_numpy(dtype=np.float64)))
    if len(inf_rows):
        col = numeric.columns[inf_cols[0]]
        raise UsageError(f"{path}: line {inf_rows[0] + first_line}: infinite value in column '{col}' "
                         f"({len(inf_rows)} in all; replace or drop them first)")
    categorical = list(categorical or [])
    for col in df.columns:
        if _is_text(df[col]) and col != target and col not in categorical:
            as_num = pd.to_numeric(df[col], errors="coerce")
            bad = as_num.isna().to_numpy()
            if bad.mean() < 0.5:  # mostly numbers: the text values are errors, not categories
                i = int(np.argmax(bad))
                raise UsageError(f"{path}: line {i + first_line}: column '{col}' needs numbers, "
                                 f"got {df[col].iloc[i]!r}")
            categorical.append(col)
    y_raw = df[target]
    if task == "auto":
        is_int = pd.api.types.is_integer_dtype(y_raw) or (
            pd.api.types.is_float_dtype(y_raw) and np.all(np.mod(y_raw.to_numpy(), 1) == 0))
        task = "classification" if _is_text(y_raw) or (is_int and y_raw.nunique() <= 50) else "regression"
    if task not in ("classification", "regression"):
        raise UsageError(f"unknown task '{task}' (choose auto, classification or regression)")
    if task == "classification":
        y = y_raw.astype(str).str.strip().to_numpy(dtype=object) if _is_text(y_raw) else y_raw.to_numpy()
        if len(np.unique(y)) < 2:
            raise UsageError(f"{path}: target '{target}' has a single class ({y[0]!r}); nothing to classify")
    else:
        y = pd.to_numeric(y_raw, errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(y).any():
            i = int(np.argmax(np.isnan(y)))
            raise UsageError(f"{path}: line {i + first_line}: regression target '{target}' needs numbers, "
                             f"got {y_raw.iloc[i]!r}")
    X = df.drop(columns=[target])
    if X.shape[1] == 0:
        raise UsageError(f"{path}: no feature columns besides the target '{target}'")
    categorical = [c for c in categorical if c in X.columns]
    numeric = [c for c in X.columns if c not in categorical]
    for c in categorical:
        X[c] = X[c].astype(str).str.strip()
    return Dataset(name or path.stem, X, y, task, numeric, categorical, source=str(path))


# ----------------------------------------------------------------------------------------------- shared real data

_LETTER = ["lettr", "x-box", "y-box", "width", "high", "onpix", "x-bar", "y-bar", "x2bar", "y2bar", "xybar",
           "x2ybr", "xy2br", "x-ege", "xegvy", "y-ege", "yegvx"]
_ADULT = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
          "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income"]
_POKER = [f"{k}{i}" for i in range(1, 6) for k in ("S", "C")] + ["class"]

# name -> how to read it (file, target, header / names, customary test split); read each SOURCE.md for details
SHARED: dict[str, dict[str, Any]] = {
    "uci_adult": {"file": "adult.data", "test_file": "adult.test", "target": "income", "header": False,
                  "names": _ADULT},
    "covertype_75k": {"file": "covertype_evaluation_75k.csv", "target": "Cover_Type"},
    "uci_letter_recognition": {"file": "letter-recognition.data", "target": "lettr", "header": False,
                               "names": _LETTER, "test_rows_from": 16000},
    "uci_pendigits": {"file": "pendigits.tra", "test_file": "pendigits.tes", "target": "class"},
    "magic_gamma_telescope": {"file": "magic04.csv", "target": "class"},
    "uci_poker_hand": {"file": "poker-hand-training-true.data", "target": "class", "header": False,
                       "names": _POKER, "task": "classification"},
    "mnist_test": {"loader": "mnist"},
}
SKLEARN = ("digits", "breast_cancer", "wine", "diabetes", "iris")
SYNTHETIC = ("teacher", "synthetic_regression")
TEACHER_KINDS = ("even", "plain")  # the first is the default everywhere (make_teacher, load_dataset, the configs)


def dataset_names() -> list[str]:
    return [*SKLEARN, *SHARED, *SYNTHETIC]


def _load_shared(name: str) -> Dataset:
    spec = SHARED[name]
    folder = data_sources.require(name).path
    if spec.get("loader") == "mnist":
        return _load_mnist(folder)
    kw = {"header": spec.get("header", True), "names": spec.get("names"), "task": spec.get("task", "auto")}
    ds = load_csv(folder / spec["file"], spec["target"], name=name, **kw)
    if "test_file" in spec:
        test = load_csv(folder / spec["test_file"], spec["target"], name=name, **kw)
        if ds.y.dtype == object:  # adult.test writes '>50K.' where adult.data writes '>50K'
            test.y = np.array([str(v).rstrip(".") for v in test.y], dtype=object)
        ds.X_test, ds.y_test = test.X[ds.X.columns], test.y
    elif "test_rows_from" in spec:
        k = spec["test_rows_from"]
        ds.X_test, ds.y_test = ds.X.iloc[k:].reset_index(drop=True), ds.y[k:]
        ds.X, ds.y = ds.X.iloc[:k].reset_index(drop=True), ds.y[:k]
    return ds


def _load_mnist(folder: Path) -> Dataset:
    img, lab = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    for p in (img, lab):
        if not p.is_file():
            raise UsageError(f"{p}: file not found")
    with gzip.open(img, "rb") as fh:
        raw = fh.read()
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    X = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols).astype(np.float32) / 255.0
    with gzip.open(lab, "rb") as fh:
        y = np.frombuffer(fh.read(), dtype=np.uint8, offset=8).astype(np.int64)
    cols_ = [f"px{i}" for i in range(rows * cols)]
    return Dataset("mnist_test", pd.DataFrame(X, columns=cols_), y, "classification", cols_, [], source=str(img))


def _load_sklearn(name: str) -> Dataset:
    import sklearn.datasets as skd

    bunch = getattr(skd, f"load_{name}")(as_frame=True)
    X = bunch.data
    task = "regression" if name == "diabetes" else "classification"
    y = bunch.target.to_numpy()
    return Dataset(name, X, y, task, list(X.columns), [], source=f"sklearn.datasets.load_{name}")


# ----------------------------------------------------------------------------------------------- synthetic tasks

def make_teacher(n_samples: int = 20000, n_features: int = 2, n_classes: int = 3, noise: float = 0.1,
                 teacher_width: int = 16, seed: int = 0, kind: str = TEACHER_KINDS[0]) -> Dataset:
    """Gaussian inputs labelled by a random one-hidden-layer tanh network, then label noise.

    x ~ N(0, I_d). The teacher's clean class is argmax(W2 h(x) + b2) with h(x) = tanh(W1 x + b1). ``kind`` "even"
    uses h(x) + h(-x) instead, so no half-space separates the classes and linear models stay near the majority
    rate; "plain" keeps h(x), whose boundaries are curved but where a half-space already gets most rows right (as
    on much real data), so the gap above logistic regression is what a flexible model adds. Then each label is,
    with probability ``noise``, replaced by a uniformly random *other* class. For noise < (k-1)/k the clean class
    stays the most likely one, so the Bayes classifier is the teacher and the Bayes accuracy is exactly 1 - noise.
    """
    if not 0.0 <= noise < (n_classes - 1) / n_classes:
        raise UsageError(f"teacher: noise must be in [0, {(n_classes - 1) / n_classes:.3f}), got {noise}")
    if kind not in TEACHER_KINDS:
        raise UsageError(f"teacher: kind must be one of {', '.join(TEACHER_KINDS)}, got {kind!r}")
    even = kind == "even"
    rng = np.random.default_rng(seed)
    W1 = rng.normal(0, 1.0, (n_features, teacher_width))
    b1 = rng.normal(0, 1.0, teacher_width)
    W2 = rng.normal(0, 1.0, (teacher_width, n_classes))
    b2 = np.zeros(n_classes)

    def teacher(x: np.ndarray) -> np.ndarray:
        h = np.tanh(x @ W1 + b1) @ W2
        return (h + np.tanh(-x @ W1 + b1) @ W2 if even else h) + b2

    # centre the class scores so every class has a fair share of the input space
    probe = teacher(rng.normal(size=(20000, n_features)))
    b2 = -np.median(probe - probe.mean(axis=1, keepdims=True), axis=0)
    X = rng.normal(size=(n_samples, n_features))
    clean = teacher(X).argmax(axis=1)
    flip = rng.random(n_samples) < noise
    other = (clean + rng.integers(1, n_classes, n_samples)) % n_classes  # uniform over the other classes
    y = np.where(flip, other, clean)
    cols = [f"x{i}" for i in range(n_features)]
    return Dataset("teacher", pd.DataFrame(X.astype(np.float32), columns=cols), y, "classification", cols, [],
                   floor=1.0 - noise, source="synthetic",
                   info={"noise": noise, "n_features": n_features, "n_classes": n_classes, "seed": seed, "kind": kind,
                         "clean_class_shares": np.bincount(clean, minlength=n_classes) / n_samples})


def make_regression_task(n_samples: int = 20000, n_features: int = 4, sigma: float = 0.5, seed: int = 0) -> Dataset:
    """y = f(x) + N(0, sigma^2) with f a fixed smooth nonlinear function; the irreducible MSE is exactly sigma^2.

    f(x) = sin(2 x0) + x1 * x2 + 0.5 * x3^2 - 0.5 + cos(x0 + x1) (extra features, if any, are pure noise inputs).
    """
    if n_features < 4:
        raise UsageError(f"synthetic_regression: n_features must be >= 4, got {n_features}")
    if sigma < 0:
        raise UsageError(f"synthetic_regression: sigma must be >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features))
    f = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.5 * X[:, 3] ** 2 - 0.5 + np.cos(X[:, 0] + X[:, 1])
    y = f + rng.normal(0, sigma, n_samples)
    cols = [f"x{i}" for i in range(n_features)]
    return Dataset("synthetic_regression", pd.DataFrame(X.astype(np.float32), columns=cols), y, "regression", cols,
                   [], floor=sigma**2, source="synthetic", info={"sigma": sigma, "seed": seed})


# ----------------------------------------------------------------------------------------------- by name

def load_dataset(name: str, n_samples: int = 20000, noise: float = 0.1, sigma: float = 0.5, n_features: int = 4,
                 seed: int = 0, teacher_kind: str = TEACHER_KINDS[0]) -> Dataset:
    """Load a data set by name (see ``dataset_names()``); the keyword arguments shape the synthetic ones."""
    if name in SKLEARN:
        return _load_sklearn(name)
    if name in SHARED:
        return _load_shared(name)
    if name == "teacher":
        return make_teacher(n_samples, n_features=n_features, noise=noise, seed=seed, kind=teacher_kind)
    if name == "synthetic_regression":
        return make_regression_task(n_samples, n_features=n_features, sigma=sigma, seed=seed)
    raise UsageError(f"unknown dataset '{name}' (choose one of {', '.join(dataset_names())}, "
                     f"or use --data FILE.csv --target COLUMN)")
