"""CenterNet's neck: the coarsest map brought back to stride 4 by conv + transposed-conv stages.

Zhou et al., "Objects as Points", 2019. https://arxiv.org/abs/1904.07850

Each stage is a 3x3 conv-BN-ReLU to the stage's width, then a 4x4 stride-2 transposed conv-BN-ReLU that
doubles the map exactly; three stages take ResNet's stride-32 C5 to stride 4. The math is mmdetection 3.3's
``CTResNetNeck`` (``mmdet/models/necks/ct_resnet_neck.py``) with ``use_dcn=False``: CenterNet's DCN variant
needs deformable convolution (``torchvision.ops.deform_conv2d`` here), which this family does not build.

Inputs: the neck reads the LAST input map. A backbone whose levels have different strides is declined
(create it with ``out_indices=(-1,)``); several maps at one stride (a ViT) are accepted, the last is used.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("centernet_neck", fpn_zoo.FeatureSpec((64,), (32,)), widths=(32, 16, 8))
    >>> neck.feature_info.reduction(), [tuple(f.shape) for f in neck([torch.rand(2, 64, 8, 11)])]
    ([4], [(2, 8, 64, 88)])
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

__all__ = ["UpsampleStage", "CenterNetNeck", "centernet_neck"]

NormFactory = Optional[Callable[[int], nn.Module]]
ActFactory = Optional[Callable[[], nn.Module]]


class UpsampleStage(nn.Module):
    """3x3 conv-norm-act to ``out_channels``, then a 4x4 stride-2 transposed conv-norm-act (x2 exactly)."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormFactory, act_layer: ActFactory) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 3, norm_layer=norm_layer, act_layer=act_layer)
        up: "OrderedDict[str, nn.Module]" = OrderedDict(
            conv=nn.ConvTranspose2d(out_channels, out_channels, 4, stride=2, padding=1, bias=norm_layer is None))
        if norm_layer is not None:
            up["norm"] = norm_layer(out_channels)
        if act_layer is not None:
            up["act"] = act_layer()
        self.up = nn.Sequential(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x))


class CenterNetNeck(nn.Module):
    """:class:`UpsampleStage` s on the last input map.

    Args:
        spec: the backbone's levels (one stride; the last map is used).
        widths: output channels of each stage.
        norm_layer: norm factory, or None.
        act_layer: activation factory, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self, spec: FeatureSpec, widths: Sequence[int], norm_layer: NormFactory, act_layer: ActFactory
    ) -> None:
        super().__init__()
        self.spec = spec
        channels = [spec.channels[-1]] + list(widths)
        self.stages = nn.Sequential(*(UpsampleStage(channels[i], channels[i + 1], norm_layer, act_layer)
                                      for i in range(len(widths))))
        reduction = spec.reductions[-1] / 2 ** len(widths)
        self.feature_info = make_feature_info([channels[-1]], [int(reduction) if reduction.is_integer() else reduction])

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: the backbone's maps (the last is used). Returns: one NCHW map, ``2**len(widths)`` times larger."""
        check_module_inputs(self, features, self.spec)
        x = features[-1]
        if self.spec.input_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        return [self.stages(x)]


@register_neck("centernet_neck")
def centernet_neck(
    spec: FeatureSpec,
    *,
    widths: Sequence[int] = (256, 128, 64),
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
) -> CenterNetNeck:
    """Build CenterNet's upsampling neck (mmdet ``CTResNetNeck``'s ResNet-18 config, without DCN).

    Args:
        spec: the backbone's levels, all at one stride (CenterNet: ResNet C5); the last map is used.
        widths: output channels of each x2 stage (mmdet ``num_deconv_filters``); their number sets the
            upsampling, ``2**len(widths)``.
        norm: norm after every conv, or None.
        act: activation after every conv, or None.
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.

    Raises:
        BackboneMismatch: levels at several strides.
        ValueError: an empty or non-positive ``widths``.
    """
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) == 0:
        raise ValueError(f"centernet_neck: widths must be a non-empty list of channel counts, got {widths!r}")
    for width in widths:
        check_knobs(out_channels=width)
    if len(set(spec.reductions)) > 1:
        raise BackboneMismatch(
            f"centernet_neck upsamples one map, but the backbone has levels at strides {list(spec.reductions)}: "
            "create it with out_indices=(-1,) to use its last stage (CenterNet uses C5 alone), or use 'fpn'/'pan'"
        )
    if spec.reductions[-1] < 2 ** len(widths):
        raise BackboneMismatch(
            f"centernet_neck upsamples by {2 ** len(widths)} ({len(widths)} x2 stages), but the backbone's stride is "
            f"{spec.reductions[-1]}: use fewer widths (widths={list(widths)[:1]!r} upsamples by 2) or 'simple_pyramid'"
        )
    return init_weights(CenterNetNeck(spec, widths, resolve_norm(norm, norm_kwargs), resolve_act(act, act_kwargs)))
