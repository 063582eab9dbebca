"""Simple feature pyramid: a multi-scale pyramid from ONE map of a single-stride backbone (ViTDet).

Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022.
https://arxiv.org/abs/2203.16527

A plain ViT (DeiT, BEiT, EVA, XCiT, ConvMixer ...) keeps one stride throughout. ViTDet builds the pyramid
from its last map alone: going up by stride-2 transposed convs (``norm`` and ``act`` between two of them,
each halving the channels), going down by stride-2 max-pools, then a 1x1 and a 3x3 conv-norm per level.

Strides follow the backbone: the number of x2 steps for each requested output stride is
``round(log2(out_stride / backbone_stride))``, so the true strides are ``backbone_stride * 2**k`` and
``feature_info`` reports them: (4, 8, 16, 32) on a stride-16 ViT, (3.5, 7, 14, 28) on a stride-14 EVA,
(4, 8, 16, 32) on a stride-8 XCiT, (3.5, 7, 14, 28) on a stride-7 ConvMixer. ViTDet's own ``scales``
(``(4, 2, 1, 0.5)``, powers of two relative to the map) can be given instead.

Sizes are exact for any map size: a transposed conv doubles it, a max-pool halves it rounding up
(``ceil_mode``, as stride-2 convs and the other necks' downsampling do), so a 13x13 map gives 52, 26, 13, 7.

Inputs: the pyramid reads the LAST input map. Several maps at one stride (timm ViTs return three blocks by
default) are accepted and only the last is used, as in ViTDet. A multi-stride backbone (a CNN) is declined
with an error naming ``fpn``/``pan``: it already has a pyramid, and dropping its finer maps silently would
be a mistake; pass ``out_indices=(-1,)`` to use only its last stage on purpose.

Composition: ``then="fpn"`` / ``"bifpn"`` / ``"csp_pan_s"`` (any registered variant) puts that neck on top
(:class:`~fpn_zoo.necks.chain.ChainedNeck`); it inherits ``out_channels`` unless ``then_args`` sets it.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("simple_pyramid", fpn_zoo.FeatureSpec((64,), (14,)), out_channels=32)
    >>> neck.feature_info.reduction()
    [3.5, 7, 14, 28]
    >>> [tuple(f.shape[-2:]) for f in neck([torch.rand(1, 64, 13, 9)])]
    [(52, 36), (26, 18), (13, 9), (7, 5)]
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.blocks import init_weights
from ..layers.config import check_knobs
from ..layers.conv import ConvNormAct, LayerSpec, conv_block, resolve_act, resolve_norm
from ..layers.resample import ExtraLevels
from .chain import chain_neck

__all__ = [
    "SimplePyramid", "PyramidDescription", "PyramidInput", "PyramidLevel", "PyramidExtraLevel", "pyramid_steps",
    "simple_pyramid",
]

DEFAULT_OUT_STRIDES = (4, 8, 16, 32)
Number = Union[int, float]


@dataclass(frozen=True)
class PyramidInput:
    """The map the pyramid is built from: its channels and stride, how many levels came in, which is used."""

    channels: int
    reduction: Number
    input_levels: int
    uses: str


@dataclass(frozen=True)
class PyramidLevel:
    """One output level: its stride, its scale relative to the input map, and the ops that make it."""

    reduction: Number
    scale: float
    ops: Tuple[str, ...]


@dataclass(frozen=True)
class PyramidExtraLevel:
    """An extra level after the pyramid: its stride and how it is made."""

    reduction: Number
    op: str


@dataclass(frozen=True)
class PyramidDescription:
    """What a built :class:`SimplePyramid` computes, for docs and diagrams (:func:`fpn_zoo.diagram.mermaid`)."""

    input: PyramidInput
    levels: Tuple[PyramidLevel, ...]
    extra_levels: Tuple[PyramidExtraLevel, ...]
    kind: str = "simple_pyramid"


def _as_number(x: float) -> Number:
    return int(x) if float(x).is_integer() else float(x)


def pyramid_steps(
    stride: Number, out_strides: Optional[Sequence[Number]] = None, scales: Optional[Sequence[Number]] = None
) -> List[int]:
    """The x2 steps of each output level (``k > 0`` up, ``k < 0`` down), finest first.

    Args:
        stride: the backbone map's stride.
        out_strides: wanted strides relative to the image; each becomes ``stride * 2**k`` for the nearest
            integer ``k`` in log2. Default ``(4, 8, 16, 32)``.
        scales: ViTDet's scale factors relative to the map (powers of two, ``(4, 2, 1, 0.5)``), instead.

    Raises:
        ValueError: both or malformed lists, a scale that is not a power of two, two levels that land on
            the same stride, or levels not ordered finest first.
    """
    if out_strides is not None and scales is not None:
        raise ValueError("simple_pyramid: give out_strides (relative to the image) or scales (relative to the "
                         f"backbone map), not both; got out_strides={list(out_strides)}, scales={list(scales)}")
    if scales is not None:
        what, values = "scales", scales
    else:
        what, values = "out_strides", DEFAULT_OUT_STRIDES if out_strides is None else out_strides
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"simple_pyramid: {what} must be a non-empty list of numbers, got {values!r}")
    steps = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
            raise ValueError(f"simple_pyramid: {what} must be positive numbers, got {v!r} in {list(values)}")
        if scales is not None:
            k = math.log2(v)
            if abs(k - round(k)) > 1e-9:
                raise ValueError(f"simple_pyramid: scale {v} is not a power of two (scales are x2 up/down steps)")
            steps.append(int(round(k)))  # scale 4 = two steps up
        else:
            steps.append(-int(round(math.log2(v / stride))))  # a finer stride is a step up
    for i in range(1, len(steps)):
        if steps[i] >= steps[i - 1]:
            got = [_as_number(stride * 2.0 ** -k) for k in steps]
            raise ValueError(
                f"simple_pyramid: {what}={list(values)} on a stride-{stride} map give strides {got}; they must "
                "be distinct and finest first (each output stride is the backbone stride times a power of two)"
            )
    return steps


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid on the last input map (see the module docstring).

    Args:
        spec: the backbone's levels; all at one stride (the last map is used).
        steps: x2 steps of each output level (from :func:`pyramid_steps`).
        out_channels: channels of every output.
        norm_layer: norm factory (between transposed convs and after the 1x1/3x3 convs) or None.
        act_layer: activation factory between transposed convs (ViTDet: GELU) or None.
        conv_act_layer: activation after the 1x1/3x3 convs (ViTDet: none).
        separable: depthwise-separable 3x3 output convs.
        extra_levels: coarser levels beyond the last output (ViTDet's P6 is one, ``extra_op="subsample"``).
        extra_op: ``subsample`` | ``maxpool`` | ``conv``.
    """

    output_fmt = "NCHW"

    def __init__(
        self,
        spec: FeatureSpec,
        steps: Sequence[int],
        *,
        out_channels: int,
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
        conv_act_layer: Optional[Callable[[], nn.Module]] = None,
        separable: bool = False,
        extra_levels: int = 0,
        extra_op: str = "subsample",
    ) -> None:
        super().__init__()
        self.spec = spec
        self.steps = tuple(steps)
        in_channels, stride = spec.channels[-1], spec.reductions[-1]
        self.levels = nn.ModuleList()
        self._ops: List[List[str]] = []
        for k in self.steps:
            resample, channels, ops = self._resample(in_channels, k, norm_layer, act_layer)
            lateral = ConvNormAct(channels, out_channels, 1, norm_layer=norm_layer, act_layer=conv_act_layer)
            output = conv_block(out_channels, out_channels, 3, separable=separable, norm_layer=norm_layer,
                                act_layer=conv_act_layer)
            self.levels.append(nn.Sequential(OrderedDict(resample=resample, lateral=lateral, output=output)))
            norm = "".join(f" + {type(m).__name__}" for name, m in lateral.named_children() if name != "conv")
            ops += [f"conv1x1 {channels}->{out_channels}{norm}",
                    f"{'sepconv' if separable else 'conv'}3x3 {out_channels}->{out_channels}{norm}"]
            self._ops.append(ops)

        reductions = [_as_number(stride * 2.0 ** -k) for k in self.steps]
        names = [f"levels.{i}" for i in range(len(self.steps))]
        self.extras: Optional[ExtraLevels] = None
        if extra_levels > 0:
            self.extras = ExtraLevels(
                out_channels, out_channels, extra_levels, extra_op,
                make_proj=lambda cin, cout: ConvNormAct(cin, cout, 1, norm_layer=norm_layer),
                make_conv=lambda cin, cout: ConvNormAct(cin, cout, 3, stride=2, norm_layer=norm_layer),
                make_act=act_layer or nn.ReLU,  # act_layer is never in place (see simple_pyramid)
            )
            reductions += [_as_number(reductions[-1] * 2 ** (i + 1)) for i in range(extra_levels)]
            names += [f"extras.{i}" for i in range(extra_levels)]
        self.extra_op = extra_op
        self.feature_info = make_feature_info([out_channels] * len(reductions), reductions)
        for info, name in zip(self.feature_info.info, names):
            info["module"] = name

    @staticmethod
    def _resample(
        channels: int,
        k: int,
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> Tuple[nn.Module, int, List[str]]:
        """``k`` transposed convs (halving channels, norm + act between) or ``-k`` max-pools."""
        if k == 0:
            return nn.Identity(), channels, []
        layers: List[nn.Module] = []
        ops: List[str] = []
        if k < 0:
            for _ in range(-k):
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                ops.append("maxpool2x2/2")
            return nn.Sequential(*layers), channels, ops
        for step in range(k):
            out = max(channels // 2, 1)
            layers.append(nn.ConvTranspose2d(channels, out, 2, stride=2))
            ops.append(f"deconv2x2/2 {channels}->{out}")
            channels = out
            if step < k - 1:
                between = [norm_layer(channels)] if norm_layer is not None else []
                between += [act_layer()] if act_layer is not None else []
                layers += between
                ops += [type(m).__name__ for m in between]
        return nn.Sequential(*layers), channels, ops

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level (all at one stride). Returns: one NCHW map per output level."""
        check_module_inputs(self, features, self.spec)
        x = features[-1]
        if self.spec.input_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        outs = [level(x) for level in self.levels]
        if self.extras is not None:
            outs.extend(self.extras(outs[-1]))
        return outs

    def describe(self) -> "PyramidDescription":
        """The pyramid as a typed description (for docs and diagrams): the ops of each output level."""
        reductions = self.feature_info.reduction()
        return PyramidDescription(
            input=PyramidInput(channels=self.spec.channels[-1], reduction=self.spec.reductions[-1],
                               input_levels=self.spec.num_levels, uses="last"),
            levels=tuple(PyramidLevel(reduction=reductions[i], scale=2.0 ** k, ops=tuple(ops))
                         for i, (k, ops) in enumerate(zip(self.steps, self._ops))),
            extra_levels=tuple(PyramidExtraLevel(reduction=r, op=self.extra_op) for r in reductions[len(self.steps):]),
        )


def _check_single_stride(spec: FeatureSpec) -> None:
    if len(set(spec.reductions)) > 1:
        raise BackboneMismatch(
            f"simple_pyramid builds a pyramid from one single-stride map (a ViT), but the backbone already has "
            f"levels at strides {list(spec.reductions)}: use 'fpn' or 'pan' on it, or create the backbone with "
            "out_indices=(-1,) to build the pyramid from its last stage only"
        )


@register_neck("simple_pyramid")
def simple_pyramid(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    out_strides: Optional[Sequence[Number]] = None,
    scales: Optional[Sequence[Number]] = None,
    norm: LayerSpec = "layernorm2d",
    act: LayerSpec = "gelu",
    conv_act: LayerSpec = None,
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    separable: bool = False,
    extra_levels: int = 0,
    extra_op: str = "subsample",
    then: Optional[str] = None,
    then_args: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """Build a ViTDet simple feature pyramid, optionally with another neck on top.

    Args:
        spec: the backbone's levels, all at one stride (the last map is used).
        out_channels: channels of every output (and of the ``then`` neck unless ``then_args`` sets it).
        out_strides: wanted strides relative to the image, finest first; snapped to the backbone stride
            times a power of two (see :func:`pyramid_steps`). Default ``(4, 8, 16, 32)``.
        scales: ViTDet's scale factors relative to the map (``(4, 2, 1, 0.5)``), instead of ``out_strides``.
        norm: norm between transposed convs and after each 1x1/3x3 conv (ViTDet: channels-first LayerNorm).
        act: activation between transposed convs (ViTDet: GELU).
        conv_act: activation after the 1x1/3x3 convs' norm (ViTDet: None).
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activations.
        separable: depthwise-separable 3x3 output convs.
        extra_levels: levels beyond the coarsest output (ViTDet's P6: 1 with ``extra_op="subsample"``).
        extra_op: ``subsample``, ``maxpool`` or ``conv``.
        then: a registered neck variant to put on top (``"fpn"``, ``"bifpn"`` ...), or None.
        then_args: overrides for ``then``.

    Raises:
        ValueError: a multi-stride backbone (use ``fpn``/``pan``), bad strides/scales, or a ``then`` neck
            that rejects the pyramid.
    """
    check_knobs(out_channels=out_channels, extra_levels=extra_levels, extra_op=extra_op)
    _check_single_stride(spec)
    steps = pyramid_steps(spec.reductions[-1], out_strides, scales)
    norm_layer = resolve_norm(norm, norm_kwargs)
    pyramid = SimplePyramid(
        spec, steps, out_channels=out_channels, norm_layer=norm_layer,
        act_layer=resolve_act(act, act_kwargs),  # not in place: it also runs between the extra levels
        conv_act_layer=resolve_act(conv_act, act_kwargs, inplace=True), separable=bool(separable), extra_levels=extra_levels,
        extra_op=extra_op,
    )
    init_weights(pyramid)
    return chain_neck(pyramid, then, then_args, inherit={"out_channels": out_channels}, owner="simple_pyramid")
