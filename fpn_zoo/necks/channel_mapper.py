"""Channel mapper: one conv per backbone level to a common width, plus stride-2 conv levels (DETR family).

Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object Detection", ICLR 2021.
https://arxiv.org/abs/2010.04159

No fusion between levels: each map is projected on its own (DETR's ``input_proj``; Deformable DETR, DINO
and Conditional DETR use a 1x1 conv + GroupNorm(32)), and ``extra_levels`` more are made by stride-2 3x3
convs, the first from the coarsest *input* map, the next ones from the previous extra level. The math is
mmdetection 3.3's ``ChannelMapper`` (``mmdet/models/necks/channel_mapper.py``); its weights load through
:func:`fpn_zoo.convert.mmdet_families.from_mmdet_module`.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("deformable_detr_mapper", [16, 32, 64], out_channels=32,
    ...                            norm_kwargs={"num_groups": 8})
    >>> neck.feature_info.reduction()
    [8, 16, 32, 64]
    >>> [tuple(f.shape[-2:]) for f in neck([torch.rand(1, c, s, s) for c, s in ((16, 28), (32, 14), (64, 7))])]
    [(28, 28), (14, 14), (7, 7), (4, 4)]
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .._features import FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.blocks import init_weights
from ..layers.config import check_knobs

__all__ = ["ChannelMapper", "channel_mapper"]


class ChannelMapper(nn.Module):
    """Per-level ``kxk conv -> norm -> act`` projections, then stride-2 conv extra levels.

    Args:
        spec: the backbone's levels.
        out_channels: channels of every output.
        kernel_size: kernel of the per-level projections (odd).
        extra_levels: stride-2 3x3 conv levels beyond the coarsest input.
        norm_layer: norm factory after every conv, or None (the convs then have a bias).
        act_layer: activation factory after every conv, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        out_channels: int,
        kernel_size: int,
        extra_levels: int,
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.projs = nn.ModuleList(
            ConvNormAct(c, out_channels, kernel_size, norm_layer=norm_layer, act_layer=act_layer)
            for c in spec.channels
        )
        self.extras = nn.ModuleList(
            ConvNormAct(spec.channels[-1] if i == 0 else out_channels, out_channels, 3, stride=2,
                        norm_layer=norm_layer, act_layer=act_layer)
            for i in range(extra_levels)
        )
        reductions = list(spec.reductions) + [spec.reductions[-1] * 2 ** (i + 1) for i in range(extra_levels)]
        self.feature_info = make_feature_info([out_channels] * len(reductions), reductions)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: one NCHW map per input level, then the extra levels."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        outs = [proj(x) for proj, x in zip(self.projs, features)]
        source = features[-1]
        for extra in self.extras:
            source = extra(source)
            outs.append(source)
        return outs


@register_neck("channel_mapper")
def channel_mapper(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    kernel_size: int = 3,
    norm: LayerSpec = None,
    act: LayerSpec = "relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    extra_levels: int = 0,
) -> ChannelMapper:
    """Build a channel mapper (mmdet ``ChannelMapper``'s defaults: 3x3 convs, no norm, ReLU).

    Args:
        spec: the backbone's levels.
        out_channels: channels of every output.
        kernel_size: kernel of the per-level projections; odd (DETR-family configs use 1).
        norm: norm after each conv (``"groupnorm"`` with ``norm_kwargs={"num_groups": 32}`` in Deformable DETR).
        act: activation after each conv, or None.
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.
        extra_levels: stride-2 3x3 conv levels after the coarsest (mmdet ``num_outs - len(in_channels)``).

    Raises:
        ValueError: a non-positive or even ``kernel_size``, or bad shared knobs.
    """
    check_knobs(out_channels=out_channels, extra_levels=extra_levels)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"channel_mapper: kernel_size must be a positive odd int, got {kernel_size!r}")
    neck = ChannelMapper(
        spec, out_channels=out_channels, kernel_size=kernel_size, extra_levels=extra_levels,
        norm_layer=resolve_norm(norm, norm_kwargs), act_layer=resolve_act(act, act_kwargs),
    )
    return init_weights(neck)
