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
GCE_Q = 0.3  # between cross-entropy (q -> 0) and the bounded mean absolute error (q = 1); Zhang & Sabuncu use 0.7,
# which learns too slowly on many classes (every row's gradient is scaled by p_y^q, small while p_y ~ 1/k)


class _BaseMLP(BaseEstimator):
    """Shared fit loop; subclasses define the target encoding, the loss and the outputs.

    Parameters (scikit-learn's MLP names where one exists):
        hidden_layer_sizes: widths of the hidden layers, e.g. (64, 64).
        activation: relu, tanh, gelu, silu, logistic or identity.
        optimizer: adam, adamw or sgd (with ``momentum``); learning_rate: its step size.
        lr_schedule: constant, or cosine (decays to zero over ``max_epochs``, set per epoch: a fixed step size
            keeps bouncing around the minimum, which costs accuracy on noisy labels).
        loss: the classifier's training loss (the regressor always uses squared error): log_loss (cross-entropy),
            or gce, generalised cross-entropy (1 - p_y^q) / q with q = ``GCE_Q`` (Zhang & Sabuncu 2018). Cross-entropy
            asks the network to match the label-noise level everywhere, and a network that cannot make the jump
            from one noisy plateau to the next pays for that with misplaced class boundaries; gce bounds each
            row's loss, so mislabelled rows pull less and the boundaries are placed for accuracy. Its
            ``predict_proba`` is then less calibrated. None = log_loss.
        weight_decay: L2 coupled into the gradient for adam/sgd, decoupled for adamw (0 = none).
        max_epochs: passes over the training rows (scikit-learn's max_iter); batch_size: rows per step.
        early_stopping: hold out ``validation_fraction`` (stratified for classifiers), stop when the validation
            score has not improved by ``tol`` for ``n_iter_no_change`` epochs and keep the best weights. Without it,
            stop when the training loss has not improved by ``tol`` for ``n_iter_no_change`` epochs.
        random_state: None, an int or a RandomState; resolved in ``fit`` (weights, shuffling, validation split).
        matmul_dtype: auto runs wide hidden-to-hidden layers (128 x 128 and up, batch 128 and up) in bfloat16 on a
            CPU with native bf16 matmul, keeping float32 master weights (``FlatMLP``); float32 never does.
        device: cpu, cuda, cuda:N, mps or auto. num_threads: torch CPU threads during fit (None = 1 for small
            layers, torch's default otherwise). verbose: print the loss every epoch.
    """

    def __init__(self, hidden_layer_sizes: Sequence[int] = (64, 64), activation: str = "relu",
                 optimizer: str = "adam", learning_rate: float = 1e-3, lr_schedule: str = "constant",
                 momentum: float = 0.9, loss: str | None = None,
                 weight_decay: float = 0.0, max_epochs: int = 200, batch_size: int = 64,
                 early_stopping: bool = False, validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 tol: float = 1e-4, random_state: Any = None, matmul_dtype: str = "auto", device: str = "cpu",
                 num_threads: int | None = None, verbose: bool = False) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.momentum = momentum
        self.loss = loss
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

    def _loss_sum(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss summed over rows, as a 0-d tensor."""
        raise NotImplementedError

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
        hidden = self.hidden_layer_sizes
        if isinstance(hidden, int | np.integer):
            hidden = (int(hidden),)
        if any(int(h) <= 0 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive, got {self.hidden_layer_sizes!r}")
        if int(self.max_epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError("max_epochs and batch_size must be >= 1")
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
        gen = torch.Generator().manual_seed(seed)

        T, n_out = self._encode_targets(y)
        X = np.asarray(X, dtype=np.float32)
        X_val = T_val = None
        if self.early_stopping:
            stratify = T.argmax(1) if self._is_classifier else None
            try:
                X, X_val, T, T_val = train_test_split(X, T, test_size=self.validation_fraction,
                                                      random_state=seed, stratify=stratify)
            except ValueError:  # a class too small to stratify: fall back to a plain random split
                X, X_val, T, T_val = train_test_split(X, T, test_size=self.validation_fraction, random_state=seed)

        shapes = layer_shapes(X.shape[1], self._hidden, n_out)
        bs = min(int(self.batch_size), X.shape[0])
        bf16 = bf16_layers_for(shapes, bs, device) if self.matmul_dtype == "auto" else []
        net = FlatMLP(shapes, self.activation, gen, torch.float32, device, bf16_layers=bf16)
        self.bf16_layers_ = bf16
        opt = FlatOptimizer(self.optimizer, net.flat, net.grad, self.learning_rate, self.weight_decay,
                             self.momentum)
        Xt = torch.from_numpy(np.ascontiguousarray(X)).to(device)
        Tt = torch.from_numpy(np.ascontiguousarray(T)).to(device)
        if X_val is not None:
            Xv = torch.from_numpy(np.ascontiguousarray(X_val)).to(device)
            Tv = torch.from_numpy(np.ascontiguousarray(T_val)).to(device)
        n = Xt.shape[0]

        self.loss_curve_: list[float] = []
        self.validation_scores_: list[float] | None = [] if X_val is not None else None
        best, best_state, stall = -np.inf, None, 0
        t0 = time.perf_counter()
        epoch = 0
        max_epochs = int(self.max_epochs)
        for epoch in range(1, max_epochs + 1):
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
            # score to maximise: validation metric with early stopping, else minus the training loss
            if X_val is not None:
                with torch.no_grad():
                    score = self._val_score(net.forward(Xv), Tv)
                self.validation_scores_.append(score)
            else:
                score = -epoch_loss
            if score > best + self.tol:
                best, stall = score, 0
                if X_val is not None:
                    best_state = net.flat.clone()
            else:
                stall += 1
            if self.verbose:
                print(f"epoch {epoch}: loss {epoch_loss:.5f}" + (f" val {score:.4f}" if X_val is not None else ""))
            if stall >= self.n_iter_no_change:
                break
        if best_state is not None:  # early stopping keeps the best weights seen on the validation split
            net.flat.copy_(best_state)
        self.model_ = net.to_sequential().eval()
        self._predict_model = copy.deepcopy(self.model_).double().cpu()  # see _forward_numpy
        self.best_validation_score_ = float(best) if X_val is not None else None
        self.n_iter_ = epoch
        self.t_ = epoch * n  # examples seen, as in scikit-learn
        self.fit_seconds_ = time.perf_counter() - t0
        self.n_layers_ = len(self._hidden) + 2
        self.n_outputs_ = n_out
        return self

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
    ``validation_scores_`` (accuracy per epoch, with early stopping), ``n_iter_`` (epochs run), ``t_`` (examples
    seen), ``model_`` (the ``torch.nn.Sequential``), ``fit_seconds_``.
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
        p = torch.softmax(out, 1)  # (B, k)
        if self.loss == "gce":
            # d/dout (1 - p_y^q)/q = p_y^q (softmax - onehot): cross-entropy's gradient, weighted per row
            w = (p * target).sum(1, keepdim=True).pow_(GCE_Q)  # (B, 1)
            return p.sub_(target).mul_(w).mul_(1.0 / out.shape[0])
        return p.sub_(target).mul_(1.0 / out.shape[0])  # softmax - onehot, for the mean loss

    def _loss_sum(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(out, 1)
        if self.loss == "gce":
            return (1.0 - (logp * target).sum(1).mul_(GCE_Q).exp_()).sum() / GCE_Q
        return -torch.vdot(logp.view(-1), target.reshape(-1))

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

    def _loss_sum(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = (out - target).view(-1)  # (B * n_out,)
        return torch.vdot(diff, diff) / out.shape[1]

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
