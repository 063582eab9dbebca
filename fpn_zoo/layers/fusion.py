"""How a fusion node combines its (already resampled) inputs.

- ``sum``: plain addition (FPN, PANet).
- ``fast_attn``: learned non-negative weights, normalised by their sum (EfficientDet's "fast normalized
  fusion", https://arxiv.org/abs/1911.09070).
- ``attn``: learned weights through a softmax (EfficientDet's "softmax-based fusion").
- ``concat``: channel concatenation; the node's smoothing block reduces the channels again (YOLO / CSP-PAN).

Weights are cast to the inputs' dtype, so the fusion behaves under autocast.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FUSIONS", "make_fusion", "SumFusion", "WeightedFusion", "ConcatFusion"]

FUSIONS = ("sum", "fast_attn", "attn", "concat")


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

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        w = self.normalized_weights(xs[0].dtype)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


class ConcatFusion(nn.Module):
    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=1)


def make_fusion(method: str, num_inputs: int) -> nn.Module:
    if method == "sum":
        return SumFusion()
    if method in ("fast_attn", "attn"):
        return WeightedFusion(num_inputs, method)
    if method == "concat":
        return ConcatFusion()
    raise ValueError(f"unknown fusion {method!r}; choose one of {FUSIONS}")
