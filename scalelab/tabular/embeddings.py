"""Numeric feature embeddings for tabular MLPs: piecewise-linear encoding over quantile bins.

    from scalelab.tabular.embeddings import PiecewiseLinearEncoder
    Z = PiecewiseLinearEncoder(n_bins=16).fit_transform(X)   # (n, d) -> (n, sum of bins per column)

Gorishniy, Rubachev and Babenko, "On Embeddings for Numerical Features in Tabular Deep Learning" (NeurIPS 2022):
a column x with bin edges b_0 < ... < b_T (its training quantiles) becomes T numbers, the t-th being 0 below b_{t-1},
1 above b_t and linear in between. A plain MLP on top of it can place sharp steps where the data are dense, which is
what trees do well and what smooth ReLU features of raw inputs learn slowly. The encoding is fixed after ``fit``, so
the fast network (``scalelab.tabular.fastnet``) trains on it unchanged. Columns with at most two distinct values
(one-hot indicators, flags) pass through as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data


class PiecewiseLinearEncoder(TransformerMixin, BaseEstimator):
    """Piecewise-linear encoding of every numeric column over ``n_bins`` quantile bins (fewer where a column has
    fewer distinct values); the first and last bins stay unclipped on their outer side, so values beyond the
    training range still move the encoding."""

    def __init__(self, n_bins: int = 16) -> None:
        self.n_bins = n_bins

    def fit(self, X: Any, y: Any = None) -> PiecewiseLinearEncoder:
        X = validate_data(self, X, dtype=np.float64)
        if int(self.n_bins) < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}")
        self.edges_: list[np.ndarray | None] = []
        for j in range(X.shape[1]):
            col = X[:, j]
            if len(np.unique(col)) <= 2:
                self.edges_.append(None)
                continue
            edges = np.unique(np.quantile(col, np.linspace(0.0, 1.0, int(self.n_bins) + 1)))
            self.edges_.append(edges if len(edges) >= 2 else None)
        self.n_features_out_ = sum(1 if e is None else len(e) - 1 for e in self.edges_)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        parts = []
        for j, edges in enumerate(self.edges_):
            col = X[:, j:j + 1]
            if edges is None:
                parts.append(col)
                continue
            lo, hi = edges[:-1], edges[1:]  # (T,)
            enc = (col - lo) / (hi - lo)  # (n, T)
            inner = np.clip(enc, 0.0, 1.0)
            inner[:, 0] = np.minimum(enc[:, 0], 1.0)  # below the training minimum: negative, not clipped
            inner[:, -1] = np.maximum(enc[:, -1], 0.0) if len(lo) > 1 else enc[:, -1]
            parts.append(inner)
        return np.hstack(parts).astype(np.float32)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        names = []
        for j, edges in enumerate(self.edges_):
            base = f"x{j}" if input_features is None else str(input_features[j])
            names += [base] if edges is None else [f"{base}_bin{t}" for t in range(len(edges) - 1)]
        return np.asarray(names, dtype=object)
