"""PyTorch multilayer perceptrons that follow scikit-learn's estimator contract.

``MLPClassifier`` and ``MLPRegressor`` can be cloned, pickled, put in a ``Pipeline`` and handed to ``cross_val_score``
or ``learning_curve`` like any scikit-learn model; ``tests/test_tabular_mlp.py`` runs ``parametrize_with_checks``.

    from scalelab.tabular.mlp import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(64, 64), max_epochs=100, random_state=0).fit(X, y)
    clf.predict_proba(X_test)

The training loop is lean on purpose (see ``benchmarks/bench_mlp.py``): the data live on the device as one tensor,
every epoch shuffles by an index permutation (no DataLoader), and a step is forward, loss gradient, backward, optimizer
step (the epoch's training loss comes from all its steps' outputs at once).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from scalelab.tabular.fastnet import (
    ACTIVATIONS,
    OPTIMIZERS,
    FlatMLP,
    FlatOptimizer,
    bf16_layers_for,
    layer_shapes,
    training_flops,
)

LR_SCHEDULES = ("constant", "cosine")
MATMUL_DTYPES = ("auto", "float32")
CLASSIFIER_LOSSES = ("log_loss", "gce")
GCE_Q = 0.3  # the default gce_q: between cross-entropy (q -> 0) and the bounded mean absolute error (q = 1);
# Zhang & Sabuncu use 0.7, which learns too slowly on many classes (every row's gradient is scaled by p_y^q, small
# while p_y ~ 1/k)


REFIT_Z = 2.0  # early_stopping="refit" stops early when the last epoch's held-out loss is this many standard errors
# above the best epoch's
REFIT_MIN_ROWS = 30  # ... and only on a held-out split this large: on a handful of rows (5 of 50) the standard error
# means nothing, and a many-class set's held-out loss rises while its accuracy still improves


def row_softmax(out: torch.Tensor, log: bool = False) -> torch.Tensor:
    """(log-)softmax over each row of (B, k) scores. Under 16 columns it runs along dim 0 of the transposed view:
    PyTorch's CPU kernel vectorises along the softmax dimension, which a handful of classes cannot fill, and along
    the rows there instead; the result is a (B, k) view."""
    f = torch.log_softmax if log else torch.softmax
    return f(out.t(), 0).t() if out.shape[1] < 16 else f(out, 1)


class _BaseMLP(BaseEstimator):
    """Shared fit loop; subclasses define the target encoding, the loss and the outputs.

    Parameters (scikit-learn's MLP names where one exists):
        hidden_layer_sizes: widths of the hidden layers, e.g. (64, 64).
        activation: relu, tanh, gelu, silu, logistic or identity.
        optimizer: adam, adamw or sgd (with ``momentum``); learning_rate: its step size.
        lr_schedule: constant, or cosine (decays to zero over ``max_epochs``, set per epoch: a fixed step size
            keeps bouncing around the minimum, which costs accuracy on noisy labels).
        loss: the classifier's training loss (the regressor always uses squared error): log_loss (cross-entropy),
            or gce, generalised cross-entropy (1 - p_y^q) / q with q = ``gce_q`` (Zhang & Sabuncu 2018). Cross-entropy
            asks the network to match the label-noise level everywhere, and a network that cannot make the jump
            from one noisy plateau to the next pays for that with misplaced class boundaries; gce bounds each
            row's loss, so mislabelled rows pull less and the boundaries are placed for accuracy. Its
            ``predict_proba`` is then less calibrated. None = log_loss.
        gce_q: the q of gce, in (0, 1]: larger bounds a mislabelled row's pull more (better on label noise, such as
            the teacher tasks) but learns slowly from rows the network still gets wrong (worse on many classes).
        weight_decay: L2 coupled into the gradient for adam/sgd, decoupled for adamw (0 = none).
        max_epochs: passes over the training rows (scikit-learn's max_iter); batch_size: rows per step.
        early_stopping: hold out ``validation_fraction`` (stratified for classifiers), stop when the validation
            score has not improved by ``tol`` for ``n_iter_no_change`` epochs and keep the best weights. "refit" uses
            the split only to choose the number of epochs, then trains afresh on every row, on the same schedule,
            for that many, so no row is lost to it (at up to twice the fit time): it runs all ``max_epochs`` on the
            nine tenths and stops early only where the held-out loss shows overfitting beyond its noise (the last
            epoch worse than the best by ``REFIT_Z`` paired standard errors); a tenth's accuracy is too noisy to
            pick an epoch, and stopping on every dip in it throws away the epochs that help. Without early stopping,
            stop when the training loss has not improved by ``tol`` for ``n_iter_no_change`` epochs.
        random_state: None, an int or a RandomState; resolved in ``fit`` (weights, shuffling, validation split).
        matmul_dtype: auto runs wide hidden-to-hidden layers (128 x 128 and up, batch 128 and up) in bfloat16 on a
            CPU with native bf16 matmul, keeping float32 master weights (``FlatMLP``); float32 never does.
        device: cpu, cuda, cuda:N, mps or auto. num_threads: torch CPU threads during fit (None = 1 for small
            layers, torch's default otherwise). verbose: print the loss every epoch.
    """

    def __init__(self, hidden_layer_sizes: Sequence[int] = (64, 64), activation: str = "relu",
                 optimizer: str = "adam", learning_rate: float = 1e-3, lr_schedule: str = "constant",
                 momentum: float = 0.9, loss: str | None = None, gce_q: float = GCE_Q,
                 weight_decay: float = 0.0, max_epochs: int = 200, batch_size: int = 64,
                 early_stopping: bool | str = False, validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 tol: float = 1e-4, random_state: Any = None, matmul_dtype: str = "auto", device: str = "cpu",
                 num_threads: int | None = None, verbose: bool = False) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.momentum = momentum
        self.loss = loss
        self.gce_q = gce_q
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.matmul_dtype = matmul_dtype
        self.device = device
        self.num_threads = num_threads
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------------ subclass hooks
    _is_classifier = False

    def _encode_targets(self, y: np.ndarray) -> tuple[np.ndarray, int]:
        """y -> (training targets as float32 (n, n_out), n_out)."""
        raise NotImplementedError

    def _loss_grad(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """dLoss_mean/dout for a batch (a new tensor; ``out`` is left as it is)."""
        raise NotImplementedError

    def _loss_rows(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of each row, (B,)."""
        raise NotImplementedError

    def _loss_sum(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss summed over rows, as a 0-d tensor (once an epoch: one owner of the formula, ``_loss_rows``)."""
        return self._loss_rows(out, target).sum()

    def _val_score(self, out: torch.Tensor, target: torch.Tensor) -> float:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ fitting
    def _check_params(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(f"matmul_dtype must be one of {MATMUL_DTYPES}, got {self.matmul_dtype!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.loss is not None and self.loss not in (CLASSIFIER_LOSSES if self._is_classifier else ()):
            raise ValueError(f"loss must be None or one of {CLASSIFIER_LOSSES if self._is_classifier else ()} "
                             f"for {type(self).__name__}, got {self.loss!r}")
        if not 0.0 < float(self.gce_q) <= 1.0:
            raise ValueError(f"gce_q must be in (0, 1], got {self.gce_q}")
        hidden = self.hidden_layer_sizes
        if isinstance(hidden, int | np.integer):
            hidden = (int(hidden),)
        if any(int(h) <= 0 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive, got {self.hidden_layer_sizes!r}")
        if int(self.max_epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError("max_epochs and batch_size must be >= 1")
        if self.early_stopping not in (False, True, "refit"):
            raise ValueError(f"early_stopping must be False, True or 'refit', got {self.early_stopping!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        self._hidden = tuple(int(h) for h in hidden)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> _BaseMLP:
        self._check_params()
        threads = self.num_threads
        if threads is None:
            # Small layers: one thread. Two threads only split tiny matmuls, and when the other core is busy the
            # OpenMP barrier makes every op wait for it (many times slower per step on a loaded 2-core box).
            widths = [X.shape[1], *self._hidden]
            step_flops = 2 * min(int(self.batch_size), len(X)) * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
            threads = 1 if step_flops < 32e6 else torch.get_num_threads()
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, int(threads)))
        try:
            return self._fit_loop(X, y)
        finally:
            torch.set_num_threads(before)

    def _fit_loop(self, X: np.ndarray, y: np.ndarray) -> _BaseMLP:
        from scalelab.common import resolve_device

        device = torch.device(resolve_device(self.device))
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(0, 2**31 - 1))
        T, n_out = self._encode_targets(y)
        X = np.asarray(X, dtype=np.float32)
        refit = self.early_stopping == "refit"
        t0 = time.perf_counter()

        # 1. with early stopping: train on nine tenths and score the held-out tenth every epoch
        self.validation_scores_: list[float] | None = None
        self.best_validation_score_: float | None = None
        seen = 0
        if self.early_stopping:
            stratify = T.argmax(1) if self._is_classifier else None
            try:
                X_fit, X_val, T_fit, T_val = train_test_split(X, T, test_size=self.validation_fraction,
                                                              random_state=seed, stratify=stratify)
            except ValueError:  # a class too small to stratify: fall back to a plain random split
                X_fit, X_val, T_fit, T_val = train_test_split(X, T, test_size=self.validation_fraction,
                                                              random_state=seed)
            net, epochs, chosen = self._train(X_fit, T_fit, seed, device, validation=(X_val, T_val), select=refit)
            seen = epochs * len(X_fit)
        # 2. refit on every row, on the same schedule, stopped at the chosen epoch; or a plain fit
        if refit or not self.early_stopping:
            net, epochs, _ = self._train(X, T, seed, device, stop_at=chosen if refit else None)
            seen += epochs * len(X)

        self.model_ = net.to_sequential().eval()
        self._predict_model = copy.deepcopy(self.model_).double().cpu()  # see _forward_numpy
        self.n_iter_ = epochs
        self.t_ = seen  # examples seen, as in scikit-learn (both runs with refit)
        self.fit_seconds_ = time.perf_counter() - t0
        self.n_layers_ = len(self._hidden) + 2
        self.n_outputs_ = n_out
        return self

    def _train(self, X: np.ndarray, T: np.ndarray, seed: int, device: torch.device,
               validation: tuple[np.ndarray, np.ndarray] | None = None, select: bool = False,
               stop_at: int | None = None) -> tuple[FlatMLP, int, int]:
        """One training run -> (net, epochs run, epoch chosen); the learning-rate schedule always spans
        ``max_epochs``, and ``stop_at`` ends the run sooner. With ``validation``, early stopping keeps the best
        epoch's weights; ``select`` (for refit) instead runs every epoch, scores the held-out loss and chooses the
        best epoch only if the last one is worse by more than ``REFIT_Z`` standard errors, else the last. Sets
        ``loss_curve_``, ``bf16_layers_`` and, with validation, ``validation_scores_``."""
        gen = torch.Generator().manual_seed(seed)
        shapes = layer_shapes(X.shape[1], self._hidden, T.shape[1])
        bs = min(int(self.batch_size), X.shape[0])
        bf16 = bf16_layers_for(shapes, bs, device) if self.matmul_dtype == "auto" else []
        net = FlatMLP(shapes, self.activation, gen, torch.float32, device, bf16_layers=bf16)
        self.bf16_layers_ = bf16
        opt = FlatOptimizer(self.optimizer, net.flat, net.grad, self.learning_rate, self.weight_decay,
                             self.momentum)
        Xt = torch.from_numpy(np.ascontiguousarray(X)).to(device)
        Tt = torch.from_numpy(np.ascontiguousarray(T)).to(device)
        if validation is not None:
            Xv, Tv = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in validation)
            self.validation_scores_ = []
        n = Xt.shape[0]

        self.loss_curve_: list[float] = []
        best, best_state, best_rows, best_epoch, stall, rows = -np.inf, None, None, 0, 0, None
        max_epochs = int(self.max_epochs)
        epoch = 0
        for epoch in range(1, (stop_at or max_epochs) + 1):
            if self.lr_schedule == "cosine":
                opt.set_lr(0.5 * self.learning_rate * (1 + math.cos(math.pi * (epoch - 1) / max_epochs)))
            perm = torch.randperm(n, generator=gen).to(device)
            # shuffle once per epoch and cut it into batches in one call: every batch is then a contiguous view
            Ts, outs = Tt[perm], []
            for xb, tb in zip(Xt[perm].split(bs), Ts.split(bs)):
                out = net.forward(xb, train=True)
                net.backward(self._loss_grad(out, tb))
                opt.step()
                outs.append(out)
            # the epoch's loss from every step's outputs at once: fewer kernels per step than a loss per batch
            total = self._loss_sum(torch.cat(outs), Ts)
            epoch_loss = float(total) / n  # the one host sync per epoch
            self.loss_curve_.append(epoch_loss)
            if not math.isfinite(epoch_loss):
                raise ValueError(f"training diverged at epoch {epoch} (loss {epoch_loss}); lower learning_rate")
            # score to maximise: the validation metric (minus the held-out loss to select), else minus the
            # training loss
            if validation is not None:
                with torch.no_grad():
                    out = net.forward(Xv)
                    rows = self._loss_rows(out, Tv) if select else None
                    score = -float(rows.mean()) if select else self._val_score(out, Tv)
                self.validation_scores_.append(score)
            else:
                score = -epoch_loss
            if score > best + self.tol:
                best, best_epoch, stall = score, epoch, 0
                if validation is not None and not select:
                    best_state = net.flat.clone()
                best_rows = rows
            else:
                stall += 1
            if self.verbose:
                print(f"epoch {epoch}: loss {epoch_loss:.5f}" + (f" val {score:.4f}" if validation else ""))
            if stall >= self.n_iter_no_change and not select:  # select sees every epoch up to the last
                break
        if validation is not None:
            self.best_validation_score_ = float(best)
        if best_state is not None:  # early stopping keeps the best weights seen on the validation split
            net.flat.copy_(best_state)
        if select:
            # stop early only where the held-out rows show overfitting beyond their own noise: a tenth of a few
            # thousand rows cannot tell apart epochs whose losses differ by less (paired, row by row)
            d = rows - best_rows  # (m,) each held-out row's loss at the last epoch minus at the best
            worse = len(d) >= REFIT_MIN_ROWS and float(d.mean()) > REFIT_Z * float(d.std()) / math.sqrt(len(d))
            return net, epoch, best_epoch if worse else epoch
        return net, epoch, best_epoch

    def _forward_numpy(self, X: np.ndarray) -> np.ndarray:
        # Predict in float64 on a copy: a row's prediction then does not depend on which other rows share its
        # batch (float32 matmul kernels block differently by batch size), as scikit-learn's contract asks.
        with torch.no_grad():
            out = self._predict_model(torch.from_numpy(np.asarray(X, dtype=np.float64)))
        return out.numpy()

    def training_flops(self) -> int:
        """Training matmul FLOPs of the last fit, from the layer shapes (see ``training_flops``)."""
        check_is_fitted(self)
        return training_flops(self.n_features_in_, self._hidden, self.n_outputs_, self.t_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.device != "cpu"  # CUDA kernels may reorder float sums
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Softmax MLP trained with cross-entropy. Parameters as in ``_BaseMLP.__init__``; see the module docstring.

    Attributes after ``fit``: ``classes_``, ``n_features_in_``, ``loss_curve_`` (training loss per epoch),
    ``validation_scores_`` (per epoch with early stopping: the held-out accuracy, or with "refit" minus the held-out
    loss), ``n_iter_`` (epochs run; with "refit", those of the refit on every row), ``t_`` (examples seen),
    ``model_`` (the ``torch.nn.Sequential``), ``fit_seconds_``.
    """

    _is_classifier = True

    def fit(self, X: Any, y: Any) -> MLPClassifier:
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        return self._fit(X, y)

    def _encode_targets(self, y: np.ndarray) -> tuple[np.ndarray, int]:
        self._label_encoder = LabelEncoder().fit(y)
        self.classes_ = self._label_encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"MLPClassifier needs at least 2 classes in y; got 1 class ({self.classes_[0]!r})")
        k = len(self.classes_)
        return np.eye(k, dtype=np.float32)[self._label_encoder.transform(y)], k  # one-hot (n, k)

    def _loss_grad(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = row_softmax(out)  # (B, k)
        if self.loss == "gce":
            # d/dout (1 - p_y^q)/q = p_y^q (softmax - onehot): cross-entropy's gradient, weighted per row
            w = (p * target).sum(1, keepdim=True).pow_(self.gce_q)  # (B, 1)
            return p.sub_(target).mul_(w).mul_(1.0 / out.shape[0])
        return p.sub_(target).mul_(1.0 / out.shape[0])  # softmax - onehot, for the mean loss

    def _loss_rows(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp_y = (row_softmax(out, log=True) * target).sum(1)  # (B,)
        q = self.gce_q
        return (1.0 - logp_y.mul(q).exp()) / q if self.loss == "gce" else -logp_y

    def _val_score(self, out: torch.Tensor, target: torch.Tensor) -> float:
        return float((out.argmax(1) == target.argmax(1)).float().mean())

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        logits = self._forward_numpy(X)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # checks fitted first
        return self.classes_[np.argmax(proba, axis=1)]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """MLP trained with mean squared error; targets are standardised inside ``fit`` (and undone in ``predict``).

    Attributes after ``fit`` as for ``MLPClassifier`` (``validation_scores_`` is the validation R^2), minus
    ``classes_``.
    """

    def fit(self, X: Any, y: Any) -> MLPRegressor:
        X, y = validate_data(self, X, y, dtype=np.float32, y_numeric=True, multi_output=True)
        return self._fit(X, y)

    def _encode_targets(self, y: np.ndarray) -> tuple[np.ndarray, int]:
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        y2 = y.reshape(len(y), -1)
        self.y_mean_ = y2.mean(axis=0)
        scale = y2.std(axis=0)
        self.y_scale_ = np.where(scale > 0, scale, 1.0)
        return ((y2 - self.y_mean_) / self.y_scale_).astype(np.float32), y2.shape[1]

    def _loss_grad(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sub(out, target).mul_(2.0 / out.numel())  # gradient of the mean squared error

    def _loss_rows(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (out - target).pow(2).mean(1)

    def _val_score(self, out: torch.Tensor, target: torch.Tensor) -> float:
        ss_res = float(((out - target) ** 2).sum())
        ss_tot = float(((target - target.mean(0)) ** 2).sum())
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else -ss_res

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        out = self._forward_numpy(X) * self.y_scale_ + self.y_mean_
        return out[:, 0] if self._y_1d else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
