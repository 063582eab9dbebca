"""SSD's neck: the backbone levels as they are (the finest L2-normalised), plus extra levels by conv pairs.

Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016. https://arxiv.org/abs/1512.02325

The finest map is L2-normalised over channels and rescaled by a learned per-channel weight (initialised to
``l2_norm_scale``, 20 in SSD, as in ParseNet); the other backbone maps pass through. Each extra level is a
1x1 conv-norm-act to half its width then a ``k x k`` conv-norm-act at the level's stride and padding, from
the previous level. SSD300's last two extra levels use unpadded stride-1 3x3 convs: they keep the grid
spacing (so ``feature_info`` reports the same stride as the level before) and trim a pixel from each border
(10 -> 5 -> 3 -> 1 on a 300 px image). The math is mmdetection 3.3's ``SSDNeck``
(``mmdet/models/necks/ssd_neck.py``), including SSDLite's depthwise-separable variant (``separable=True``).

The family's defaults are SSD300's extra levels; SSD512's are ``extra_channels=(512, 256, 256, 256, 256),
strides=(2, 2, 2, 2, 1), paddings=(1, 1, 1, 1, 1), last_kernel_size=4``. Both trim their last maps (sizes
follow the image, 300 or 512 px, not a stride), so only ``ssdlite_neck``, all stride-2 and padded, is a
registered variant.

Example:
    >>> import torch, fpn_zoo
    >>> from fpn_zoo.necks.ssd_neck import ssd_neck
    >>> neck = ssd_neck(fpn_zoo.FeatureSpec((16, 32), (8, 16)), extra_channels=(32, 16, 16, 16))  # SSD300
    >>> neck.feature_info.reduction()
    [8, 16, 32, 64, 64, 64]
    >>> [f.shape[-1] for f in neck([torch.rand(1, 16, 38, 38), torch.rand(1, 32, 19, 19)])]
    [38, 19, 10, 5, 3, 1]
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .._features import FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.conv import LayerSpec, resolve_act, resolve_norm
from ..layers.blocks import init_weights
from ..layers.config import check_knobs

__all__ = ["L2Norm", "PaddedConvNormAct", "SSDNeck", "ssd_neck"]

NormFactory = Optional[Callable[[int], nn.Module]]
ActFactory = Optional[Callable[[], nn.Module]]


class L2Norm(nn.Module):
    """``weight * x / (||x||_2 over channels + eps)`` with a learned per-channel ``weight`` (ParseNet).

    Half-precision inputs are normalised in float32; other dtypes in their own precision.
    """

    def __init__(self, channels: int, scale: float, eps: float = 1e-10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.promote_types(x.dtype, torch.float32))
        norm = y.square().sum(dim=1, keepdim=True).sqrt() + self.eps
        return (self.weight.to(y.dtype)[None, :, None, None] * y / norm).to(x.dtype)


class PaddedConvNormAct(nn.Sequential):
    """``conv -> norm -> act`` with an explicit padding (SSD's unpadded and kernel-4 convs), children
    ``conv``, ``norm``, ``act``; bias only without a norm."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
        groups: int = 1, norm_layer: NormFactory = None, act_layer: ActFactory = None,
    ) -> None:
        layers: "OrderedDict[str, nn.Module]" = OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                           bias=norm_layer is None))
        if norm_layer is not None:
            layers["norm"] = norm_layer(out_channels)
        if act_layer is not None:
            layers["act"] = act_layer()
        super().__init__(layers)


def _extra_level(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, separable: bool,
    norm_layer: NormFactory, act_layer: ActFactory,
) -> nn.Sequential:
    """1x1 to half the width, then the ``k x k`` conv (depthwise + pointwise when ``separable``)."""
    mid = out_channels // 2
    reduce = PaddedConvNormAct(in_channels, mid, 1, norm_layer=norm_layer, act_layer=act_layer)
    if separable:
        spatial: nn.Module = nn.Sequential(OrderedDict(
            depthwise=PaddedConvNormAct(mid, mid, kernel_size, stride, padding, groups=mid, norm_layer=norm_layer,
                                        act_layer=act_layer),
            pointwise=PaddedConvNormAct(mid, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer),
        ))
    else:
        spatial = PaddedConvNormAct(mid, out_channels, kernel_size, stride, padding, norm_layer=norm_layer,
                                    act_layer=act_layer)
    return nn.Sequential(OrderedDict(reduce=reduce, spatial=spatial))


class SSDNeck(nn.Module):
    """The backbone levels (finest L2-normalised) and conv-pair extra levels (see the module docstring).

    Args:
        spec: the backbone's levels.
        extra_channels: channels of each extra level.
        strides: stride of each extra level's ``k x k`` conv.
        paddings: padding of each extra level's ``k x k`` conv.
        last_kernel_size: kernel of the last extra level (3 elsewhere).
        l2_norm_scale: initial L2Norm weight on the finest level, or None for no L2Norm.
        separable: depthwise-separable ``k x k`` convs (SSDLite).
        norm_layer: norm factory, or None.
        act_layer: activation factory, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self, spec: FeatureSpec, *, extra_channels: Sequence[int], strides: Sequence[int], paddings: Sequence[int],
        last_kernel_size: int, l2_norm_scale: Optional[float], separable: bool, norm_layer: NormFactory,
        act_layer: ActFactory,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.l2_norm = L2Norm(spec.channels[0], l2_norm_scale) if l2_norm_scale else None
        widths = [spec.channels[-1]] + list(extra_channels)
        last = len(extra_channels) - 1
        self.extras = nn.ModuleList(
            _extra_level(widths[i], widths[i + 1], last_kernel_size if i == last else 3, strides[i], paddings[i],
                         separable, norm_layer, act_layer)
            for i in range(len(extra_channels))
        )
        reductions = list(spec.reductions)
        for stride in strides:
            reductions.append(reductions[-1] * stride)
        self.feature_info = make_feature_info(list(spec.channels) + list(extra_channels), reductions)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: those levels then the extra levels, NCHW."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        outs = list(features)
        if self.l2_norm is not None:
            outs[0] = self.l2_norm(outs[0])
        x = features[-1]
        for extra in self.extras:
            x = extra(x)
            outs.append(x)
        return outs


def _int_list(name: str, values: Any, minimum: int) -> List[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values
    ):
        raise ValueError(f"ssd_neck: {name} must be a list of ints >= {minimum}, got {values!r}")
    return list(values)


@register_neck("ssd_neck")
def ssd_neck(
    spec: FeatureSpec,
    *,
    extra_channels: Sequence[int] = (512, 256, 256, 256),
    strides: Sequence[int] = (2, 2, 1, 1),
    paddings: Sequence[int] = (1, 1, 0, 0),
    last_kernel_size: int = 3,
    l2_norm_scale: Optional[float] = 20.0,
    separable: bool = False,
    norm: LayerSpec = None,
    act: LayerSpec = "relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
) -> SSDNeck:
    """Build an SSD neck (defaults: SSD300's extra levels on VGG-16, mmdet ``ssd300`` config).

    Args:
        spec: the backbone's levels (SSD300: VGG conv4_3 and fc7, strides 8 and 16).
        extra_channels: channels of each extra level (mmdet ``out_channels[len(in_channels):]``); even.
        strides: stride of each extra level's ``k x k`` conv.
        paddings: padding of each extra level's ``k x k`` conv (0 trims the border, as in SSD300).
        last_kernel_size: kernel of the last extra level's conv (SSD512: 4).
        l2_norm_scale: initial weight of the L2Norm on the finest level; None or 0 for none (SSDLite).
        separable: depthwise-separable ``k x k`` convs (SSDLite).
        norm: norm after every conv, or None.
        act: activation after every conv, or None.
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.

    Raises:
        ValueError: lists of different lengths, odd or non-positive channels, negative paddings, strides or a
            kernel below 1, or a negative ``l2_norm_scale``.
    """
    channels = _int_list("extra_channels", extra_channels, 2)
    strides = _int_list("strides", strides, 1)
    paddings = _int_list("paddings", paddings, 0)
    if not (len(channels) == len(strides) == len(paddings)):
        raise ValueError(f"ssd_neck: extra_channels, strides and paddings need one entry per extra level, got "
                         f"{len(channels)}, {len(strides)} and {len(paddings)}")
    if any(c % 2 for c in channels):
        raise ValueError(f"ssd_neck: extra_channels must be even (the 1x1 conv halves them), got {channels}")
    check_knobs(out_channels=1, last_kernel_size=last_kernel_size)
    if l2_norm_scale is not None and (isinstance(l2_norm_scale, bool) or not isinstance(l2_norm_scale, (int, float))
                                      or l2_norm_scale < 0):
        raise ValueError(f"ssd_neck: l2_norm_scale must be a non-negative number or None, got {l2_norm_scale!r}")
    neck = SSDNeck(
        spec, extra_channels=channels, strides=strides, paddings=paddings, last_kernel_size=last_kernel_size,
        l2_norm_scale=l2_norm_scale, separable=bool(separable), norm_layer=resolve_norm(norm, norm_kwargs),
        act_layer=resolve_act(act, act_kwargs),
    )
    return init_weights(neck)
