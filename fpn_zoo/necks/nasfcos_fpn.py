"""NAS-FCOS's searched FPN: seven concatenation cells over C3-C5, with deformable convs on the cells' inputs.

Wang et al., "NAS-FCOS: Fast Neural Architecture Search for Object Detection", CVPR 2020.
https://arxiv.org/abs/1906.04423

The three coarsest backbone levels get a 1x1 conv-BN-ReLU each (``f0, f1, f2`` = C3, C4, C5; C2 is not used,
as in the paper). Seven cells follow, each reading two earlier maps ``f_a, f_b`` and appending ``f_3 ... f_9``:
every input goes through a 3x3 conv-BN-ReLU (a modulated deformable conv, DCNv2 with 2 deformable groups, in
the paper's config) unless the table says otherwise, is brought to the finer input's size (nearest), and the
two are concatenated and fused by BN-ReLU then a 1x1 conv grouped in pairs of channels. The outputs are
``P3 = f9 + f5``, ``P4 = f8 + f5``, ``P5 = f7 + f5`` (``f5`` resized bilinearly, each sum then resized
bilinearly to its level), and P6, P7 by 3x3 stride-2 convs (a ReLU before the second).

The layout and state-dict names are mmdetection 3.3's ``NASFCOS_FPN`` (``mmdet/models/necks/nasfcos_fpn.py``)
with mmcv's ``ConcatCell``; its NAS-FCOS config is the default here. The reference implementation is mmdet
3.3's ``NASFCOS_FPN``, which needs compiled mmcv ops: weight parity with it was not possible here; tested
against a float64 reference of the math.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("nasfcos_fpn", [8, 16, 32], out_channels=8)
    >>> [tuple(f.shape[-2:]) for f in neck([torch.rand(1, c, *s) for c, s in ((8, (29, 42)), (16, (15, 21)),
    ...                                                                      (32, (8, 11)))])]
    [(29, 42), (15, 21), (8, 11), (4, 6), (2, 3)]
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.blocks import ActConvNorm, init_weights
from ..layers.config import check_knobs
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.deform import ModulatedDeformConvPack

__all__ = ["Cell", "NASFCOS_CELLS", "CellInputConv", "ConcatCell", "NASFCOSFPN", "nasfcos_fpn"]

NUM_INPUTS = 3  # the searched cells read C3, C4, C5


class Cell(NamedTuple):
    """One searched cell: its name (mmdet's key), the two maps it reads, and whether each gets an input conv."""

    name: str
    first: int
    second: int
    conv_first: bool
    conv_second: bool


#: The cells of the searched architecture (mmdet ``NASFCOS_FPN``), appending f3 ... f9 to f0, f1, f2.
NASFCOS_CELLS = (
    Cell("c22_1", 2, 2, True, True),
    Cell("c22_2", 2, 2, True, True),
    Cell("c32", 3, 2, True, False),
    Cell("c02", 0, 2, True, False),
    Cell("c42", 4, 2, True, True),
    Cell("c36", 3, 6, True, True),
    Cell("c61", 6, 1, True, True),
)
#: The outputs P3, P4, P5: ``(map, level)`` summed with f5 and resized to that level.
OUTPUTS = ((9, 0), (8, 1), (7, 2))
SHARED_OUTPUT_TERM = 5


class CellInputConv(nn.Sequential):
    """A cell input's ``conv -> norm -> act``: a 3x3 DCNv2 (or plain) conv, always biased (as mmdet builds it).

    Children: ``conv`` (:class:`~fpn_zoo.layers.deform.ModulatedDeformConvPack` or ``nn.Conv2d``), ``norm``, ``act``.
    """

    def __init__(
        self,
        channels: int,
        deform_groups: Optional[int],
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        if deform_groups is None:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            self.conv = ModulatedDeformConvPack(channels, channels, 3, padding=1, deform_groups=deform_groups)
        if norm_layer is not None:
            self.norm = norm_layer(channels)
        if act_layer is not None:
            self.act = act_layer()


class ConcatCell(nn.Module):
    """mmcv's ``ConcatCell`` as NAS-FCOS builds it: two maps through their input convs, concatenated, fused.

    Args:
        channels: channels of both inputs and of the output.
        conv_first: give the first input a :class:`CellInputConv`.
        conv_second: give the second input one.
        make_input_conv: ``() -> module``: the input conv.
        norm_layer: norm of the fusion (on the ``2 * channels`` concatenation), or None.
        act_layer: activation of the fusion, or None.
    """

    def __init__(
        self,
        channels: int,
        conv_first: bool,
        conv_second: bool,
        make_input_conv: Callable[[], nn.Module],
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        self.input1_conv = make_input_conv() if conv_first else nn.Identity()
        self.input2_conv = make_input_conv() if conv_second else nn.Identity()
        out_conv = nn.Sequential()
        if norm_layer is not None:
            out_conv.add_module("norm", norm_layer(2 * channels))
        if act_layer is not None:
            out_conv.add_module("act", act_layer())
        out_conv.add_module("conv", nn.Conv2d(2 * channels, channels, 1, groups=channels, bias=False))
        self.out_conv = out_conv

    def forward(self, first: torch.Tensor, second: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Both inputs convolved, resized (nearest) to ``size``, concatenated, then ``norm -> act -> conv1x1``."""
        first = F.interpolate(self.input1_conv(first), size=size, mode="nearest")
        second = F.interpolate(self.input2_conv(second), size=size, mode="nearest")
        return self.out_conv(torch.cat([first, second], dim=1))


class NASFCOSFPN(nn.Module):
    """NAS-FCOS's searched FPN on the three coarsest levels (see the module docstring).

    Args:
        spec: the backbone's levels; the three coarsest are used.
        out_channels: channels of every output.
        extra_levels: stride-2 conv levels after P5.
        deform_groups: deformable groups of the cells' DCNv2 input convs, or None for plain 3x3 convs.
        norm_layer: norm factory (adapters, cell inputs, cell fusions), or None.
        act_layer: activation factory, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        out_channels: int,
        extra_levels: int,
        deform_groups: Optional[int],
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.start_level = spec.num_levels - NUM_INPUTS
        used = range(self.start_level, spec.num_levels)
        self.adapt_convs = nn.ModuleList(
            ConvNormAct(spec.channels[i], out_channels, 1, norm_layer=norm_layer, act_layer=act_layer) for i in used
        )

        def make_input_conv() -> nn.Module:
            return CellInputConv(out_channels, deform_groups, norm_layer, act_layer)

        self.fpn = nn.ModuleDict({
            cell.name: ConcatCell(out_channels, cell.conv_first, cell.conv_second, make_input_conv, norm_layer,
                                  act_layer)
            for cell in NASFCOS_CELLS
        })
        self.extra_downsamples = nn.ModuleList(
            ActConvNorm(out_channels, out_channels, 3, 2, act_layer=None if i == 0 else nn.ReLU)
            for i in range(extra_levels)
        )
        self._levels = self._map_levels()
        reductions = [spec.reductions[i] for i in used]
        reductions += [reductions[-1] * 2 ** (i + 1) for i in range(extra_levels)]
        self.feature_info = make_feature_info([out_channels] * len(reductions), reductions)

    @staticmethod
    def _map_levels() -> List[int]:
        """The level of every map f0 ... f9: a cell's output is at its finer input's level."""
        levels = list(range(NUM_INPUTS))
        for cell in NASFCOS_CELLS:
            levels.append(min(levels[cell.first], levels[cell.second]))
        return levels

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: P3, P4, P5 and the extra levels, NCHW, finest first."""
        check_module_inputs(self, features, self.spec)
        inputs = list(features[self.start_level:])
        if self.spec.input_fmt == "NHWC":
            inputs = [x.permute(0, 3, 1, 2) for x in inputs]
        maps = [adapt(x) for adapt, x in zip(self.adapt_convs, inputs)]
        for cell in NASFCOS_CELLS:
            first, second = maps[cell.first], maps[cell.second]
            finer = first if self._levels[cell.first] <= self._levels[cell.second] else second
            maps.append(self.fpn[cell.name](first, second, finer.shape[-2:]))
        shared = maps[SHARED_OUTPUT_TERM]
        outs = []
        for index, level in OUTPUTS:
            summed = maps[index] + _bilinear(shared, maps[index].shape[-2:])
            outs.append(_bilinear(summed, inputs[level].shape[-2:]))
        for downsample in self.extra_downsamples:
            outs.append(downsample(outs[-1]))
        return outs


def _bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register_neck("nasfcos_fpn")
def nasfcos_fpn(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    extra_levels: int = 2,
    deformable: bool = True,
    deform_groups: int = 2,
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
) -> NASFCOSFPN:
    """Build NAS-FCOS's FPN (its mmdet config: 256 ch, P3-P7, DCNv2 with 2 deformable groups, BN + ReLU).

    Args:
        spec: the backbone's levels; the three coarsest (C3-C5) are used, finer ones (C2) ignored as in the paper.
        out_channels: channels of every output.
        extra_levels: stride-2 conv levels after P5 (the paper: P6, P7).
        deformable: DCNv2 input convs in the cells (the paper's config); False for plain 3x3 convs.
        deform_groups: deformable groups of those convs (divides ``out_channels``).
        norm: norm of the adapters, cell input convs and cell fusions (mmdet: BatchNorm), or None.
        act: their activation (mmdet: ReLU), or None.
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.

    Raises:
        BackboneMismatch: fewer than three levels (the searched cells read C3, C4, C5).
        ValueError: bad counts, or ``deform_groups`` not dividing ``out_channels``.
    """
    check_knobs(out_channels=out_channels, extra_levels=extra_levels, deform_groups=deform_groups)
    if not isinstance(deformable, bool):
        raise TypeError(f"nasfcos_fpn: deformable must be a bool, got {type(deformable).__name__}")
    if deformable and out_channels % deform_groups:
        raise ValueError(f"nasfcos_fpn: deform_groups={deform_groups} must divide out_channels={out_channels}")
    if spec.num_levels < NUM_INPUTS:
        raise BackboneMismatch(
            f"nasfcos_fpn's searched cells read three levels (C3, C4, C5), got {spec.num_levels} at strides "
            f"{list(spec.reductions)}: create the backbone with three out_indices or more, or use fpn"
        )
    neck = NASFCOSFPN(spec, out_channels=out_channels, extra_levels=extra_levels,
                      deform_groups=deform_groups if deformable else None, norm_layer=resolve_norm(norm, norm_kwargs),
                      act_layer=resolve_act(act, act_kwargs, inplace=True))
    init_weights(neck)
    for module in neck.modules():  # DCNv2 keeps its own init: uniform weights, zero offsets (masks 0.5)
        if isinstance(module, ModulatedDeformConvPack):
            module.reset_parameters()
            module.init_offset()
    return neck
