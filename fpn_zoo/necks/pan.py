"""PANet: FPN followed by a bottom-up path augmentation.

Liu et al., "Path Aggregation Network for Instance Segmentation", CVPR 2018. https://arxiv.org/abs/1803.01534

After the FPN (laterals, top-down sums, 3x3 output convs), a bottom-up path starts at the finest FPN output:
each step downsamples the running map with a stride-2 3x3 conv, adds the next level's FPN output, and a
3x3 conv smooths each sum into the level's output. The running sum carries on up (mmdet ``PAFPN``'s math,
which the defaults reproduce); the finest output is the FPN's own.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("pan", [64, 128, 256], out_channels=32)
    >>> neck.feature_info.channels()
    [32, 32, 32]
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from .._features import FeatureSpec
from .._registry import register_neck
from ..graph import GraphNeck, Node, Topology
from ..layers.blocks import init_weights, standard_blocks
from ..layers.config import check_knobs
from ..layers.conv import LayerSpec
from .fpn import top_down_nodes

__all__ = ["pan_topology", "pan"]


def pan_topology(num_levels: int) -> Topology:
    """``td{l}`` top-down sums, ``fpn{l}`` FPN outputs, ``bu{l}`` bottom-up sums, ``out{l}`` outputs."""
    nodes, td_ids = top_down_nodes(num_levels)
    fpn_ids = []
    for level in range(num_levels):
        nodes.append(Node(f"fpn{level}", level, (td_ids[level],)))
        fpn_ids.append(num_levels + len(nodes) - 1)
    outputs = [fpn_ids[0]]
    running = fpn_ids[0]
    for level in range(1, num_levels):
        nodes.append(Node(f"bu{level}", level, (fpn_ids[level], running), smooth=False, downsample="conv"))
        running = num_levels + len(nodes) - 1
        nodes.append(Node(f"out{level}", level, (running,)))
        outputs.append(num_levels + len(nodes) - 1)
    return Topology(f"pan{num_levels}", num_levels, tuple(nodes), tuple(outputs))


@register_neck("pan")
def pan(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    norm: LayerSpec = None,
    act: LayerSpec = None,
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    smooth_depth: int = 1,
    separable: bool = False,
    upsample_mode: str = "nearest",
    extra_levels: int = 0,
    extra_op: str = "subsample",
    extra_source: str = "output",
) -> GraphNeck:
    """Build a PANet neck. Arguments as :func:`fpn_zoo.necks.fpn.fpn`; ``smooth_depth`` applies to both paths."""
    check_knobs(out_channels=out_channels, upsample_mode=upsample_mode, extra_levels=extra_levels,
                extra_op=extra_op, extra_source=extra_source, smooth_depth=smooth_depth)
    blocks = standard_blocks(norm=norm, act=act, norm_kwargs=norm_kwargs, act_kwargs=act_kwargs,
                             smooth_depth=smooth_depth, separable=separable)
    neck = GraphNeck(spec, pan_topology(spec.num_levels), blocks, out_channels=out_channels, upsample_mode=upsample_mode,
                     lateral="always", extra_levels=extra_levels, extra_op=extra_op, extra_source=extra_source)
    return init_weights(neck)
