"""FPN with CARAFE upsampling: the top-down path upsamples by content-aware reassembly, not by nearest.

Wang et al., "CARAFE: Content-Aware ReAssembly of FEatures", ICCV 2019. https://arxiv.org/abs/1905.02188

The layout is mmdetection 3.3's ``FPN_CARAFE`` (``mmdet/models/necks/fpn_carafe.py``) with its paper config
(no norm, no activation, CARAFE ``k_up=5, k_enc=3, compressed 64``): a 1x1 lateral conv per backbone level
and a 3x3 stride-2 conv per extra level (the first on the coarsest backbone map, the next ones on the
previous extra lateral). Unlike a plain FPN the extra levels take part in the top-down path: going down from
the coarsest, each map is upsampled x2 by its own :class:`~fpn_zoo.layers.carafe.CARAFE` and added to the
next finer lateral (cropped to its size, as mmdet's ``slice_as``; edge-padded when a backbone rounds sizes
down). Every sum is smoothed by a 3x3 conv. The reference implementation is mmdet 3.3's ``FPN_CARAFE``, which
needs compiled mmcv ops: weight parity with it was not possible here; tested against a float64 reference of
the math. State-dict names follow it (``lateral_convs``, ``upsample_modules``, ``fpn_convs``) so that a
converter can map its weights.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("fpn_carafe", [8, 16, 32], out_channels=16, compressed_channels=8)
    >>> [tuple(f.shape[-2:]) for f in neck([torch.rand(1, c, *s) for c, s in ((8, (29, 42)), (16, (15, 21)),
    ...                                                                      (32, (8, 11)))])]
    [(29, 42), (15, 21), (8, 11), (4, 6)]
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.blocks import init_weights
from ..layers.carafe import CARAFE
from ..layers.config import check_knobs
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm

__all__ = ["FPNCarafe", "fpn_carafe"]


class FPNCarafe(nn.Module):
    """FPN whose top-down upsampling is CARAFE, extra levels included (see the module docstring).

    Args:
        spec: the backbone's levels (strides doubling level to level).
        out_channels: channels of every output.
        extra_levels: stride-2 levels beyond the coarsest (P6 ...), part of the top-down path.
        make_upsampler: ``channels -> module`` taking ``(x, size)``: the x2 upsampler between two levels.
        norm_layer: norm factory after every conv, or None.
        act_layer: activation factory after every conv, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        out_channels: int,
        extra_levels: int,
        make_upsampler: Callable[[int], nn.Module],
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        self.spec = spec
        num_outputs = spec.num_levels + extra_levels
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(cin, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer) for cin in spec.channels
        )
        self.lateral_convs.extend(
            ConvNormAct(spec.channels[-1] if i == 0 else out_channels, out_channels, 3, stride=2,
                        norm_layer=norm_layer, act_layer=act_layer)
            for i in range(extra_levels)
        )
        self.upsample_modules = nn.ModuleList(make_upsampler(out_channels) for _ in range(num_outputs - 1))
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm_layer=norm_layer, act_layer=act_layer)
            for _ in range(num_outputs)
        )
        reductions = list(spec.reductions) + [spec.reductions[-1] * 2 ** (i + 1) for i in range(extra_levels)]
        self.feature_info = make_feature_info([out_channels] * num_outputs, reductions)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: one NCHW map per output level, finest first."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        num_inputs = len(features)
        laterals: List[torch.Tensor] = []
        for i, conv in enumerate(self.lateral_convs):
            source = features[i] if i < num_inputs else features[-1] if i == num_inputs else laterals[-1]
            laterals.append(conv(source))
        for i in range(len(laterals) - 1, 0, -1):
            finer = laterals[i - 1]
            laterals[i - 1] = finer + self.upsample_modules[i - 1](laterals[i], finer.shape[-2:])
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]


def _check_doubling_strides(spec: FeatureSpec) -> None:
    reductions = list(spec.reductions)
    if any(coarse != 2 * fine for fine, coarse in zip(reductions, reductions[1:])):
        raise BackboneMismatch(
            f"fpn_carafe upsamples x2 from level to level, so the strides must double, got {reductions}: on a "
            "single-stride ViT put a pyramid first (simple_pyramid_fpn), or use fpn, which resizes to any size"
        )


@register_neck("fpn_carafe")
def fpn_carafe(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    extra_levels: int = 1,
    norm: LayerSpec = None,
    act: LayerSpec = None,
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    up_kernel: int = 5,
    up_group: int = 1,
    encoder_kernel: int = 3,
    encoder_dilation: int = 1,
    compressed_channels: int = 64,
) -> FPNCarafe:
    """Build an FPN with CARAFE upsampling (the paper's / mmdet config's defaults).

    Args:
        spec: the backbone's levels; strides must double from level to level.
        out_channels: channels of every output.
        extra_levels: stride-2 conv levels beyond the coarsest (the paper: P6 on C2-C5, so 1).
        norm: norm after each conv, or None (the paper: none).
        act: activation after each conv, or None (the paper: none).
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.
        up_kernel: CARAFE's reassembly kernel size ``k_up`` (odd).
        up_group: channel groups with their own reassembly kernels (divides ``out_channels``).
        encoder_kernel: CARAFE's content encoder kernel size ``k_enc`` (odd).
        encoder_dilation: the content encoder's dilation.
        compressed_channels: channels of CARAFE's channel compressor.

    Raises:
        BackboneMismatch: strides that do not double level to level (a single-stride ViT).
        ValueError: bad counts, even kernel sizes, or ``up_group`` not dividing ``out_channels``.
    """
    check_knobs(out_channels=out_channels, extra_levels=extra_levels, up_kernel=up_kernel, up_group=up_group,
                encoder_kernel=encoder_kernel, encoder_dilation=encoder_dilation,
                compressed_channels=compressed_channels)
    for name, size in (("up_kernel", up_kernel), ("encoder_kernel", encoder_kernel)):
        if size % 2 == 0:
            raise ValueError(f"fpn_carafe: {name} must be odd (a kernel centred on its pixel), got {size}")
    if out_channels % up_group:
        raise ValueError(f"fpn_carafe: up_group={up_group} must divide out_channels={out_channels}")
    _check_doubling_strides(spec)

    def make_upsampler(channels: int) -> nn.Module:
        return CARAFE(channels, 2, up_kernel, up_group, encoder_kernel, encoder_dilation, compressed_channels)

    neck = FPNCarafe(spec, out_channels=out_channels, extra_levels=extra_levels, make_upsampler=make_upsampler,
                     norm_layer=resolve_norm(norm, norm_kwargs), act_layer=resolve_act(act, act_kwargs, inplace=True))
    init_weights(neck)
    for module in neck.modules():  # init_weights reset CARAFE's convs too: its own init is near-zero kernels
        if isinstance(module, CARAFE):
            module.reset_parameters()
    return neck
