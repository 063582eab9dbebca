"""YOLOv3's neck: a top-down path that concatenates, with a five-conv detection block on every level.

Redmon and Farhadi, "YOLOv3: An Incremental Improvement", 2018. https://arxiv.org/abs/1804.02767

From the coarsest level down: a detection block (1x1, 3x3, 1x1, 3x3, 1x1 conv-norm-act, the 3x3 convs at
twice the width) gives that level's output; a 1x1 conv narrows it to the next finer level's width, it is
upsampled (nearest) to that level's size and concatenated with the backbone map there, and the next
detection block runs on the concatenation. The math is mmdetection 3.3's ``YOLOV3Neck``
(``mmdet/models/necks/yolo_neck.py``), which upsamples by a fixed factor 2 and so fails on odd map sizes;
here the upsampling goes to the finer map's size, the same on x2 sizes.

Order: outputs are finest first, like every fpn_zoo neck (mmdet's ``YOLOV3Neck`` returns coarsest first, and
lists its ``in_channels`` / ``out_channels`` coarsest first).

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("yolov3_neck", [16, 32, 64])
    >>> neck.feature_info.channels()
    [8, 16, 32]
    >>> [tuple(f.shape[-2:]) for f in neck([torch.rand(1, c, h, w) for c, (h, w) in
    ...                                     ((16, (29, 42)), (32, (15, 21)), (64, (8, 11)))])]
    [(29, 42), (15, 21), (8, 11)]
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.blocks import init_weights
from ..layers.config import check_knobs

__all__ = ["DetectionBlock", "YOLOv3Neck", "yolov3_neck"]

NormFactory = Optional[Callable[[int], nn.Module]]
ActFactory = Optional[Callable[[], nn.Module]]


class DetectionBlock(nn.Sequential):
    """YOLOv3's five convs: 1x1 to ``out``, 3x3 to ``2 * out``, 1x1, 3x3, 1x1 back to ``out``."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormFactory, act_layer: ActFactory) -> None:
        wide = out_channels * 2
        shapes = [(in_channels, out_channels, 1), (out_channels, wide, 3), (wide, out_channels, 1),
                  (out_channels, wide, 3), (wide, out_channels, 1)]
        super().__init__(*(ConvNormAct(cin, cout, k, norm_layer=norm_layer, act_layer=act_layer)
                           for cin, cout, k in shapes))


class YOLOv3Neck(nn.Module):
    """Top-down concatenation with a :class:`DetectionBlock` per level (see the module docstring).

    Args:
        spec: the backbone's levels (distinct strides, finest first).
        out_channels: output channels of each level, finest first.
        norm_layer: norm factory after every conv, or None.
        act_layer: activation factory after every conv, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self, spec: FeatureSpec, out_channels: Sequence[int], norm_layer: NormFactory, act_layer: ActFactory
    ) -> None:
        super().__init__()
        self.spec = spec
        n = spec.num_levels
        # bridges[l] narrows level l+1's output to level l's width; detect[l] sees level l (+ the bridge).
        self.bridges = nn.ModuleList(
            ConvNormAct(out_channels[l + 1], out_channels[l], 1, norm_layer=norm_layer, act_layer=act_layer)
            for l in range(n - 1)
        )
        self.detect = nn.ModuleList(
            DetectionBlock(spec.channels[l] + (out_channels[l] if l < n - 1 else 0), out_channels[l],
                           norm_layer, act_layer)
            for l in range(n)
        )
        self.feature_info = make_feature_info(out_channels, spec.reductions)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: one NCHW map per level, finest first."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        out = self.detect[-1](features[-1])
        outs = [out]
        for level in reversed(range(len(features) - 1)):
            x = features[level]
            up = F.interpolate(self.bridges[level](out), size=x.shape[-2:], mode="nearest")
            out = self.detect[level](torch.cat([up, x], dim=1))
            outs.append(out)
        return outs[::-1]


@register_neck("yolov3_neck")
def yolov3_neck(
    spec: FeatureSpec,
    *,
    out_channels: Union[int, Sequence[int], None] = None,
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "leaky_relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
) -> YOLOv3Neck:
    """Build a YOLOv3 neck (mmdet ``YOLOV3Neck``'s defaults: BatchNorm, LeakyReLU(0.1), half the input widths).

    Args:
        spec: the backbone's levels, at distinct strides (Darknet-53: 8/16/32).
        out_channels: output channels, one for all levels or one per level finest first; None halves each
            input level's channels (YOLOv3's 256/512/1024 -> 128/256/512).
        norm: norm after every conv, or None.
        act: activation after every conv, or None.
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation; None gives ``negative_slope=0.1`` for ``"leaky_relu"``
            (YOLOv3's slope; timm's default is 0.01).

    Raises:
        BackboneMismatch: levels at a repeated stride (a plain ViT): build a pyramid first (``simple_pyramid``).
        ValueError: a width list of the wrong length or a non-positive width.
    """
    if out_channels is None:
        widths = [max(c // 2, 1) for c in spec.channels]
    elif isinstance(out_channels, int):
        widths = [out_channels] * spec.num_levels
    else:
        widths = list(out_channels)
    if len(widths) != spec.num_levels:
        raise ValueError(f"yolov3_neck: out_channels has {len(widths)} entries for {spec.num_levels} levels")
    for width in widths:
        check_knobs(out_channels=width)
    if len(set(spec.reductions)) != len(spec.reductions):
        raise BackboneMismatch(
            f"yolov3_neck upsamples from each level to the next finer one, but levels repeat strides "
            f"{list(spec.reductions)}: use 'simple_pyramid' on a single-stride backbone"
        )
    if act_kwargs is None and act == "leaky_relu":
        act_kwargs = {"negative_slope": 0.1}
    neck = YOLOv3Neck(spec, widths, resolve_norm(norm, norm_kwargs), resolve_act(act, act_kwargs))
    return init_weights(neck)
