"""HRFPN: fuse every level at the finest resolution, then pool the fused map back into a pyramid (HRNet).

Sun et al., "High-Resolution Representations for Labeling Pixels and Regions", 2019.
https://arxiv.org/abs/1904.04514

Every input map is resized (bilinear) to the finest map's size and concatenated; a 1x1 conv reduces the
concatenation to ``out_channels``; level ``i`` of the output is that map average- (or max-) pooled by
``2**i`` (rounding sizes down as mmdet does, or up with ``ceil_mode``, so that a small map keeps every
level), and a 3x3 conv (stride ``stride``) smooths each level. The math is mmdetection 3.3's ``HRFPN``
(``mmdet/models/necks/hrfpn.py``), which upsamples by ``2**i`` and so needs exact x2 map sizes; here each
map is resized to the finest map's size, which is the same on such sizes and also works on odd ones.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("hrfpn", [8, 16, 32], out_channels=16)
    >>> neck.feature_info.reduction()
    [8, 16, 32, 64, 128]
    >>> [tuple(f.shape[-2:]) for f in neck([torch.rand(1, c, s, s) for c, s in ((8, 29), (16, 15), (32, 8))])]
    [(29, 29), (15, 15), (8, 8), (4, 4), (2, 2)]
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
from ..layers.resample import resize_to

__all__ = ["HRFPN", "hrfpn", "POOLINGS"]

POOLINGS = ("avg", "max")


class HRFPN(nn.Module):
    """Concatenate all levels at the finest size, reduce by 1x1 conv, pool by ``2**i``, smooth by 3x3 conv.

    Args:
        spec: the backbone's levels (distinct strides, finest first).
        out_channels: channels of every output.
        num_outputs: output levels; level ``i`` is pooled by ``2**i``.
        pooling: ``"avg"`` or ``"max"``.
        ceil_mode: pooled sizes round up (a partial window averages what it covers); mmdet rounds down.
        stride: stride of the 3x3 output convs.
        norm_layer: norm factory after every conv, or None (mmdet: None).
        act_layer: activation factory after every conv, or None (mmdet: None).
    """

    output_fmt = "NCHW"

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        out_channels: int,
        num_outputs: int,
        pooling: str,
        ceil_mode: bool,
        stride: int,
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.pooling = pooling
        self.ceil_mode = ceil_mode
        self.reduce = ConvNormAct(sum(spec.channels), out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.outputs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, stride=stride, norm_layer=norm_layer, act_layer=act_layer)
            for _ in range(num_outputs)
        )
        reductions = [spec.reductions[0] * stride * 2 ** i for i in range(num_outputs)]
        self.feature_info = make_feature_info([out_channels] * num_outputs, reductions)
        # Output levels at a backbone level's stride take that map's size (a pooled odd-sized map can be a
        # pixel off it, e.g. in ceil mode); on exact x2 sizes this changes nothing.
        pooled_strides = [spec.reductions[0] * 2 ** i for i in range(num_outputs)]
        self._size_of = {i: spec.reductions.index(r) for i, r in enumerate(pooled_strides) if r in spec.reductions}

    def _pool(self, x: torch.Tensor, factor: int) -> torch.Tensor:
        if factor == 1:
            return x
        pool = F.avg_pool2d if self.pooling == "avg" else F.max_pool2d
        return pool(x, kernel_size=factor, stride=factor, ceil_mode=self.ceil_mode)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: ``num_outputs`` NCHW maps, finest first."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        size = features[0].shape[-2:]
        resized = [features[0]] + [F.interpolate(x, size=size, mode="bilinear") for x in features[1:]]
        fused = self.reduce(torch.cat(resized, dim=1))
        outs = []
        for i, conv in enumerate(self.outputs):
            pooled = self._pool(fused, 2 ** i)
            if i in self._size_of:
                pooled = resize_to(pooled, features[self._size_of[i]].shape[-2:], "nearest")
            outs.append(conv(pooled))
        return outs


@register_neck("hrfpn")
def hrfpn(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    num_outputs: int = 5,
    pooling: str = "avg",
    ceil_mode: bool = False,
    stride: int = 1,
    norm: LayerSpec = None,
    act: LayerSpec = None,
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
) -> HRFPN:
    """Build an HRFPN (mmdet ``HRFPN``'s defaults: 5 outputs, average pooling, plain biased convs).

    Args:
        spec: the backbone's levels, at distinct strides (HRNet: 4/8/16/32).
        out_channels: channels of every output.
        num_outputs: output levels, at the finest stride times ``1, 2, 4 ...`` (times ``stride``).
        pooling: ``"avg"`` or ``"max"``.
        ceil_mode: round pooled sizes up (every level keeps at least one pixel); mmdet rounds down, and then a
            map smaller than ``2**(num_outputs - 1)`` pixels has no coarsest level (an error).
        stride: stride of the 3x3 output convs.
        norm: norm after each conv, or None (mmdet builds none, whatever its ``norm_cfg``).
        act: activation after each conv, or None.
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.

    Raises:
        BackboneMismatch: levels at a repeated stride (a plain ViT): build a pyramid first (``simple_pyramid``).
        ValueError: bad ``num_outputs``, ``pooling`` or ``stride``.
    """
    check_knobs(out_channels=out_channels, num_outputs=num_outputs, stride=stride)
    if pooling not in POOLINGS:
        raise ValueError(f"hrfpn: pooling must be one of {POOLINGS}, got {pooling!r}")
    if len(set(spec.reductions)) != len(spec.reductions):
        raise BackboneMismatch(
            f"hrfpn fuses a multi-resolution backbone (HRNet), but levels repeat strides {list(spec.reductions)}: "
            "use 'simple_pyramid' on a single-stride backbone, or pick levels at distinct strides"
        )
    neck = HRFPN(
        spec, out_channels=out_channels, num_outputs=num_outputs, pooling=pooling, ceil_mode=bool(ceil_mode),
        stride=stride,
        norm_layer=resolve_norm(norm, norm_kwargs), act_layer=resolve_act(act, act_kwargs),
    )
    return init_weights(neck)
