"""YOLOF's dilated encoder: one coarse map, widened in receptive field by dilated residual blocks.

Chen et al., "You Only Look One-level Feature", CVPR 2021. https://arxiv.org/abs/2103.09460

YOLOF detects from a single map (ResNet's C5, stride 32). A 1x1 projection and a 3x3 conv, each followed by a
norm (and biased, unlike the rest), bring it to ``out_channels``; then residual bottlenecks (1x1 reduce,
3x3 conv at growing dilations, 1x1 expand, each conv-norm-act, plus the identity) cover objects of all
sizes from that one map. The math is mmdetection 3.3's ``DilatedEncoder``
(``mmdet/models/necks/dilated_encoder.py``).

Inputs: the encoder reads the LAST input map. A backbone whose levels have different strides is declined
(use ``out_indices=(-1,)`` to keep only its last stage, or a pyramid neck); several maps at one stride (a
ViT's blocks) are accepted and only the last is used.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("yolof_dilated_encoder", fpn_zoo.FeatureSpec((64,), (32,)),
    ...                            out_channels=32, block_mid_channels=8)
    >>> [tuple(f.shape) for f in neck([torch.rand(1, 64, 8, 11)])], neck.feature_info.reduction()
    ([(1, 32, 8, 11)], [32])
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.blocks import init_weights
from ..layers.config import check_knobs

__all__ = ["BiasedConvNorm", "DilatedBottleneck", "DilatedEncoder", "dilated_encoder"]

NormFactory = Optional[Callable[[int], nn.Module]]


class BiasedConvNorm(nn.Sequential):
    """``conv`` (with a bias) then ``norm``: YOLOF's projection layers keep the conv bias before the norm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormFactory) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        if norm_layer is not None:
            self.norm = norm_layer(out_channels)


class DilatedBottleneck(nn.Module):
    """``x + expand(dilated(reduce(x)))``, each a conv-norm-act; the 3x3 conv is dilated by ``dilation``."""

    def __init__(
        self, channels: int, mid_channels: int, dilation: int, norm_layer: NormFactory,
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        self.reduce = ConvNormAct(channels, mid_channels, 1, norm_layer=norm_layer, act_layer=act_layer)
        layers: "OrderedDict[str, nn.Module]" = OrderedDict(
            conv=nn.Conv2d(mid_channels, mid_channels, 3, padding=dilation, dilation=dilation,
                           bias=norm_layer is None))
        if norm_layer is not None:
            layers["norm"] = norm_layer(mid_channels)
        if act_layer is not None:
            layers["act"] = act_layer()
        self.dilated = nn.Sequential(layers)
        self.expand = ConvNormAct(mid_channels, channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.dilated(self.reduce(x)))


class DilatedEncoder(nn.Module):
    """Projection, 3x3 conv, then dilated residual bottlenecks on the last input map.

    Args:
        spec: the backbone's levels (one stride; the last map is used).
        out_channels: output channels.
        block_mid_channels: channels inside each bottleneck.
        dilations: one bottleneck per dilation.
        norm_layer: norm factory, or None.
        act_layer: activation factory inside the bottlenecks, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self, spec: FeatureSpec, *, out_channels: int, block_mid_channels: int, dilations: Sequence[int],
        norm_layer: NormFactory, act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.lateral = BiasedConvNorm(spec.channels[-1], out_channels, 1, norm_layer)
        self.output = BiasedConvNorm(out_channels, out_channels, 3, norm_layer)
        self.blocks = nn.Sequential(*(
            DilatedBottleneck(out_channels, block_mid_channels, d, norm_layer, act_layer) for d in dilations
        ))
        self.feature_info = make_feature_info([out_channels], [spec.reductions[-1]])

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: the backbone's maps (the last is used). Returns: one NCHW map."""
        check_module_inputs(self, features, self.spec)
        x = features[-1]
        if self.spec.input_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        return [self.blocks(self.output(self.lateral(x)))]


@register_neck("dilated_encoder")
def dilated_encoder(
    spec: FeatureSpec,
    *,
    out_channels: int = 512,
    block_mid_channels: int = 128,
    dilations: Sequence[int] = (2, 4, 6, 8),
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
) -> DilatedEncoder:
    """Build YOLOF's dilated encoder (mmdet ``DilatedEncoder``'s YOLOF config: 512 ch, 128 mid, dilations 2-8).

    Args:
        spec: the backbone's levels, all at one stride (YOLOF: ResNet C5 alone); the last map is used.
        out_channels: output channels.
        block_mid_channels: channels inside each residual bottleneck.
        dilations: the 3x3 dilation of each bottleneck (their number is the number of blocks).
        norm: norm after every conv (YOLOF: BatchNorm).
        act: activation inside the bottlenecks (YOLOF: ReLU).
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.

    Raises:
        BackboneMismatch: levels at several strides.
        ValueError: bad channel counts or dilations.
    """
    check_knobs(out_channels=out_channels, block_mid_channels=block_mid_channels)
    if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dilations
    ):
        raise ValueError(f"dilated_encoder: dilations must be a list of positive ints, got {dilations!r}")
    if len(set(spec.reductions)) > 1:
        raise BackboneMismatch(
            f"yolof_dilated_encoder reads one map, but the backbone has levels at strides {list(spec.reductions)}: "
            "create it with out_indices=(-1,) to use its last stage (YOLOF uses C5 alone), or use 'fpn'/'pan'"
        )
    neck = DilatedEncoder(
        spec, out_channels=out_channels, block_mid_channels=block_mid_channels, dilations=tuple(dilations),
        norm_layer=resolve_norm(norm, norm_kwargs), act_layer=resolve_act(act, act_kwargs),
    )
    return init_weights(neck)
