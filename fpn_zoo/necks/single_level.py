"""A single-level "neck": the coarsest backbone map alone, projected and smoothed. An ablation baseline.

Not a pyramid: it is what a detector sees without one (the setting of Faster R-CNN's original C4/C5 heads and
of YOLOF before its dilated encoder, Chen et al. 2021, https://arxiv.org/abs/2103.09460). Set beside ``fpn``
with the same blocks it shows what a pyramid adds; the accuracy benchmark (``docs/accuracy.md``) uses it so.

The last input map gets the FPN's 1x1 lateral and ``smooth_depth`` 3x3 blocks (the same ``conv-norm-act``
as :func:`fpn_zoo.necks.fpn.fpn`); every finer map is ignored.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("single_level_64", [16, 32], reductions=[16, 32])
    >>> [tuple(f.shape) for f in neck([torch.rand(1, 16, 8, 8), torch.rand(1, 32, 4, 4)])]
    [(1, 64, 4, 4)]
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .._features import FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.blocks import Blocks, init_weights, standard_blocks
from ..layers.config import check_knobs
from ..layers.conv import LayerSpec

__all__ = ["SingleLevel", "single_level"]


class SingleLevel(nn.Module):
    """``smooth(lateral(x))`` on the last input map; one output at its stride.

    Args:
        spec: the backbone's levels (the last is used).
        blocks: the lateral and smoothing factories (:func:`~fpn_zoo.layers.blocks.standard_blocks`).
        out_channels: output channels.
    """

    output_fmt = "NCHW"

    def __init__(self, spec: FeatureSpec, blocks: Blocks, out_channels: int) -> None:
        super().__init__()
        self.spec = spec
        self.lateral = blocks.lateral(spec.channels[-1], out_channels)
        self.smooth = blocks.smooth(out_channels, out_channels)
        self.feature_info = make_feature_info([out_channels], [spec.reductions[-1]])

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: the backbone's maps (the last is used). Returns: one NCHW map."""
        check_module_inputs(self, features, self.spec)
        x = features[-1]
        if self.spec.input_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        return [self.smooth(self.lateral(x))]


@register_neck("single_level")
def single_level(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    norm: LayerSpec = None,
    act: LayerSpec = None,
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    smooth_depth: int = 1,
) -> SingleLevel:
    """Build the single-level baseline: the FPN's blocks on the coarsest map only.

    Args:
        spec: the backbone's levels; the last (coarsest) is used.
        out_channels: output channels.
        norm: norm after each conv (``"batchnorm"``, a class, or None).
        act: activation after each conv (``"leaky_relu"``, a class, or None).
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation (``{"negative_slope": 0.1}``).
        smooth_depth: 3x3 conv blocks after the lateral.
    """
    check_knobs(out_channels=out_channels, smooth_depth=smooth_depth)
    blocks = standard_blocks(norm=norm, act=act, norm_kwargs=norm_kwargs, act_kwargs=act_kwargs,
                             smooth_depth=smooth_depth)
    return init_weights(SingleLevel(spec, blocks, out_channels))
