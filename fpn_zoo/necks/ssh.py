"""SSH context modules: on every level, a 3x3 branch beside 5x5- and 7x7-equivalent context branches (faces).

Najibi et al., "SSH: Single Stage Headless Face Detector", ICCV 2017. https://arxiv.org/abs/1708.03979

Each level is processed on its own: a 3x3 conv-norm to half the output channels, and a shared 3x3
conv-norm-act stem to a quarter, followed by one more 3x3 conv-norm (a 5x5 receptive field) and by two
(a 7x7 one); the three branches are concatenated and activated. The math is mmdetection 3.3's ``SSH``
(``mmdet/models/necks/ssh.py``); it usually sits after an FPN.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("ssh", [16, 32], out_channels=16)
    >>> [tuple(f.shape) for f in neck([torch.rand(1, 16, 15, 21), torch.rand(1, 32, 8, 11)])]
    [(1, 16, 15, 21), (1, 16, 8, 11)]
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .._features import FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.blocks import init_weights
from ..layers.config import check_knobs

__all__ = ["SSHContextBlock", "SSHNeck", "ssh"]


class SSHContextBlock(nn.Module):
    """One level's SSH detection module: ``act(cat(conv3x3, context5x5, context7x7))``.

    Args:
        in_channels: input channels.
        out_channels: output channels (a multiple of 4: half from the 3x3 branch, a quarter from each context).
        norm_layer: norm factory after every conv, or None.
        act_layer: activation factory after the context stem and after the concatenation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        quarter = out_channels // 4
        self.conv3x3 = ConvNormAct(in_channels, out_channels // 2, 3, norm_layer=norm_layer)
        self.context_stem = ConvNormAct(in_channels, quarter, 3, norm_layer=norm_layer, act_layer=act_layer)
        self.context5x5 = ConvNormAct(quarter, quarter, 3, norm_layer=norm_layer)
        self.context7x7 = nn.Sequential(
            ConvNormAct(quarter, quarter, 3, norm_layer=norm_layer, act_layer=act_layer),
            ConvNormAct(quarter, quarter, 3, norm_layer=norm_layer),
        )
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.context_stem(x)
        return self.act(torch.cat([self.conv3x3(x), self.context5x5(context), self.context7x7(context)], dim=1))


class SSHNeck(nn.Module):
    """An :class:`SSHContextBlock` on every level; strides unchanged.

    Args:
        spec: the levels.
        out_channels: output channels of each level.
        norm_layer: norm factory after every conv, or None.
        act_layer: activation factory (SSH: ReLU).
    """

    output_fmt = "NCHW"

    def __init__(
        self,
        spec: FeatureSpec,
        out_channels: Sequence[int],
        norm_layer: Optional[Callable[[int], nn.Module]],
        act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.levels = nn.ModuleList(
            SSHContextBlock(cin, cout, norm_layer, act_layer) for cin, cout in zip(spec.channels, out_channels)
        )
        self.feature_info = make_feature_info(out_channels, spec.reductions)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per level. Returns: one NCHW map per level."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        return [level(x) for level, x in zip(self.levels, features)]


@register_neck("ssh")
def ssh(
    spec: FeatureSpec,
    *,
    out_channels: Union[int, Sequence[int]] = 256,
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
) -> SSHNeck:
    """Build SSH context modules on every level (mmdet ``SSH``'s defaults: BatchNorm, ReLU).

    Args:
        spec: the levels (an FPN's outputs in mmdet's face configs).
        out_channels: output channels, one for all levels or one per level; multiples of 4.
        norm: norm after each conv, or None.
        act: activation of the context stem and of the concatenated output.
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.

    Raises:
        ValueError: channels that are not positive multiples of 4, or a list of the wrong length.
    """
    widths = [out_channels] * spec.num_levels if isinstance(out_channels, int) else list(out_channels)
    if len(widths) != spec.num_levels:
        raise ValueError(f"ssh: out_channels has {len(widths)} entries for {spec.num_levels} levels")
    for width in widths:
        check_knobs(out_channels=width)
        if width % 4:
            raise ValueError(f"ssh: out_channels must be multiples of 4 (halves and quarters per branch), got {width}")
    neck = SSHNeck(spec, widths, resolve_norm(norm, norm_kwargs), resolve_act(act, act_kwargs))
    return init_weights(neck)
