"""Balanced feature pyramid: gather every level at one size, refine, scatter back as residuals (Libra R-CNN).

Pang et al., "Libra R-CNN: Towards Balanced Learning for Object Detection", CVPR 2019.
https://arxiv.org/abs/1904.02701

Every level is brought to the size of level ``refine_level`` (by default the middle one; finer levels by
adaptive max-pooling, coarser ones by nearest upsampling) and averaged; the balanced map is refined (an
embedded-Gaussian non-local block, a 3x3 conv-norm-act, or nothing) and brought back to each level's size the
opposite way, where it is added to that level. Channels and strides are unchanged, so it sits after another
neck: Libra R-CNN puts it on an FPN. The math is mmdetection 3.3's ``BFP`` (``mmdet/models/necks/bfp.py``)
with mmcv's ``NonLocal2d`` (``reduction=1, use_scale=False``) as the refinement.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("bfp", [16, 16, 16], refine_level=1)
    >>> [tuple(f.shape[-2:]) for f in neck([torch.rand(1, 16, s, s) for s in (29, 15, 8)])]
    [(29, 29), (15, 15), (8, 8)]
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.blocks import init_weights
from ..layers.config import check_knobs

__all__ = ["NonLocalBlock", "BalancedFeaturePyramid", "adaptive_max_pool_to", "bfp", "REFINE_TYPES"]

REFINE_TYPES = (None, "conv", "non_local")


def _exporting() -> bool:
    is_exporting = getattr(getattr(torch, "compiler", None), "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def _max_pool_axis(x: torch.Tensor, dim: int, out: int) -> torch.Tensor:
    """Adaptive max-pooling along one axis: output ``i`` is the max over ``[floor(i*n/out), ceil((i+1)*n/out))``.

    Each window is read as ``k`` indices (the longest window's length, shorter ones repeating their last
    index, which leaves the max unchanged), so the sizes stay symbolic under ``torch.export``.
    """
    size = x.shape[dim]
    i = torch.arange(out, device=x.device)
    start = torch.div(i * size, out, rounding_mode="floor")
    end = torch.div((i + 1) * size + out - 1, out, rounding_mode="floor")
    k = (size + out - 1) // out + 1
    index = torch.minimum(start[:, None] + torch.arange(k, device=x.device)[None, :], end[:, None] - 1)
    return x.index_select(dim, index.flatten()).unflatten(dim, (out, k)).amax(dim + 1)


def adaptive_max_pool_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.adaptive_max_pool2d(x, size)``; while exporting, the same windows by index so that ``size`` stays
    symbolic (the built-in op bakes the export-time size into the program)."""
    if not _exporting():
        return F.adaptive_max_pool2d(x, size)
    return _max_pool_axis(_max_pool_axis(x, 2, size[0]), 3, size[1])


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block without scaling: ``x + out(softmax(theta(x)^T phi(x)) g(x))``.

    Wang et al., "Non-local Neural Networks", CVPR 2018. https://arxiv.org/abs/1711.07971

    ``theta``, ``phi`` and ``g`` are biased 1x1 convs keeping the channels; ``out`` is a 1x1 conv-norm whose
    last layer starts at zero, so the block starts as the identity (as in the paper).
    """

    def __init__(self, channels: int, norm_layer: Optional[Callable[[int], nn.Module]]) -> None:
        super().__init__()
        self.theta = ConvNormAct(channels, channels, 1)
        self.phi = ConvNormAct(channels, channels, 1)
        self.g = ConvNormAct(channels, channels, 1)
        self.out = ConvNormAct(channels, channels, 1, norm_layer=norm_layer)

    def zero_init_last(self) -> None:
        last = self.out.norm if hasattr(self.out, "norm") else self.out.conv
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        queries = self.theta(x).flatten(2).transpose(1, 2)  # n, hw, c
        keys = self.phi(x).flatten(2)  # n, c, hw
        values = self.g(x).flatten(2).transpose(1, 2)  # n, hw, c
        attended = torch.matmul(torch.matmul(queries, keys).softmax(dim=-1), values)
        return x + self.out(attended.transpose(1, 2).reshape(n, c, h, w))


class BalancedFeaturePyramid(nn.Module):
    """Gather at ``refine_level``'s size, average, refine, and add back to every level (see module docstring).

    Args:
        spec: the levels (one channel count throughout).
        refine_level: index of the level whose size the maps are gathered at.
        refine: the refinement of the balanced map (``nn.Identity`` for none).
    """

    output_fmt = "NCHW"

    def __init__(self, spec: FeatureSpec, *, refine_level: int, refine: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.refine_level = refine_level
        self.refine = refine
        self.feature_info = make_feature_info(spec.channels, spec.reductions)

    def _resize(self, x: torch.Tensor, size: torch.Size, finer: bool) -> torch.Tensor:
        """A finer map is max-pooled down to ``size``; a coarser one is upsampled (nearest)."""
        return adaptive_max_pool_to(x, size) if finer else F.interpolate(x, size=size, mode="nearest")

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: the levels. Returns: each level plus the refined balanced map at its size (NCHW)."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        size = features[self.refine_level].shape[-2:]
        gathered = [self._resize(x, size, finer=i < self.refine_level) for i, x in enumerate(features)]
        balanced = self.refine(sum(gathered) / len(gathered))
        return [x + self._resize(balanced, x.shape[-2:], finer=i >= self.refine_level)
                for i, x in enumerate(features)]


@register_neck("bfp")
def bfp(
    spec: FeatureSpec,
    *,
    refine_level: Optional[int] = None,
    refine_type: Optional[str] = None,
    norm: LayerSpec = None,
    act: LayerSpec = "relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
) -> BalancedFeaturePyramid:
    """Build a balanced feature pyramid (mmdet ``BFP``'s defaults: gather at level 2 of 5, no refinement).

    Args:
        spec: the levels, all with one channel count (an FPN's outputs).
        refine_level: index of the level the maps are gathered at; None for the middle one,
            ``num_levels // 2`` (Libra R-CNN's and mmdet's default 2 on the five levels P2-P6).
        refine_type: ``"non_local"`` (Libra R-CNN), ``"conv"`` (3x3 conv-norm-act) or None.
        norm: norm of the refinement's last conv, or None.
        act: activation of the ``"conv"`` refinement (mmdet: ReLU).
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.

    Raises:
        BackboneMismatch: levels with different channel counts (put it after ``fpn``).
        ValueError: ``refine_level`` out of range or an unknown ``refine_type``.
    """
    if len(set(spec.channels)) != 1:
        raise BackboneMismatch(
            f"bfp averages its levels, so they need one channel count, got {list(spec.channels)}: put it after "
            "a neck, e.g. fpn_zoo.create_neck('bfp', fpn_zoo.create_neck('fpn', backbone).feature_info)"
        )
    if refine_level is None:
        refine_level = spec.num_levels // 2
    if isinstance(refine_level, bool) or not isinstance(refine_level, int) or not 0 <= refine_level < spec.num_levels:
        raise ValueError(f"bfp: refine_level must be an int in [0, {spec.num_levels}) (the level index), "
                         f"got {refine_level!r}")
    if refine_type not in REFINE_TYPES:
        raise ValueError(f"bfp: refine_type must be one of {REFINE_TYPES}, got {refine_type!r}")
    channels = spec.channels[0]
    check_knobs(out_channels=channels)
    norm_layer = resolve_norm(norm, norm_kwargs)
    act_layer = resolve_act(act, act_kwargs)
    refine: nn.Module = nn.Identity()
    if refine_type == "conv":
        refine = ConvNormAct(channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer)
    elif refine_type == "non_local":
        refine = NonLocalBlock(channels, norm_layer)
    neck = init_weights(BalancedFeaturePyramid(spec, refine_level=refine_level, refine=refine))
    if isinstance(refine, NonLocalBlock):
        refine.zero_init_last()
    return neck
