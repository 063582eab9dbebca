"""UPerNet's pyramid: a pyramid pooling module (PPM) on the coarsest level, FPN fusion, optionally fused.

Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018. https://arxiv.org/abs/1807.10221
The PPM is PSPNet's (Zhao et al. 2017, https://arxiv.org/abs/1612.01105).

- PPM: the coarsest map is average-pooled (adaptive bins) to ``s x s`` for each pool scale (1, 2, 3, 6), each
  through a 1x1 conv-BN-ReLU, upsampled back (bilinear), concatenated with the map itself, and a 3x3
  conv-BN-ReLU gives the coarsest level.
- FPN: 1x1 conv-BN-ReLU laterals on the other levels; top-down, each lateral adds the bilinearly upsampled level
  above; a 3x3 conv-BN-ReLU smooths every level but the coarsest (the PPM output, as is).
- ``output="fused"``: every level upsampled to the finest, concatenated, and a 3x3 conv-BN-ReLU
  (``fpn_bottleneck``): the one map UPerNet's classifier reads, at the finest stride.

The math is Hugging Face transformers' ``UperNetHead`` (``transformers/models/upernet/modeling_upernet.py``) up
to, not including, its classifier; ``output="pyramid"`` (the default: a neck's outputs are a pyramid) returns the
maps that head concatenates, before their upsampling.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("upernet", [16, 32, 64], out_channels=32).eval()  # 1 x 1 pools: BN needs eval
    >>> [tuple(f.shape[1:]) for f in neck([torch.rand(1, c, s, s + 2) for c, s in ((16, 29), (32, 15), (64, 8))])]
    [(32, 29, 31), (32, 15, 17), (32, 8, 10)]
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.blocks import init_weights
from ..layers.config import check_choice, check_count, check_knobs
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.resample import resize_to

__all__ = ["UPERNET_OUTPUTS", "adaptive_avg_pool", "PyramidPoolingModule", "UPerNetPyramid", "upernet"]

#: What the neck returns: the FPN levels, or the one fused map at the finest stride.
UPERNET_OUTPUTS = ("pyramid", "fused")
NormFactory = Optional[Callable[[int], nn.Module]]
ActFactory = Optional[Callable[[], nn.Module]]


def _bin_weights(size: int, bins: int, x: torch.Tensor) -> torch.Tensor:
    """``(bins, size)``: row ``i`` averages positions ``floor(i * size / bins)`` to ``ceil((i + 1) * size / bins)``."""
    index = torch.arange(bins, device=x.device)
    start, end = (index * size) // bins, ((index + 1) * size + bins - 1) // bins
    pos = torch.arange(size, device=x.device)
    inside = (pos[None] >= start[:, None]) & (pos[None] < end[:, None])
    return inside.to(x.dtype) / (end - start)[:, None].to(x.dtype)


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` (same bins, same averages) as two matrix products.

    ONNX exports of adaptive pooling bake the export-time bin boundaries in, and the graph then indexes out of
    range at other sizes; these products compute the boundaries from the input's size at run time.
    """
    return _bin_weights(x.shape[-2], bins, x) @ x @ _bin_weights(x.shape[-1], bins, x).transpose(0, 1)


class PyramidPoolingModule(nn.Module):
    """PSPNet's PPM: ``bottleneck(cat(x, up(branch_s(avgpool_s(x))) for s in pool_scales))``.

    Args:
        in_channels: channels of the map.
        out_channels: channels of each branch and of the output.
        pool_scales: output sizes of the adaptive average pools.
        upsample_mode: how branches return to the map's size.
        norm_layer: norm factory, or None.
        act_layer: activation factory, or None.
    """

    def __init__(self, in_channels: int, out_channels: int, pool_scales: Sequence[int], upsample_mode: str,
                 norm_layer: NormFactory, act_layer: ActFactory) -> None:
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.upsample_mode = upsample_mode
        self.branches = nn.ModuleList(ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer,
                                                  act_layer=act_layer) for _ in self.pool_scales)
        self.bottleneck = ConvNormAct(in_channels + len(self.pool_scales) * out_channels, out_channels, 3,
                                      norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        parts = [x] + [resize_to(branch(adaptive_avg_pool(x, scale)), size, self.upsample_mode)
                       for scale, branch in zip(self.pool_scales, self.branches)]
        return self.bottleneck(torch.cat(parts, dim=1))


class UPerNetPyramid(nn.Module):
    """UPerNet's PPM + FPN (+ fusion); see the module docstring.

    Args:
        spec: the backbone's levels, finest first.
        out_channels: width of every level (transformers' ``hidden_size``).
        pool_scales: PPM pool sizes.
        output: ``"pyramid"`` or ``"fused"``.
        upsample_mode: interpolation everywhere (bilinear in UPerNet).
        norm_layer: norm factory, or None.
        act_layer: activation factory, or None.
    """

    output_fmt = "NCHW"

    def __init__(self, spec: FeatureSpec, *, out_channels: int, pool_scales: Sequence[int], output: str,
                 upsample_mode: str, norm_layer: NormFactory, act_layer: ActFactory) -> None:
        super().__init__()
        self.spec = spec
        self.upsample_mode = upsample_mode
        c = out_channels

        def conv(cin: int, kernel: int) -> ConvNormAct:
            return ConvNormAct(cin, c, kernel, norm_layer=norm_layer, act_layer=act_layer)

        self.ppm = PyramidPoolingModule(spec.channels[-1], c, pool_scales, upsample_mode, norm_layer, act_layer)
        self.lateral = nn.ModuleList(conv(cin, 1) for cin in spec.channels[:-1])
        self.smooth = nn.ModuleList(conv(c, 3) for _ in spec.channels[:-1])
        self.fuse = conv(spec.num_levels * c, 3) if output == "fused" else None
        if self.fuse is None:
            self.feature_info = make_feature_info([c] * spec.num_levels, spec.reductions)
        else:
            self.feature_info = make_feature_info([c], spec.reductions[:1])

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: one NCHW map per level (``pyramid``) or one (``fused``)."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        merged = [lateral(x) for lateral, x in zip(self.lateral, features)] + [self.ppm(features[-1])]
        for level in reversed(range(len(merged) - 1)):
            merged[level] = merged[level] + resize_to(merged[level + 1], merged[level].shape[-2:], self.upsample_mode)
        outs = [smooth(x) for smooth, x in zip(self.smooth, merged)] + [merged[-1]]
        if self.fuse is None:
            return outs
        size = outs[0].shape[-2:]
        return [self.fuse(torch.cat([resize_to(x, size, self.upsample_mode) for x in outs], dim=1))]


@register_neck("upernet")
def upernet(
    spec: FeatureSpec,
    *,
    out_channels: int = 512,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
    output: str = "pyramid",
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    upsample_mode: str = "bilinear",
) -> UPerNetPyramid:
    """Build UPerNet's pyramid (defaults: transformers' ``UperNetConfig``: 512 ch, pools 1/2/3/6, BN + ReLU).

    Args:
        spec: the backbone's levels (ConvNeXt / Swin: strides 4-32).
        out_channels: width of every level.
        pool_scales: PPM adaptive-pool output sizes (distinct positive ints).
        output: ``"pyramid"`` (one map per level) or ``"fused"`` (the fused map at the finest stride).
        norm: norm after every conv.
        act: activation after every conv.
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.
        upsample_mode: interpolation of the PPM, the top-down path and the fusion.

    Raises:
        BackboneMismatch: levels at a repeated stride (a plain ViT).
        ValueError: a bad knob.
    """
    check_knobs(out_channels=out_channels, upsample_mode=upsample_mode)
    check_choice("output", output, UPERNET_OUTPUTS)
    scales = list(pool_scales) if isinstance(pool_scales, (list, tuple)) else None
    if not scales or len(set(scales)) != len(scales):
        raise ValueError(f"upernet: pool_scales must be a non-empty list of distinct sizes, got {pool_scales!r}")
    for scale in scales:
        check_count("pool_scales", scale)
    if len(set(spec.reductions)) != spec.num_levels:
        raise BackboneMismatch(
            f"upernet fuses levels at distinct strides, but the backbone gives strides {list(spec.reductions)}: "
            "use 'simple_pyramid' to build a pyramid from a single-stride map first"
        )
    neck = UPerNetPyramid(spec, out_channels=out_channels, pool_scales=scales, output=output,
                          upsample_mode=upsample_mode, norm_layer=resolve_norm(norm, norm_kwargs),
                          act_layer=resolve_act(act, act_kwargs, inplace=True))
    return init_weights(neck)
