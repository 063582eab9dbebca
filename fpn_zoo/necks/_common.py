"""The knobs every family shares, checked once, and the standard conv blocks built from them."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from torch import nn

from .._features import FeatureSpec
from ..graph import Blocks, GraphNeck, Topology
from ..layers.conv import ConvNormAct, LayerSpec, conv_block, resolve_act, resolve_norm
from ..layers.resample import ExtraLevels

__all__ = ["check_common", "standard_blocks", "standard_neck", "init_weights", "UPSAMPLE_MODES"]

UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic", "nearest-exact")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_common(
    *,
    out_channels: int,
    upsample_mode: str = "nearest",
    extra_levels: int = 0,
    extra_op: str = "subsample",
    extra_source: str = "output",
    **counts: int,
) -> None:
    """Validate the shared knobs (and any extra positive counts such as ``smooth_depth=2``)."""
    _positive_int("out_channels", out_channels)
    if upsample_mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}")
    _positive_int("extra_levels", extra_levels, minimum=0)
    if extra_op not in ExtraLevels.OPS:
        raise ValueError(f"extra_op must be one of {ExtraLevels.OPS}, got {extra_op!r}")
    if extra_source not in ("input", "output"):
        raise ValueError(f"extra_source must be 'input' or 'output', got {extra_source!r}")
    for name, value in counts.items():
        _positive_int(name, value)


def standard_blocks(
    *,
    norm: LayerSpec,
    act: LayerSpec,
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    smooth_depth: int = 1,
    separable: bool = False,
) -> Blocks:
    """FPN-style blocks: 1x1 laterals and ``smooth_depth`` 3x3 blocks after a fusion, all ``conv-norm-act``.

    With ``norm=None, act=None`` this is exactly torchvision's FPN (biased convs, nothing else).
    """
    norm_layer = resolve_norm(norm, norm_kwargs)
    act_layer = resolve_act(act, act_kwargs)

    def lateral(cin: int, cout: int) -> nn.Module:
        return ConvNormAct(cin, cout, 1, norm_layer=norm_layer, act_layer=act_layer)

    def smooth(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(*(
            conv_block(cin if d == 0 else cout, cout, 3, separable=separable, norm_layer=norm_layer, act_layer=act_layer)
            for d in range(smooth_depth)
        ))

    def down_conv(channels: int, stride: int) -> nn.Module:
        kernel = 3 if stride <= 2 else stride + 1 - stride % 2
        return conv_block(channels, channels, kernel, stride, separable=separable, norm_layer=norm_layer, act_layer=act_layer)

    def extra_conv(cin: int, cout: int) -> nn.Module:
        return ConvNormAct(cin, cout, 3, stride=2, norm_layer=norm_layer)

    return Blocks(lateral, smooth, down_conv, extra_conv, extra_act=act_layer or nn.ReLU)


def init_weights(module: nn.Module) -> nn.Module:
    """torchvision FPN's initialisation: ``kaiming_uniform_(a=1)`` convs, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def standard_neck(
    spec: FeatureSpec,
    topology: Topology,
    *,
    out_channels: int,
    norm: LayerSpec,
    act: LayerSpec,
    norm_kwargs: Optional[Mapping[str, Any]],
    act_kwargs: Optional[Mapping[str, Any]],
    smooth_depth: int,
    separable: bool,
    upsample_mode: str,
    extra_levels: int,
    extra_op: str,
    extra_source: str,
) -> GraphNeck:
    """Check the shared knobs, build :func:`standard_blocks` and run ``topology`` with them (FPN, PAN, ...)."""
    check_common(out_channels=out_channels, upsample_mode=upsample_mode, extra_levels=extra_levels,
                 extra_op=extra_op, extra_source=extra_source, smooth_depth=smooth_depth)
    blocks = standard_blocks(norm=norm, act=act, norm_kwargs=norm_kwargs, act_kwargs=act_kwargs,
                             smooth_depth=smooth_depth, separable=separable)
    neck = GraphNeck(spec, topology, blocks, out_channels=out_channels, upsample_mode=upsample_mode,
                     lateral="always", extra_levels=extra_levels, extra_op=extra_op, extra_source=extra_source)
    return init_weights(neck)
