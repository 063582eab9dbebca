"""CSP-PAFPN of YOLOX and RTMDet: PANet's two paths with concatenation and CSP blocks, at the backbone widths.

Ge et al., "YOLOX: Exceeding YOLO Series in 2021". https://arxiv.org/abs/2107.08430
Lyu et al., "RTMDet: An Empirical Study of Designing Real-Time Object Detectors". https://arxiv.org/abs/2212.07784

Top-down: the running coarse map is narrowed by a 1x1 conv to the next finer level's width, upsampled
(nearest) to its size, concatenated with that level and merged by a CSP block. Bottom-up: each output is
downsampled by a stride-2 3x3 conv (then resized, should a backbone round sizes otherwise), concatenated with
the narrowed coarse map of the level above, and merged by a CSP block. A final conv per level (1x1 in YOLOX,
3x3 in RTMDet) maps to ``out_channels``. All convs are conv-BN-SiLU. A CSP block (``CSPLayer``) runs two 1x1
branches; one goes through ``num_blocks`` blocks, and a 1x1 conv merges their concatenation. The blocks are
YOLOX's Darknet bottleneck (1x1 then 3x3) or RTMDet's CSPNeXt block (3x3 then a depthwise-separable 5x5),
without residual in the neck.

The math is mmdetection 3.3's ``YOLOXPAFPN`` / ``CSPNeXtPAFPN`` (``mmdet/models/necks/yolox_pafpn.py``,
``cspnext_pafpn.py``, ``mmdet/models/layers/csp_layer.py``), which upsample by a fixed factor 2 and so need
x2 map sizes; here the upsampling goes to the finer map's size, the same on x2 sizes. The ``csp_pan``
family is the YOLOv8 (C2f) design instead.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("rtmdet_pafpn_s", [16, 32, 64], out_channels=16)
    >>> [tuple(f.shape[-2:]) for f in neck([torch.rand(2, c, s, s + 3) for c, s in ((16, 29), (32, 15), (64, 8))])]
    [(29, 32), (15, 18), (8, 11)]
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.resample import resize_to
from ..layers.blocks import init_weights
from ..layers.config import check_knobs

__all__ = ["DepthwiseSeparableConvNormAct", "CSPBlock", "CSPPAFPN", "csp_pafpn", "BLOCKS"]

BLOCKS = ("darknet", "cspnext")
NormFactory = Optional[Callable[[int], nn.Module]]
ActFactory = Optional[Callable[[], nn.Module]]


class DepthwiseSeparableConvNormAct(nn.Sequential):
    """A depthwise ``k x k`` conv-norm-act then a pointwise 1x1 conv-norm-act (children ``depthwise``,
    ``pointwise``); unlike :class:`~fpn_zoo.layers.conv.SeparableConvNormAct`, both halves are normed."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 norm_layer: NormFactory = None, act_layer: ActFactory = None) -> None:
        super().__init__(OrderedDict(
            depthwise=ConvNormAct(in_channels, in_channels, kernel_size, stride, groups=in_channels,
                                  norm_layer=norm_layer, act_layer=act_layer),
            pointwise=ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer),
        ))


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, separable: bool,
          norm_layer: NormFactory, act_layer: ActFactory) -> nn.Module:
    if separable and kernel_size > 1:
        return DepthwiseSeparableConvNormAct(in_channels, out_channels, kernel_size, stride, norm_layer, act_layer)
    return ConvNormAct(in_channels, out_channels, kernel_size, stride, norm_layer=norm_layer, act_layer=act_layer)


def _inner_block(kind: str, channels: int, separable: bool, norm_layer: NormFactory, act_layer: ActFactory
                 ) -> nn.Sequential:
    """Darknet bottleneck (1x1, 3x3) or CSPNeXt block (3x3, depthwise-separable 5x5), no residual."""
    if kind == "darknet":
        first = ConvNormAct(channels, channels, 1, norm_layer=norm_layer, act_layer=act_layer)
        second = _conv(channels, channels, 3, 1, separable, norm_layer, act_layer)
    else:
        first = _conv(channels, channels, 3, 1, separable, norm_layer, act_layer)
        second = DepthwiseSeparableConvNormAct(channels, channels, 5, 1, norm_layer, act_layer)
    return nn.Sequential(OrderedDict(conv1=first, conv2=second))


class CSPBlock(nn.Module):
    """``final(cat(blocks(main(x)), short(x)))`` with 1x1 ``main``, ``short`` and ``final`` convs.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        num_blocks: inner blocks on the main branch.
        kind: ``"darknet"`` or ``"cspnext"`` inner blocks.
        expand_ratio: branch width as a fraction of ``out_channels``.
        separable: depthwise-separable 3x3 convs in the inner blocks.
        norm_layer: norm factory, or None.
        act_layer: activation factory, or None.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, kind: str, expand_ratio: float,
                 separable: bool, norm_layer: NormFactory, act_layer: ActFactory) -> None:
        super().__init__()
        mid = int(out_channels * expand_ratio)
        self.main = ConvNormAct(in_channels, mid, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.short = ConvNormAct(in_channels, mid, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.blocks = nn.Sequential(*(_inner_block(kind, mid, separable, norm_layer, act_layer)
                                      for _ in range(num_blocks)))
        self.final = ConvNormAct(2 * mid, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(torch.cat([self.blocks(self.main(x)), self.short(x)], dim=1))


class CSPPAFPN(nn.Module):
    """YOLOX / RTMDet PAFPN (see the module docstring); every level keeps its backbone width until ``out``.

    Args:
        spec: the backbone's levels (distinct strides, finest first).
        out_channels: channels of every output.
        num_blocks: inner blocks per CSP block.
        block: ``"darknet"`` (YOLOX) or ``"cspnext"`` (RTMDet).
        expand_ratio: CSP branch width as a fraction of the block's output.
        out_kernel_size: kernel of the output convs (YOLOX 1, RTMDet 3).
        separable: depthwise-separable 3x3 convs (YOLOX-Nano / mmdet ``use_depthwise``).
        upsample_mode: interpolation of the top-down path.
        norm_layer: norm factory, or None.
        act_layer: activation factory, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self, spec: FeatureSpec, *, out_channels: int, num_blocks: int, block: str, expand_ratio: float,
        out_kernel_size: int, separable: bool, upsample_mode: str, norm_layer: NormFactory, act_layer: ActFactory,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.upsample_mode = upsample_mode
        ch = spec.channels
        levels = range(spec.num_levels - 1)

        def csp(cin: int, cout: int) -> CSPBlock:
            return CSPBlock(cin, cout, num_blocks, block, expand_ratio, separable, norm_layer, act_layer)

        # reduce[l] narrows level l+1's running map to level l's width; top_down[l] merges it into level l.
        self.reduce = nn.ModuleList(ConvNormAct(ch[l + 1], ch[l], 1, norm_layer=norm_layer, act_layer=act_layer)
                                    for l in levels)
        self.top_down = nn.ModuleList(csp(2 * ch[l], ch[l]) for l in levels)
        # down[l] takes output l down a stride; bottom_up[l] merges it with level l+1's narrowed map.
        self.down = nn.ModuleList(_conv(ch[l], ch[l], 3, 2, separable, norm_layer, act_layer) for l in levels)
        self.bottom_up = nn.ModuleList(csp(2 * ch[l], ch[l + 1]) for l in levels)
        self.out = nn.ModuleList(_conv(c, out_channels, out_kernel_size, 1, separable, norm_layer, act_layer)
                                 for c in ch)
        self.feature_info = make_feature_info([out_channels] * spec.num_levels, spec.reductions)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: one NCHW map per level, finest first."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        n = len(features)
        narrowed: List[Optional[torch.Tensor]] = [None] * n
        running = features[-1]
        for level in reversed(range(n - 1)):
            running = self.reduce[level](running)
            narrowed[level + 1] = running
            up = F.interpolate(running, size=features[level].shape[-2:], mode=self.upsample_mode)
            running = self.top_down[level](torch.cat([up, features[level]], dim=1))
        outs = [running]
        for level in range(n - 1):
            above = narrowed[level + 1]
            down = resize_to(self.down[level](outs[-1]), above.shape[-2:], self.upsample_mode)  # off-by-one sizes
            outs.append(self.bottom_up[level](torch.cat([down, above], dim=1)))
        return [conv(x) for conv, x in zip(self.out, outs)]


@register_neck("csp_pafpn")
def csp_pafpn(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    num_blocks: int = 3,
    block: str = "darknet",
    expand_ratio: float = 0.5,
    out_kernel_size: int = 1,
    separable: bool = False,
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "silu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    upsample_mode: str = "nearest",
) -> CSPPAFPN:
    """Build a YOLOX / RTMDet CSP-PAFPN (defaults: mmdet ``YOLOXPAFPN``'s, YOLOX-L's depth).

    Args:
        spec: the backbone's levels, at distinct strides (CSPDarknet / CSPNeXt: 8/16/32).
        out_channels: channels of every output.
        num_blocks: inner blocks per CSP block (mmdet ``num_csp_blocks``).
        block: ``"darknet"`` (YOLOX) or ``"cspnext"`` (RTMDet).
        expand_ratio: CSP branch width as a fraction of the block's output, in (0, 1].
        out_kernel_size: kernel of the output convs (YOLOX 1, RTMDet 3); odd.
        separable: depthwise-separable 3x3 convs (mmdet ``use_depthwise``).
        norm: norm after every conv (BatchNorm; None kwargs mean YOLOX's ``eps=1e-3, momentum=0.03``).
        act: activation after every conv.
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.
        upsample_mode: interpolation of the top-down path.

    Raises:
        BackboneMismatch: levels at a repeated stride (a plain ViT): build a pyramid first (``simple_pyramid``).
        ValueError: an unknown block, a ratio outside (0, 1] or giving no channels, or an even output kernel.
    """
    check_knobs(out_channels=out_channels, upsample_mode=upsample_mode, num_blocks=num_blocks,
                 out_kernel_size=out_kernel_size)
    if block not in BLOCKS:
        raise ValueError(f"csp_pafpn: block must be one of {BLOCKS}, got {block!r}")
    if isinstance(expand_ratio, bool) or not isinstance(expand_ratio, (int, float)) or not 0 < expand_ratio <= 1:
        raise ValueError(f"csp_pafpn: expand_ratio must be in (0, 1], got {expand_ratio!r}")
    if min(int(c * expand_ratio) for c in spec.channels) < 1:
        raise ValueError(f"csp_pafpn: expand_ratio={expand_ratio} leaves a CSP branch of the levels "
                         f"{list(spec.channels)} without channels")
    if out_kernel_size % 2 == 0:
        raise ValueError(f"csp_pafpn: out_kernel_size must be odd, got {out_kernel_size}")
    if len(set(spec.reductions)) != len(spec.reductions):
        raise BackboneMismatch(
            f"csp_pafpn resamples between levels, but levels repeat strides {list(spec.reductions)}: use "
            "'simple_pyramid' on a single-stride backbone"
        )
    if norm_kwargs is None and norm == "batchnorm":
        norm_kwargs = {"eps": 1e-3, "momentum": 0.03}
    neck = CSPPAFPN(
        spec, out_channels=out_channels, num_blocks=num_blocks, block=block, expand_ratio=float(expand_ratio),
        out_kernel_size=out_kernel_size, separable=bool(separable), upsample_mode=upsample_mode,
        norm_layer=resolve_norm(norm, norm_kwargs), act_layer=resolve_act(act, act_kwargs),
    )
    return init_weights(neck)
