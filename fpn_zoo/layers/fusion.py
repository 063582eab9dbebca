"""How a fusion node combines its (already resampled) inputs.

- ``sum``: plain addition (FPN, PANet).
- ``fast_attn``: learned non-negative weights, normalised by their sum (EfficientDet's "fast normalized
  fusion", https://arxiv.org/abs/1911.09070).
- ``attn``: learned weights through a softmax (EfficientDet's "softmax-based fusion").
- ``concat``: channel concatenation; the node's smoothing block reduces the channels again (YOLO / CSP-PAN).
- ``global_attn``: NAS-FPN's global-pooling op (https://arxiv.org/abs/1904.07392): the last input gates the
  others with ``sigmoid(global_avg_pool(last))`` and is added: ``last + sigmoid(gap(last)) * sum(others)``.

Weights are cast to the inputs' dtype, so the fusion behaves under autocast. In inference the weighted sum runs as
one fused pass per input (:func:`weighted_sum`): the same math, with fewer full-size temporaries; on the CPU the
weights are then normalised as Python numbers (:meth:`WeightedFusion.float_weights`, in float64), which spares
the handful of tiny tensor ops per node that dominate small maps.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import is_compiling
from .config import FUSIONS

__all__ = ["FUSIONS", "make_fusion", "weighted_sum", "scaled_sum", "SumFusion", "WeightedFusion", "ConcatFusion",
           "GlobalAttnFusion"]


def _accumulate(w: torch.Tensor, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    out = xs[0] * w[0]
    for k in range(1, len(xs)):
        out.addcmul_(xs[k], w[k])
    return out


def _plain_sum(xs: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    out = xs[0] * w[0]
    for k in range(1, len(xs)):
        out = out + xs[k] * w[k]
    return out


def _needs_autograd(xs: Sequence[torch.Tensor], w: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (w.requires_grad or any(x.requires_grad for x in xs))


def scaled_sum(xs: Sequence[torch.Tensor], w: Sequence[float]) -> torch.Tensor:
    """``w[0] * xs[0] + w[1] * xs[1] + ...`` with Python-number weights, accumulated in place (no autograd)."""
    out = xs[0].mul(w[0])
    for k in range(1, len(xs)):
        out.add_(xs[k], alpha=w[k])
    return out


def weighted_sum(xs: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``w[0] * xs[0] + w[1] * xs[1] + ...`` (``w`` a 1-D tensor, one weight per map).

    Without gradients (inference) the maps are accumulated in place, one fused multiply-add pass each
    (6-8 % off BiFPN's eval time, docs/benchmarks.md); with gradients, and under ``torch.compile`` /
    ``torch.export`` (the compiler fuses it), it is the plain expression: a custom autograd function
    measured no faster in training (1.00x at 512 px, 1.06x slower at 256 px, where its Python backward costs).
    """
    if is_compiling() or _needs_autograd(xs, w):
        return _plain_sum(xs, w)
    return _accumulate(w, xs)


class SumFusion(nn.Module):
    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class WeightedFusion(nn.Module):
    """Sum of inputs with one learned scalar weight each (``fast_attn`` or ``attn``)."""

    def __init__(self, num_inputs: int, method: str = "fast_attn", eps: float = 1e-4) -> None:
        super().__init__()
        self.method = method
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_inputs))

    def normalized_weights(self, dtype: torch.dtype) -> torch.Tensor:
        w = self.weight.to(dtype)
        if self.method == "attn":
            return torch.softmax(w, dim=0)
        w = F.relu(w)
        return w / (w.sum() + self.eps)

    def float_weights(self) -> List[float]:
        """The normalised weights as Python numbers, computed in float64 from the parameter (no autograd)."""
        raw = self.weight.tolist()
        if self.method == "attn":
            top = max(raw)
            exps = [math.exp(v - top) for v in raw]
            total = sum(exps)
            return [e / total for e in exps]
        w = [max(v, 0.0) for v in raw]
        total = sum(w) + self.eps
        return [v / total for v in w]

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        w = self.weight
        if is_compiling() or _needs_autograd(xs, w):
            return _plain_sum(xs, self.normalized_weights(xs[0].dtype))
        if w.device.type == "cpu" and not torch.jit.is_tracing():  # reading the weights is free on the CPU
            return scaled_sum(xs, self.float_weights())
        return _accumulate(self.normalized_weights(xs[0].dtype), xs)  # other devices, and traces, keep tensor ops


class ConcatFusion(nn.Module):
    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class GlobalAttnFusion(nn.Module):
    """NAS-FPN's global-pooling merge: ``last + sigmoid(mean_hw(last)) * sum(others)`` (no parameters)."""

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        gate_source = xs[-1]
        if len(xs) == 1:
            return gate_source
        others = xs[0]
        for x in xs[1:-1]:
            others = others + x
        return gate_source + torch.sigmoid(gate_source.mean(dim=(2, 3), keepdim=True)) * others


def make_fusion(method: str, num_inputs: int) -> nn.Module:
    """The module of one of :data:`~fpn_zoo.layers.config.FUSIONS` (checked by the family) for ``num_inputs`` maps."""
    if method in ("fast_attn", "attn"):
        return WeightedFusion(num_inputs, method)
    return {"sum": SumFusion, "concat": ConcatFusion, "global_attn": GlobalAttnFusion}[method]()
