"""Feature Pyramid Grids: a deep stack of bottom-up pathways joined across by lateral and skip connections.

Chen et al., "Feature Pyramid Grids", 2020. https://arxiv.org/abs/2004.03580

After 1x1 laterals (and extra levels by stride-2 subsampling or convs), ``stack_times`` bottom-up stages
follow. In each stage, level ``i``'s new map is the sum of: the stage's own level ``i - 1`` map through a
stride-2 3x3 conv (the pathway), the previous stage's level ``i`` through a 1x1 conv (across, lateral), the
previous stage's level ``i + 1`` upsampled (nearest) then through a 3x3 conv (across, down), and the first
map of level ``i`` through a 1x1 conv (skip). The paper's grid is triangular: level ``i`` joins only after
``num_levels - 1 - i`` stages (``skip_inds="triangle"``), keeping its previous map until then. Each
output is a 3x3 conv of the last stage's map. Every conv is pre-activated: ReLU -> conv -> norm.

The math is mmdetection 3.3's ``FPG`` (``mmdet/models/necks/fpg.py``) in the configuration of its FPG configs
(``configs/fpg``): ``same_up`` conv, ``across_lateral`` / ``across_skip`` 1x1 convs, ``across_down``
interpolation conv, ``last_conv`` outputs, bottom-up paths. mmdet upsamples by a fixed factor 2 (x2 map
sizes only); here the upsampling goes to the finer map's size, the same on x2 sizes.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("fpg", [16, 32, 64], out_channels=16, stack_times=2)
    >>> neck.feature_info.reduction()
    [8, 16, 32, 64, 128]
    >>> [f.shape[-1] for f in neck([torch.rand(2, c, s, s) for c, s in ((16, 29), (32, 15), (64, 8))])]
    [29, 15, 8, 4, 2]
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.conv import LayerSpec, resolve_act, resolve_norm
from ..layers.resample import resize_to
from ..layers.blocks import ActConvNorm, init_weights
from ..layers.config import MMDET_EXTRA_OPS, check_knobs

__all__ = ["FeaturePyramidGrid", "fpg", "triangle_skips"]

NormFactory = Optional[Callable[[int], nn.Module]]
ActFactory = Optional[Callable[[], nn.Module]]
SkipInds = Sequence[Sequence[int]]


def triangle_skips(num_levels: int, stack_times: int) -> List[List[int]]:
    """The paper's grid: level ``i`` skips the first ``num_levels - 1 - i`` stages (at most all of them)."""
    return [list(range(min(num_levels - 1 - i, stack_times))) for i in range(num_levels)]


class FeaturePyramidGrid(nn.Module):
    """FPG (see the module docstring).

    Args:
        spec: the backbone's levels (distinct strides, finest first).
        out_channels: channels of every output.
        inter_channels: channels inside the grid.
        stack_times: bottom-up stages.
        skip_inds: for each level (extra levels included), the stages it skips.
        extra_levels: levels beyond the coarsest input.
        extra_op: ``"subsample"`` (every second pixel) or ``"conv"`` (a biased stride-2 3x3 conv).
        norm_layer: norm factory of the grid's convs, or None.
        output_norm_layer: norm factory of the output convs, or None (FPG: None).
        act_layer: the pre-activation, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self, spec: FeatureSpec, *, out_channels: int, inter_channels: int, stack_times: int, skip_inds: SkipInds,
        extra_levels: int, extra_op: str, norm_layer: NormFactory, output_norm_layer: NormFactory,
        act_layer: ActFactory,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.extra_op = extra_op
        self.extra_levels = extra_levels
        self.skip_inds = [set(s) for s in skip_inds]
        num_levels = spec.num_levels + extra_levels
        c = inter_channels
        self.laterals = nn.ModuleList(nn.Conv2d(cin, c, 1) for cin in spec.channels)
        self.extras = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1)
                                    for _ in range(extra_levels if extra_op == "conv" else 0))

        def node(stage: int, level: int) -> nn.ModuleDict:
            if stage in self.skip_inds[level]:
                return nn.ModuleDict()  # the level keeps its previous map
            parts: "OrderedDict[str, nn.Module]" = OrderedDict()
            if level > 0:
                parts["pathway"] = ActConvNorm(c, c, 3, 2, norm_layer=norm_layer, act_layer=act_layer)
            parts["lateral"] = ActConvNorm(c, c, 1, 1, norm_layer=norm_layer, act_layer=act_layer)
            if level < num_levels - 1:
                parts["from_coarser"] = ActConvNorm(c, c, 3, 1, norm_layer=norm_layer, act_layer=act_layer)
            parts["skip"] = ActConvNorm(c, c, 1, 1, norm_layer=norm_layer, act_layer=act_layer)
            return nn.ModuleDict(parts)

        self.stages = nn.ModuleList(nn.ModuleList(node(s, i) for i in range(num_levels)) for s in range(stack_times))
        self.outputs = nn.ModuleList(ActConvNorm(c, out_channels, 3, 1, norm_layer=output_norm_layer, act_layer=act_layer)
                                     for _ in range(num_levels))
        reductions = list(spec.reductions) + [spec.reductions[-1] * 2 ** (k + 1) for k in range(extra_levels)]
        self.feature_info = make_feature_info([out_channels] * num_levels, reductions)

    def _stage(self, stage: nn.ModuleList, previous: List[torch.Tensor], first: List[torch.Tensor]
               ) -> List[torch.Tensor]:
        maps: List[torch.Tensor] = []
        for level, parts in enumerate(stage):
            if len(parts) == 0:
                maps.append(previous[level])
                continue
            size = previous[level].shape[-2:]
            terms = []  # summed in mmdet's order: pathway, lateral, from_coarser, skip
            if "pathway" in parts:
                terms.append(resize_to(parts["pathway"](maps[-1]), size, "nearest"))
            terms.append(parts["lateral"](previous[level]))
            if "from_coarser" in parts:
                terms.append(parts["from_coarser"](F.interpolate(previous[level + 1], size=size, mode="nearest")))
            terms.append(parts["skip"](first[level]))
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            maps.append(total)
        return maps

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: one NCHW map per level, then the extra levels."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        first = [lateral(x) for lateral, x in zip(self.laterals, features)]
        for k in range(self.extra_levels):
            first.append(self.extras[k](first[-1]) if self.extra_op == "conv" else first[-1][..., ::2, ::2])
        maps = first
        for stage in self.stages:
            maps = self._stage(stage, maps, first)
        return [conv(x) for conv, x in zip(self.outputs, maps)]


@register_neck("fpg")
def fpg(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    inter_channels: Optional[int] = None,
    stack_times: int = 9,
    skip_inds: Union[str, SkipInds, None] = "triangle",
    extra_levels: int = 2,
    extra_op: str = "subsample",
    norm: LayerSpec = "batchnorm",
    output_norm: LayerSpec = None,
    act: LayerSpec = "relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
) -> FeaturePyramidGrid:
    """Build a Feature Pyramid Grid (defaults: mmdet's FPG configs, 9 stages, P3-P7 on a 3-level backbone).

    Args:
        spec: the backbone's levels, at distinct strides.
        out_channels: channels of every output.
        inter_channels: channels inside the grid; None for ``out_channels``.
        stack_times: bottom-up stages.
        skip_inds: the stages each level skips (one list per level, extra levels included), ``"triangle"`` for
            the paper's grid (level ``i`` skips the first ``num_levels - 1 - i``), or None for a full grid.
        extra_levels: levels beyond the coarsest input (mmdet ``num_outs - len(in_channels)``).
        extra_op: ``"subsample"`` (mmdet's 1x1 max-pool, stride 2) or ``"conv"`` (``add_extra_convs``).
        norm: norm of the grid's convs (after the conv), or None.
        output_norm: norm of the output convs, or None.
        act: pre-activation of every grid and output conv.
        norm_kwargs: extra arguments of the norm layers.
        act_kwargs: extra arguments of the activation.

    Raises:
        BackboneMismatch: levels at a repeated stride (a plain ViT): build a pyramid first (``simple_pyramid``).
        ValueError: bad counts, an unknown ``extra_op``, or ``skip_inds`` of the wrong length or stages.
    """
    inter_channels = out_channels if inter_channels is None else inter_channels
    check_knobs(out_channels=out_channels, extra_levels=extra_levels, extra_op=extra_op, extra_ops=MMDET_EXTRA_OPS,
                inter_channels=inter_channels, stack_times=stack_times)
    if len(set(spec.reductions)) != len(spec.reductions):
        raise BackboneMismatch(
            f"fpg's pathways run stride-2 convs between levels, but levels repeat strides {list(spec.reductions)}: "
            "use 'simple_pyramid' on a single-stride backbone"
        )
    num_levels = spec.num_levels + extra_levels
    if skip_inds == "triangle":
        skips: SkipInds = triangle_skips(num_levels, stack_times)
    elif skip_inds is None:
        skips = [[] for _ in range(num_levels)]
    elif isinstance(skip_inds, str):
        raise ValueError(f"fpg: skip_inds must be 'triangle', None or one list of stages per level, "
                         f"got {skip_inds!r}")
    else:
        skips = [list(s) for s in skip_inds]
        if len(skips) != num_levels:
            raise ValueError(f"fpg: skip_inds has {len(skips)} entries for {num_levels} levels "
                             f"({spec.num_levels} inputs + {extra_levels} extra)")
        bad = [s for level in skips for s in level if isinstance(s, bool) or not isinstance(s, int)
               or not 0 <= s < stack_times]
        if bad:
            raise ValueError(f"fpg: skip_inds names stages {bad} outside 0..{stack_times - 1}")
    neck = FeaturePyramidGrid(
        spec, out_channels=out_channels, inter_channels=inter_channels, stack_times=stack_times, skip_inds=skips,
        extra_levels=extra_levels, extra_op=extra_op, norm_layer=resolve_norm(norm, norm_kwargs),
        output_norm_layer=resolve_norm(output_norm, norm_kwargs), act_layer=resolve_act(act, act_kwargs),
    )
    return init_weights(neck)
