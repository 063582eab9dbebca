"""The block sets families build their graphs from, and the initialisation they share.

A family hands :class:`~fpn_zoo.graph.GraphNeck` a :class:`Blocks`: factories for the 1x1 projection of an
input, the block after a fusion, the learned downsampling and the conv extra levels. Two sets cover the
built-in families:

- :func:`standard_blocks`: ``conv -> norm -> act`` everywhere (FPN, https://arxiv.org/abs/1612.03144;
  PANet, https://arxiv.org/abs/1803.01534; the base of CSP-PAN).
- :func:`preact_blocks`: ``conv-norm`` projections and ``act -> conv -> norm`` after a fusion
  (:class:`ActConvNorm`: EfficientDet's BiFPN, https://arxiv.org/abs/1911.09070, and NAS-FPN,
  https://arxiv.org/abs/1904.07392).

Example:
    >>> blocks = standard_blocks(norm="batchnorm", act="relu", smooth_depth=2)
    >>> [type(m).__name__ for m in blocks.smooth(32, 32)]
    ['ConvNormAct', 'ConvNormAct']
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from torch import nn

from .conv import ConvNormAct, LayerSpec, conv_block, resolve_act, resolve_norm

__all__ = ["Blocks", "ActConvNorm", "standard_blocks", "preact_blocks", "init_weights"]


@dataclass(frozen=True)
class Blocks:
    """The layers a family builds its graph from (factories, called once at construction).

    Attributes:
        lateral: ``(in_channels, out_channels) -> module``: the 1x1 projection of an input.
        smooth: ``(in_channels, out_channels) -> module``: what runs after a fusion.
        down_conv: ``(channels, stride) -> module``: the learned downsampling of ``downsample="conv"``.
        extra_conv: ``(in_channels, out_channels) -> module``: a 3x3 stride-2 block for conv extra levels.
        extra_act: the activation between conv extra levels. It must not work in place: its input is a
            level already handed out as an output.
    """

    lateral: Callable[[int, int], nn.Module]
    smooth: Callable[[int, int], nn.Module]
    down_conv: Callable[[int, int], nn.Module]
    extra_conv: Callable[[int, int], nn.Module]
    extra_act: Callable[[], nn.Module] = field(default=nn.ReLU)


class ActConvNorm(nn.Sequential):
    """``act -> conv -> norm``: the pre-activation block of EfficientDet's BiFPN and of NAS-FPN.

    The conv is a plain ``k x k`` conv (child ``conv``) or depthwise-separable (``conv_dw`` then ``conv_pw``);
    convs carry a bias only when there is no norm. ``act_layer`` must build an activation that does not work
    in place (:func:`~fpn_zoo.layers.conv.resolve_act`'s default): its input may be a map that later nodes
    still read.

    Children: ``act`` (if any), ``conv`` or ``conv_dw`` + ``conv_pw``, ``norm`` (if any).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        separable: bool = False,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
        act_layer: Optional[Callable[[], nn.Module]] = None,
    ) -> None:
        super().__init__()
        if act_layer is not None:
            self.act = act_layer()
        padding = kernel_size // 2
        bias = norm_layer is None
        if separable and kernel_size > 1:
            self.conv_dw = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, groups=in_channels, bias=False)
            self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        if norm_layer is not None:
            self.norm = norm_layer(out_channels)


def _down_kernel(stride: int) -> int:
    """3x3 for stride 2, else an odd kernel at least as wide as the stride (stride + 1 - stride % 2)."""
    return 3 if stride <= 2 else stride + 1 - stride % 2


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

    With ``norm=None, act=None`` this is exactly torchvision's FPN (biased convs, nothing else). Conv extra
    levels are ``conv-norm`` with the activation between them (RetinaNet's ``LastLevelP6P7``; ReLU when
    ``act`` is None, as there).
    """
    norm_layer = resolve_norm(norm, norm_kwargs)
    act_layer = resolve_act(act, act_kwargs, inplace=True)  # always right after a conv or norm

    def lateral(cin: int, cout: int) -> nn.Module:
        return ConvNormAct(cin, cout, 1, norm_layer=norm_layer, act_layer=act_layer)

    def smooth(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(*(
            conv_block(cin if d == 0 else cout, cout, 3, separable=separable, norm_layer=norm_layer, act_layer=act_layer)
            for d in range(smooth_depth)
        ))

    def down_conv(channels: int, stride: int) -> nn.Module:
        return conv_block(channels, channels, _down_kernel(stride), stride, separable=separable,
                          norm_layer=norm_layer, act_layer=act_layer)

    def extra_conv(cin: int, cout: int) -> nn.Module:
        return ConvNormAct(cin, cout, 3, stride=2, norm_layer=norm_layer)

    return Blocks(lateral, smooth, down_conv, extra_conv, extra_act=resolve_act(act, act_kwargs) or nn.ReLU)


def preact_blocks(
    *,
    norm: LayerSpec,
    act: LayerSpec,
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    smooth_depth: int = 1,
    separable: bool = True,
) -> Blocks:
    """EfficientDet / NAS-FPN blocks: ``conv-norm`` projections, ``act-conv-norm`` after each fusion.

    Laterals and learned downsampling have no activation (the next node's smoothing starts with one);
    ``smooth_depth`` :class:`ActConvNorm` blocks follow a fusion; conv extra levels are ``conv-norm`` with
    the activation between them. No activation works in place: each one reads a map others still use.
    """
    norm_layer = resolve_norm(norm, norm_kwargs)
    act_layer = resolve_act(act, act_kwargs)

    def lateral(cin: int, cout: int) -> nn.Module:
        return ConvNormAct(cin, cout, 1, norm_layer=norm_layer)

    def smooth(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(*(
            ActConvNorm(cin if d == 0 else cout, cout, 3, separable=separable, norm_layer=norm_layer, act_layer=act_layer)
            for d in range(smooth_depth)
        ))

    def down_conv(channels: int, stride: int) -> nn.Module:
        return conv_block(channels, channels, _down_kernel(stride), stride, separable=separable, norm_layer=norm_layer)

    def extra_conv(cin: int, cout: int) -> nn.Module:
        return ConvNormAct(cin, cout, 3, stride=2, norm_layer=norm_layer)

    return Blocks(lateral, smooth, down_conv, extra_conv, extra_act=act_layer or nn.Identity)


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
