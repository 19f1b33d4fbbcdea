"""PyTorch multilayer perceptrons that follow scikit-learn's estimator contract.

``MLPClassifier`` and ``MLPRegressor`` can be cloned, pickled, put in a ``Pipeline`` and handed to ``cross_val_score``
or ``learning_curve`` like any scikit-learn model; ``tests/test_tabular_mlp.py`` runs ``parametrize_with_checks``.

    from scalelab.tabular.mlp import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(64, 64), max_epochs=100, random_state=0).fit(X, y)
    clf.predict_proba(X_test)

The training loop is lean on purpose (see ``benchmarks/bench_mlp.py``): the data live on the device as one tensor,
every epoch shuffles by an index permutation (no DataLoader), and a step is forward, loss, backward, optimizer step.
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
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU,
                                           "logistic": nn.Sigmoid, "identity": nn.Identity}
OPTIMIZERS = ("adam", "adamw", "sgd")


def build_mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str = "relu",
              generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Linear -> activation -> ... -> Linear as an ``nn.Sequential``, initialised reproducibly (see ``FlatMLP``)."""
    return FlatMLP(layer_shapes(n_in, hidden, n_out), activation, generator, dtype).to_sequential()


class FlatMLP:
    """An MLP whose weights live in one flat buffer, with a hand-written forward and backward pass.

    Why not ``nn.Sequential`` + autograd + ``torch.optim``: for the small layers of tabular models a training step is
    dominated by per-op overhead, not FLOPs. Here a step is ~20 kernel calls (the matmuls, activations, and one fused
    Adam update over the single flat buffer); autograd plus a per-tensor optimizer is 3-10x more. The gradients are
    checked against finite differences and autograd in ``tests/test_tabular_mlp.py``.

    Weights are stored as (fan_in, fan_out) so that a layer is ``addmm(b, x, W)``. Initialisation is nn.Linear's:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], activation: str = "relu",
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.shapes = [(int(a), int(b)) for a, b in shapes]
        self.activation = activation
        flat = torch.empty(sum(a * b + b for a, b in self.shapes), dtype=dtype)
        o = 0
        for a, b in self.shapes:  # initialise on the CPU from the generator, so results do not depend on device
            bound = 1.0 / math.sqrt(a)
            flat[o:o + a * b + b].uniform_(-bound, bound, generator=generator)
            o += a * b + b
        self.flat = flat.to(device)
        self.grad = torch.zeros_like(self.flat)
        self.W, self.b = self._views(self.flat)
        self.gW, self.gb = self._views(self.grad)
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _views(self, buf: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        Ws, bs, o = [], [], 0
        for a, b in self.shapes:
            Ws.append(buf[o:o + a * b].view(a, b))
            bs.append(buf[o + a * b:o + a * b + b])
            o += a * b + b
        return Ws, bs

    def forward(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """(B, fan_in) -> (B, n_out). With ``train``, keep what ``backward`` needs."""
        fwd, _ = _ACT_FUNCS[self.activation]
        keep_z = self.activation in ("gelu", "silu")  # their backward needs the pre-activation
        cache = []
        h = x
        last = len(self.shapes) - 1
        for i, (W, b) in enumerate(zip(self.W, self.b)):
            z = torch.addmm(b, h, W)  # (B, fan_out)
            if i < last:
                a = fwd(z, inplace=not keep_z)
                if train:
                    cache.append((h, z if keep_z else a))
                h = a
            else:
                if train:
                    cache.append((h, z))
                h = z
        if train:
            self._cache = cache
        return h

    def backward(self, grad_out: torch.Tensor) -> None:
        """Given dLoss/dOutput (B, n_out), write dLoss/dParameters into ``self.grad`` (overwriting it)."""
        _, bwd = _ACT_FUNCS[self.activation]
        g = grad_out
        for i in range(len(self.shapes) - 1, -1, -1):
            h_in, _ = self._cache[i]
            torch.mm(h_in.t(), g, out=self.gW[i])  # (fan_in, fan_out)
            torch.sum(g, 0, out=self.gb[i])
            if i > 0:
                g = torch.mm(g, self.W[i].t())  # gradient w.r.t. the previous layer's activation
                g = bwd(g, self._cache[i - 1][1])  # ... and w.r.t. its pre-activation
        self._cache = []

    def to_sequential(self) -> nn.Sequential:
        """A plain ``nn.Sequential`` of ``nn.Linear`` with a copy of these weights (for users and predictions)."""
        layers: list[nn.Module] = []
        for i, ((a, b), W, bias) in enumerate(zip(self.shapes, self.W, self.b)):
            lin = nn.Linear(a, b, dtype=self.flat.dtype, device=self.flat.device)
            with torch.no_grad():
                lin.weight.copy_(W.t())
                lin.bias.copy_(bias)
            layers.append(lin)
            if i < len(self.shapes) - 1:
                layers.append(ACTIVATIONS[self.activation]())
        return nn.Sequential(*layers)


def _relu_fwd(z: torch.Tensor, inplace: bool) -> torch.Tensor:
    return z.relu_() if inplace else torch.relu(z)


def _tanh_fwd(z: torch.Tensor, inplace: bool) -> torch.Tensor:
    return z.tanh_() if inplace else torch.tanh(z)


def _sigmoid_fwd(z: torch.Tensor, inplace: bool) -> torch.Tensor:
    return z.sigmoid_() if inplace else torch.sigmoid(z)


_aten = torch.ops.aten
# activation name -> (forward(z, inplace), backward(grad, saved)); saved is the output, or the input for gelu/silu
_ACT_FUNCS: dict[str, tuple[Any, Any]] = {
    "relu": (_relu_fwd, lambda g, a: _aten.threshold_backward(g, a, 0)),
    "tanh": (_tanh_fwd, lambda g, a: _aten.tanh_backward(g, a)),
    "logistic": (_sigmoid_fwd, lambda g, a: _aten.sigmoid_backward(g, a)),
    "identity": (lambda z, inplace: z, lambda g, a: g),
    "gelu": (lambda z, inplace: nn.functional.gelu(z), lambda g, z: _aten.gelu_backward(g, z)),
    "silu": (lambda z, inplace: nn.functional.silu(z), lambda g, z: _aten.silu_backward(g, z)),
}


class _FlatOptimizer:
    """Adam / AdamW / SGD(momentum) on one flat tensor: one fused kernel per step (torch.optim's own kernels)."""

    def __init__(self, kind: str, param: torch.Tensor, grad: torch.Tensor, lr: float, weight_decay: float,
                 momentum: float) -> None:
        self.kind, self.p, self.g = kind, param, grad
        self.lr, self.wd, self.momentum = float(lr), float(weight_decay), float(momentum)
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.step_t = torch.zeros((), dtype=torch.float32, device=param.device)
        self.first = True
        fused = getattr(torch, "_fused_adamw_" if kind == "adamw" else "_fused_adam_", None)
        self._fused = fused if kind != "sgd" else getattr(torch, "_fused_sgd_", None)
        if self._fused is None:  # an older or newer torch without these kernels
            self._fallback = self._make_torch_optimizer()

    def _make_torch_optimizer(self) -> torch.optim.Optimizer:
        self.p = nn.Parameter(self.p, requires_grad=False)
        self.p.grad = self.g
        if self.kind == "sgd":
            return torch.optim.SGD([self.p], lr=self.lr, momentum=self.momentum, weight_decay=self.wd)
        cls = torch.optim.AdamW if self.kind == "adamw" else torch.optim.Adam
        return cls([self.p], lr=self.lr, weight_decay=self.wd)

    def step(self) -> None:
        if self._fused is None:
            self._fallback.step()
        elif self.kind == "sgd":
            self._fused([self.p], [self.g], [self.m] if self.momentum else [], weight_decay=self.wd,
                        momentum=self.momentum, lr=self.lr, dampening=0.0, nesterov=False, maximize=False,
                        is_first_step=self.first)
        else:
            self.step_t += 1
            self._fused([self.p], [self.g], [self.m], [self.v], [], [self.step_t], lr=self.lr, beta1=0.9,
                        beta2=0.999, weight_decay=self.wd, eps=1e-8, amsgrad=False, maximize=False)
        self.first = False


def layer_shapes(n_in: int, hidden: Sequence[int], n_out: int) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every Linear layer."""
    sizes = [n_in, *hidden, n_out]
    return list(zip(sizes[:-1], sizes[1:]))


def training_flops(n_in: int, hidden: Sequence[int], n_out: int, examples_seen: int) -> int:
    """Matmul FLOPs of training, counted from the layer shapes.

    Per example and layer (fan_in x fan_out): forward 2*in*out, weight gradient 2*in*out, input gradient 2*in*out
    (not needed for the first layer, whose input is the data). Biases, activations and the optimizer are O(params)
    per step, not per example, and are left out (under 2% here).
    """
    per_example = 0
    for i, (a, b) in enumerate(layer_shapes(n_in, hidden, n_out)):
        per_example += 2 * a * b * (2 if i == 0 else 3)
    return int(per_example) * int(examples_seen)


class _BaseMLP(BaseEstimator):
    """Shared fit loop; subclasses define the target encoding, the loss and the outputs.

    Parameters (scikit-learn's MLP names where one exists):
        hidden_layer_sizes: widths of the hidden layers, e.g. (64, 64).
        activation: relu, tanh, gelu, silu, logistic or identity.
        optimizer: adam, adamw or sgd (with ``momentum``); learning_rate: its step size.
        weight_decay: L2 coupled into the gradient for adam/sgd, decoupled for adamw (0 = none).
        max_epochs: passes over the training rows (scikit-learn's max_iter); batch_size: rows per step.
        early_stopping: hold out ``validation_fraction`` (stratified for classifiers), stop when the validation
            score has not improved by ``tol`` for ``n_iter_no_change`` epochs and keep the best weights. Without it,
            stop when the training loss has not improved by ``tol`` for ``n_iter_no_change`` epochs.
        random_state: None, an int or a RandomState; resolved in ``fit`` (weights, shuffling, validation split).
        device: cpu, cuda, cuda:N, mps or auto. num_threads: torch CPU threads during fit (None = 1 for small
            layers, torch's default otherwise). verbose: print the loss every epoch.
    """

    def __init__(self, hidden_layer_sizes: Sequence[int] = (64, 64), activation: str = "relu",
                 optimizer: str = "adam", learning_rate: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0, max_epochs: int = 200, batch_size: int = 64,
                 early_stopping: bool = False, validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 tol: float = 1e-4, random_state: Any = None, device: str = "cpu", num_threads: int | None = None,
                 verbose: bool = False) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.num_threads = num_threads
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------------ subclass hooks
    _is_classifier = False

    def _encode_targets(self, y: np.ndarray) -> tuple[np.ndarray, int]:
        """y -> (training targets as float32 (n, n_out), n_out)."""
        raise NotImplementedError

    def _loss_and_grad(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss over the batch as a 0-d tensor, dLoss_mean/dout)."""
        raise NotImplementedError

    def _val_score(self, out: torch.Tensor, target: torch.Tensor) -> float:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ fitting
    def _check_params(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
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

        net = FlatMLP(layer_shapes(X.shape[1], self._hidden, n_out), self.activation, gen, torch.float32, device)
        opt = _FlatOptimizer(self.optimizer, net.flat, net.grad, self.learning_rate, self.weight_decay,
                             self.momentum)
        Xt = torch.from_numpy(np.ascontiguousarray(X)).to(device)
        Tt = torch.from_numpy(np.ascontiguousarray(T)).to(device)
        if X_val is not None:
            Xv = torch.from_numpy(np.ascontiguousarray(X_val)).to(device)
            Tv = torch.from_numpy(np.ascontiguousarray(T_val)).to(device)
        n = Xt.shape[0]
        bs = min(int(self.batch_size), n)
        starts = range(0, n, bs)

        self.loss_curve_: list[float] = []
        self.validation_scores_: list[float] | None = [] if X_val is not None else None
        best, best_state, stall = -np.inf, None, 0
        t0 = time.perf_counter()
        epoch = 0
        for epoch in range(1, int(self.max_epochs) + 1):
            perm = torch.randperm(n, generator=gen).to(device)
            Xs, Ts = Xt[perm], Tt[perm]  # shuffle once per epoch: every batch is then a contiguous view
            total = torch.zeros((), device=device)
            for s in starts:
                out = net.forward(Xs[s:s + bs], train=True)
                loss_sum, grad = self._loss_and_grad(out, Ts[s:s + bs])
                net.backward(grad)
                opt.step()
                total += loss_sum
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

    def _loss_and_grad(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logp = torch.log_softmax(out, 1)  # (B, k)
        loss_sum = -torch.vdot(logp.view(-1), target.reshape(-1))
        grad = logp.exp_().sub_(target).mul_(1.0 / out.shape[0])  # softmax - onehot, for the mean loss
        return loss_sum, grad

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

    def _loss_and_grad(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        diff = out - target  # (B, n_out)
        loss_sum = torch.vdot(diff.view(-1), diff.view(-1)) / out.shape[1]
        return loss_sum, diff.mul_(2.0 / diff.numel())  # gradient of the mean squared error

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
