"""The fast network under the MLP estimators: weights in one flat buffer, a hand-written forward and backward pass,
and one fused optimizer step over that buffer.

    from scalelab.tabular.fastnet import FlatMLP, FlatOptimizer, layer_shapes
    net = FlatMLP(layer_shapes(10, (64, 64), 2), "relu", torch.Generator().manual_seed(0))
    opt = FlatOptimizer("adam", net.flat, net.grad, lr=1e-3, weight_decay=0.0, momentum=0.9)
    out = net.forward(x, train=True); net.backward(dloss_dout); opt.step()

Not autograd, because for tabular-sized layers a step costs per-op dispatch, not FLOPs, and this path runs a handful
of kernels per layer where autograd and a per-tensor optimizer run several times more (``benchmarks/bench_mlp.py``).
The gradients are checked against finite differences and autograd in ``tests/test_tabular_mlp.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU,
                                           "logistic": nn.Sigmoid, "identity": nn.Identity}
OPTIMIZERS = ("adam", "adamw", "sgd")


class FlatMLP:
    """An MLP whose weights live in one flat buffer, with a hand-written forward and backward pass.

    A step is the matmuls, the activations and one fused optimizer update over the single flat buffer (see the
    module docstring for why).

    A layer is stored as (fan_in, fan_out), so that it is ``addmm(b, x, W)``, except a narrowing one (fan_out <
    fan_in, such as the output layer) which is stored as nn.Linear's (fan_out, fan_in): BLAS is slow on a product
    whose result has a handful of columns, and that layout makes the output layer's products wide ones.
    ``self.W[i]`` is always the (fan_in, fan_out) view. Initialisation is nn.Linear's: U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) for weights and biases.

    ``bf16_layers``: indices of layers whose three matmuls run in bfloat16 (inputs rounded, float32 accumulation
    inside the kernel), on a bf16 copy of the weights refreshed every forward; the float32 weights stay the master
    copy that the optimizer updates. Only worth it for wide hidden-to-hidden layers on a CPU with native bf16
    (``bf16_layers_for``): for small ones the conversions cost more than the matmul saves.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], activation: str = "relu",
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", bf16_layers: Sequence[int] = ()) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.shapes = [(int(a), int(b)) for a, b in shapes]
        self.activation = activation
        self.out_major = [b < a for a, b in self.shapes]  # stored as (fan_out, fan_in)
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
        self.gW_stored = [g.t() if om else g for g, om in zip(self.gW, self.out_major)]  # contiguous
        self.bf16 = [i in set(bf16_layers) for i in range(len(self.shapes))]
        self.flat_bf16 = torch.empty(0)
        if any(self.bf16):
            self.flat_bf16 = torch.empty_like(self.flat, dtype=torch.bfloat16)
            self.W16, self.b16 = self._views(self.flat_bf16)
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _views(self, buf: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(fan_in, fan_out) weight views and bias views of ``buf``."""
        Ws, bs, o = [], [], 0
        for (a, b), om in zip(self.shapes, self.out_major):
            w = buf[o:o + a * b]
            Ws.append(w.view(b, a).t() if om else w.view(a, b))
            bs.append(buf[o + a * b:o + a * b + b])
            o += a * b + b
        return Ws, bs

    def forward(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """(B, fan_in) -> (B, n_out). With ``train``, keep what ``backward`` needs."""
        fwd, _ = _ACT_FUNCS[self.activation]
        keep_z = self.activation in ("gelu", "silu")  # their backward needs the pre-activation
        if self.flat_bf16.numel():
            self.flat_bf16.copy_(self.flat)  # the weights changed at the last optimizer step
        cache = []
        h = x
        last = len(self.shapes) - 1
        for i in range(last + 1):
            if self.bf16[i]:
                h = h.to(torch.bfloat16)  # (B, fan_in), also what the weight gradient needs
                z = torch.addmm(self.b16[i], h, self.W16[i]).float()
            else:
                z = torch.addmm(self.b[i], h, self.W[i])  # (B, fan_out)
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
            torch.sum(g, 0, out=self.gb[i])
            if self.bf16[i]:
                g16 = g.to(torch.bfloat16)
                self.gW[i].copy_(torch.mm(h_in.t(), g16))  # (fan_in, fan_out), rounded to bf16 on the way
                if i > 0:
                    g = torch.mm(g16, self.W16[i].t()).float()
            else:
                if self.out_major[i]:
                    torch.mm(g.t(), h_in, out=self.gW_stored[i])  # (fan_out, fan_in)
                else:
                    torch.mm(h_in.t(), g, out=self.gW[i])  # (fan_in, fan_out)
                if i > 0:
                    g = torch.mm(g, self.W[i].t())  # gradient w.r.t. the previous layer's activation
            if i > 0:
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


def bf16_layers_for(shapes: Sequence[tuple[int, int]], batch_size: int, device: str | torch.device) -> list[int]:
    """The layers worth running in bf16 on ``device``: hidden-to-hidden layers of at least 128 x 128 with a batch of
    at least 128, on a CPU with native bf16 matmul (below that, oneDNN's bf16 call costs more than it saves)."""
    from scalelab.common import cpu_supports_bf16

    if torch.device(device).type != "cpu" or batch_size < 128 or not cpu_supports_bf16():
        return []
    return [i for i, (a, b) in enumerate(shapes) if 0 < i < len(shapes) - 1 and min(a, b) >= 128]


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


class FlatOptimizer:
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

    def set_lr(self, lr: float) -> None:
        """Change the step size (for a schedule); takes effect at the next ``step``."""
        self.lr = float(lr)
        if self._fused is None:
            for group in self._fallback.param_groups:
                group["lr"] = self.lr

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
