"""Feature Pyramid Network: a top-down path with lateral connections.

Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017. https://arxiv.org/abs/1612.03144

Each backbone level gets a 1x1 lateral conv; going down from the coarsest level, the running top-down map
is upsampled to the next level's size and added to its lateral; every sum is smoothed by a 3x3 conv
(``smooth_depth`` of them for the deeper variants). The running sum, not the smoothed map, carries on
down, as in the paper and in torchvision. With the defaults the math is torchvision's
``FeaturePyramidNetwork``, weight for weight (see :func:`fpn_zoo.convert.from_torchvision_fpn`).

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("fpn", [64, 128, 256], out_channels=32, extra_levels=1)
    >>> [tuple(f.shape[-2:]) for f in neck([torch.rand(1, c, s, s) for c, s in ((64, 28), (128, 14), (256, 7))])]
    [(28, 28), (14, 14), (7, 7), (4, 4)]
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from .._features import FeatureSpec
from .._registry import register_neck
from ..graph import GraphNeck, Node, Topology
from ..layers.blocks import init_weights, standard_blocks
from ..layers.config import check_knobs
from ..layers.conv import LayerSpec

__all__ = ["fpn_topology", "lateral_only_topology", "top_down_nodes", "fpn"]


def top_down_nodes(num_levels: int) -> Tuple[List[Node], List[int]]:
    """The top-down running sums ``td{l}``; returns the nodes and the id of each level's sum."""
    nodes: List[Node] = []
    td_ids = [0] * num_levels
    for level in reversed(range(num_levels)):
        inputs = (level,) if level == num_levels - 1 else (level, td_ids[level + 1])
        nodes.append(Node(f"td{level}", level, inputs, smooth=False))
        td_ids[level] = num_levels + len(nodes) - 1
    return nodes, td_ids


def fpn_topology(num_levels: int) -> Topology:
    """From the coarsest level down: the top-down sum ``td{l}``, then at once its smoothed output ``out{l}``.

    The order is torchvision's: each level's output conv runs right after its sum, so the training step's
    peak memory is the peer's (computing every sum first kept one more map alive: +2.5 MiB at 640 px).
    """
    nodes: List[Node] = []
    outputs = [0] * num_levels
    running = None
    for level in reversed(range(num_levels)):
        inputs = (level,) if running is None else (level, running)
        nodes.append(Node(f"td{level}", level, inputs, smooth=False))
        running = num_levels + len(nodes) - 1
        nodes.append(Node(f"out{level}", level, (running,)))
        outputs[level] = num_levels + len(nodes) - 1
    return Topology(f"fpn{num_levels}", num_levels, tuple(nodes), tuple(outputs))


def lateral_only_topology(num_levels: int) -> Topology:
    """Every level on its own (lateral, then smoothing), with no top-down path: the baseline that shows what
    the top-down path adds."""
    nodes = tuple(Node(f"out{level}", level, (level,)) for level in range(num_levels))
    return Topology(f"lateral_only{num_levels}", num_levels, nodes, tuple(range(num_levels, 2 * num_levels)))


@register_neck("fpn")
def fpn(
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
    top_down: bool = True,
) -> GraphNeck:
    """Build an FPN.

    Args:
        spec: the backbone's levels.
        out_channels: channels of every output level.
        norm: norm after each conv (``"batchnorm"``, ``"groupnorm"``, a class, or None).
        act: activation after each conv (``"relu"``, ``"leaky_relu"``, a class, or None).
        norm_kwargs: extra arguments of the norm layer (``{"num_groups": 16}``).
        act_kwargs: extra arguments of the activation (``{"negative_slope": 0.1}``).
        smooth_depth: 3x3 conv blocks after each fusion.
        separable: depthwise-separable 3x3 convs.
        upsample_mode: how the top-down path upsamples.
        extra_levels: levels beyond the coarsest (P6, P7 ...).
        extra_op: ``subsample`` (torchvision ``LastLevelMaxPool``), ``maxpool`` or ``conv`` (RetinaNet P6/P7).
        extra_source: make extra levels from the coarsest ``output`` or ``input`` map.
        top_down: the top-down path; ``False`` leaves each level its lateral and smoothing convs only (an
            ablation baseline: the same convs and cost, no information flowing between levels).
    """
    check_knobs(out_channels=out_channels, upsample_mode=upsample_mode, extra_levels=extra_levels,
                extra_op=extra_op, extra_source=extra_source, smooth_depth=smooth_depth)
    if not isinstance(top_down, bool):
        raise TypeError(f"top_down must be True or False, got {type(top_down).__name__} {top_down!r}")
    blocks = standard_blocks(norm=norm, act=act, norm_kwargs=norm_kwargs, act_kwargs=act_kwargs,
                             smooth_depth=smooth_depth, separable=separable)
    topology = (fpn_topology if top_down else lateral_only_topology)(spec.num_levels)
    neck = GraphNeck(spec, topology, blocks, out_channels=out_channels, upsample_mode=upsample_mode,
                     lateral="always", extra_levels=extra_levels, extra_op=extra_op, extra_source=extra_source)
    return init_weights(neck)
