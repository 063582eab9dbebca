"""CSP-PAN: the YOLO-style path-aggregation neck, fusing by concatenation and smoothing with CSP blocks.

The neck of YOLOv5/v8 (https://github.com/ultralytics/ultralytics) and RTMDet (Lyu et al. 2022,
https://arxiv.org/abs/2212.07784), built on CSPNet's block (Wang et al. 2019, https://arxiv.org/abs/1911.11929):
a top-down path (upsample the coarser map, concatenate with the level's map, CSP block) then a bottom-up
path (stride-2 3x3 conv, concatenate with the top-down map of the next level, CSP block). Outputs are the
finest top-down map and the bottom-up maps. Conv-BatchNorm-SiLU throughout.

A CSP block: a 1x1 conv to ``2 * hidden`` channels split in two halves; one half runs through ``n``
bottlenecks (two 3x3 convs, no shortcut, as in the YOLO necks); the halves (``c2f``: and every bottleneck's
output, YOLOv8's C2f) are concatenated and a 1x1 conv gives the output. ``hidden = expand_ratio * width``.

Width: uniform. YOLOv8 keeps per-level widths (256/512/1024 x width multiple) and concatenates raw backbone
maps; the :class:`~fpn_zoo.graph.GraphNeck` executor gives every node the same ``out_channels`` (a concat
node has ``n_inputs * out_channels`` channels before its block), so every backbone map is first brought to
the width by a 1x1 conv-BN-SiLU, as in PP-PicoDet's CSP-PAN (https://arxiv.org/abs/2111.00902). RTMDet's
``CSPNeXtPAFPN`` is per-level inside but also ends with uniform ``out_channels``, which is what a detection
head shares weights over; uniform width keeps the neck a plain topology on the common executor.

Scale: ``out_channels`` and ``num_blocks`` are the actual width and bottleneck count; ``widen_factor`` and
``deepen_factor`` scale them YOLO-style (width rounded up to a multiple of 8, at least one bottleneck).
The named variants ``csp_pan_n/s/m/l`` set the width and depth directly (64/128/192/256, 1/1/2/3).

How it relates to ultralytics' neck: the exact YOLOv8 / YOLO11 neck, weight for weight, is the ``yolo_pan``
family (``yolov8n_neck`` ..., :func:`fpn_zoo.convert.from_ultralytics`). ``csp_pan`` has the same topology and
its C2f block computes YOLOv8's C2f function with the same child names, but differs in five ways: one
uniform width, a 1x1 projection on every input, no SPPF / C2PSA on the coarsest level, BatchNorm eps 1e-5
(ultralytics: 1e-3, momentum 0.03), and no residual bottlenecks or C3k (so no YOLO11). It stays as it is so
that its checkpoints keep loading; choose ``yolo_pan`` to match ultralytics, ``csp_pan`` for a uniform-width
CSP-PAN on any backbone (PP-PicoDet's layout).

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("csp_pan_n", [32, 64, 128])
    >>> [tuple(f.shape[1:]) for f in neck([torch.rand(1, c, s, s) for c, s in ((32, 16), (64, 8), (128, 4))])]
    [(64, 16, 16), (64, 8, 8), (64, 4, 4)]
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, List, Mapping, Optional

import torch
from torch import nn

from .._features import BackboneMismatch, FeatureSpec
from .._registry import register_neck
from ..graph import GraphNeck, Node, Topology
from ..layers.blocks import init_weights, standard_blocks
from ..layers.config import CSP_BLOCKS, check_choice, check_knobs
from ..layers.conv import ConvNormAct, LayerSpec, conv_block, resolve_act, resolve_norm

__all__ = ["CSPBlock", "csp_pan_topology", "scaled_width", "scaled_depth", "csp_pan"]


class Bottleneck(nn.Sequential):
    """Two conv-norm-act blocks, no shortcut (YOLO necks): 3x3 + 3x3 (``c2f``) or 1x1 + 3x3 (``c3``)."""

    def __init__(
        self,
        channels: int,
        first_kernel: int,
        *,
        separable: bool,
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        self.conv1 = conv_block(channels, channels, first_kernel, separable=separable, norm_layer=norm_layer,
                                act_layer=act_layer)
        self.conv2 = conv_block(channels, channels, 3, separable=separable, norm_layer=norm_layer, act_layer=act_layer)


class CSPBlock(nn.Module):
    """Cross-stage-partial block: split, ``num_blocks`` bottlenecks on one half, concatenate, 1x1.

    Args:
        in_channels: channels of the (concatenated) input.
        out_channels: channels of the output.
        num_blocks: bottlenecks on the processed half.
        expand_ratio: hidden width of each half, relative to ``out_channels``.
        style: ``c2f`` (YOLOv8: concatenate every bottleneck's output too) or ``c3`` (YOLOv5 / RTMDet's
            ``CSPLayer``: concatenate the two halves only); one of :data:`~fpn_zoo.layers.config.CSP_BLOCKS`.
        separable: depthwise-separable 3x3 convs in the bottlenecks.
        norm_layer: norm factory or None.
        act_layer: activation factory or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        *,
        expand_ratio: float = 0.5,
        style: str = "c2f",
        separable: bool = False,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
        act_layer: Optional[Callable[[], nn.Module]] = None,
    ) -> None:
        super().__init__()
        self.style = style
        hidden = max(1, int(out_channels * expand_ratio))
        self.split = ConvNormAct(in_channels, 2 * hidden, 1, norm_layer=norm_layer, act_layer=act_layer)
        first_kernel = 3 if style == "c2f" else 1
        self.blocks = nn.ModuleList(
            Bottleneck(hidden, first_kernel, separable=separable, norm_layer=norm_layer, act_layer=act_layer)
            for _ in range(num_blocks)
        )
        merged = (2 + num_blocks if style == "c2f" else 2) * hidden
        self.merge = ConvNormAct(merged, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, x = self.split(x).chunk(2, dim=1)
        parts = [kept, x]
        for block in self.blocks:
            x = block(x)
            if self.style == "c2f":
                parts.append(x)
        if self.style == "c3":
            parts[1] = x
        return self.merge(torch.cat(parts, dim=1))


def csp_pan_topology(num_levels: int) -> Topology:
    """``lat{L-1}`` (the coarsest map, projected), ``td{l}`` top-down and ``bu{l}`` bottom-up concat nodes.

    Each concat lists the resampled map first (upsampled / strided), then the level's own map, as YOLOv8 and
    RTMDet concatenate. Outputs: ``td0``, ``bu1`` ... ``bu{L-1}``.
    """
    if num_levels < 2:
        raise ValueError(f"a CSP-PAN needs at least two levels, got {num_levels}")
    nodes: List[Node] = [Node(f"lat{num_levels - 1}", num_levels - 1, (num_levels - 1,), smooth=False)]
    td_ids = [0] * num_levels
    td_ids[-1] = num_levels
    for level in reversed(range(num_levels - 1)):
        nodes.append(Node(f"td{level}", level, (td_ids[level + 1], level), fusion="concat"))
        td_ids[level] = num_levels + len(nodes) - 1
    outputs = [td_ids[0]]
    for level in range(1, num_levels):
        nodes.append(Node(f"bu{level}", level, (outputs[-1], td_ids[level]), fusion="concat", downsample="conv"))
        outputs.append(num_levels + len(nodes) - 1)
    return Topology(f"csp_pan{num_levels}", num_levels, tuple(nodes), tuple(outputs))


def scaled_width(channels: int, widen_factor: float, divisor: int = 8) -> int:
    """``channels * widen_factor`` rounded up to a multiple of ``divisor`` (unchanged at factor 1)."""
    if widen_factor == 1:
        return channels
    return max(divisor, int(math.ceil(channels * widen_factor / divisor)) * divisor)


def scaled_depth(num_blocks: int, deepen_factor: float) -> int:
    """``num_blocks * deepen_factor`` rounded, at least 1 (YOLO's depth multiple)."""
    return max(1, int(round(num_blocks * deepen_factor)))


def _check_factor(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_levels(spec: FeatureSpec) -> None:
    if spec.num_levels < 2:
        raise BackboneMismatch(
            f"a CSP-PAN concatenates maps of two levels or more, but the backbone gives one (stride "
            f"{spec.reductions[0]}): use 'pan' (which adds levels with extra_levels), or 'simple_pyramid_fpn' "
            "to build a pyramid from that one map"
        )


@register_neck("csp_pan")
def csp_pan(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    num_blocks: int = 3,
    widen_factor: float = 1.0,
    deepen_factor: float = 1.0,
    expand_ratio: float = 0.5,
    csp_block: str = "c2f",
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "silu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    separable: bool = False,
    upsample_mode: str = "nearest",
    extra_levels: int = 0,
    extra_op: str = "subsample",
    extra_source: str = "output",
) -> GraphNeck:
    """Build a CSP-PAN.

    Args:
        spec: the backbone's levels (at least two; all at one stride, as a ViT's, builds no pyramid and warns).
        out_channels: channels of every node and output, before ``widen_factor``.
        num_blocks: bottlenecks per CSP block, before ``deepen_factor``.
        widen_factor: YOLO width multiple: the width is ``out_channels * widen_factor`` rounded up to 8.
        deepen_factor: YOLO depth multiple: ``round(num_blocks * deepen_factor)`` bottlenecks, at least 1.
        expand_ratio: hidden width of a CSP block's halves, relative to the width.
        csp_block: ``c2f`` (YOLOv8) or ``c3`` (YOLOv5, RTMDet's CSPLayer).
        norm: norm after each conv (YOLO: BatchNorm, eps 1e-3, momentum 0.03 via ``norm_kwargs``).
        act: activation after each conv (YOLO: SiLU).
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.
        separable: depthwise-separable 3x3 convs (bottlenecks and downsampling; RTMDet's ``use_depthwise``).
        upsample_mode: how the top-down path upsamples.
        extra_levels: levels beyond the coarsest (P6 ...).
        extra_op: ``subsample``, ``maxpool`` or ``conv``.
        extra_source: make extra levels from the coarsest ``output`` or ``input`` map.

    Raises:
        BackboneMismatch: a single-level backbone (use ``pan`` or ``simple_pyramid_fpn``).
        ValueError: a bad knob.
    """
    check_knobs(out_channels=out_channels, upsample_mode=upsample_mode, extra_levels=extra_levels,
                extra_op=extra_op, extra_source=extra_source, num_blocks=num_blocks)
    _check_factor("widen_factor", widen_factor)
    _check_factor("deepen_factor", deepen_factor)
    _check_factor("expand_ratio", expand_ratio)
    check_choice("csp_block", csp_block, CSP_BLOCKS)
    _check_levels(spec)
    width = scaled_width(out_channels, widen_factor)
    depth = scaled_depth(num_blocks, deepen_factor)
    norm_layer, act_layer = resolve_norm(norm, norm_kwargs), resolve_act(act, act_kwargs, inplace=True)

    def csp_smooth(cin: int, cout: int) -> nn.Module:
        return CSPBlock(cin, cout, depth, expand_ratio=expand_ratio, style=csp_block, separable=bool(separable),
                        norm_layer=norm_layer, act_layer=act_layer)

    base = standard_blocks(norm=norm, act=act, norm_kwargs=norm_kwargs, act_kwargs=act_kwargs,
                           separable=bool(separable))
    blocks = replace(base, smooth=csp_smooth)
    neck = GraphNeck(spec, csp_pan_topology(spec.num_levels), blocks, out_channels=width, upsample_mode=upsample_mode,
                     lateral="always", extra_levels=extra_levels, extra_op=extra_op, extra_source=extra_source)
    return init_weights(neck)
