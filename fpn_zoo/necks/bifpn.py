"""BiFPN: EfficientDet's weighted bidirectional feature pyramid, repeated in cells.

Tan, Pang & Le, "EfficientDet: Scalable and Efficient Object Detection", CVPR 2020. https://arxiv.org/abs/1911.09070

One cell is a top-down path (``td{l}`` fuses level ``l`` with the level above) and a bottom-up path (``bu{l}``
fuses level ``l``'s input, its top-down node and the level below); the coarsest level has no top-down node.
Every node fuses its inputs with learned weights (``fusion``: ``fast_attn`` = ReLU weights normalised by
their sum, ``attn`` = softmax, ``sum`` = unweighted), then runs ``act -> depthwise-separable 3x3 conv ->
BatchNorm`` (EfficientDet's pre-activation order, :class:`ActConvNorm`). Cells repeat ``num_repeats``
times: node ``n`` of cell ``r`` is named ``c{r}_{n}``. The extra levels (P6, P7) are made from the coarsest
backbone map (1x1 conv + BN where the channels differ, then 3x3 stride-2 max-pools) and enter the graph like
the backbone's levels. A backbone map is projected (1x1 conv + BN, no activation) only where its channels
differ from ``out_channels``, once per edge that reads it, as in effdet.

With the defaults the math is effdet's ``BiFpn`` for ``efficientdet_d0`` (PyTorch padding), weight for
weight: see :func:`fpn_zoo.convert.effdet.from_effdet_bifpn`. The blocks (:func:`~fpn_zoo.layers.blocks.preact_blocks`)
and the cell stacking (:func:`~fpn_zoo.graph.stack_cells`) are shared with the generic ``graph`` family.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("bifpn", [24, 40, 80], out_channels=16, num_repeats=2).eval()
    >>> [tuple(f.shape[-2:]) for f in neck([torch.rand(1, c, s, s) for c, s in ((24, 16), (40, 8), (80, 4))])]
    [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from torch import nn

from .._features import FeatureSpec
from .._registry import register_neck
from ..graph import GraphNeck, Node, Topology, stack_cells
from ..layers.blocks import init_weights, preact_blocks
from ..layers.config import BIFPN_FUSIONS, check_knobs
from ..layers.conv import LayerSpec, resolve_norm

__all__ = ["bifpn_cell", "bifpn_topology", "bifpn", "effdet_norm_kwargs", "EFFDET_BN_KWARGS"]

#: EfficientDet's BatchNorm settings (TensorFlow's): what ``norm_kwargs=None`` means for a batch norm.
EFFDET_BN_KWARGS: Dict[str, float] = {"eps": 1e-3, "momentum": 0.01}


def bifpn_cell(num_levels: int, fusion: str = "fast_attn") -> Topology:
    """One BiFPN cell over ``num_levels`` levels, nodes in effdet's order (``td{L-2} .. td0, bu1 .. bu{L-1}``).

    ``fusion`` is one of :data:`~fpn_zoo.layers.config.BIFPN_FUSIONS` (checked by :func:`bifpn`).
    """
    if num_levels < 2:
        raise ValueError(f"a BiFPN cell needs at least 2 levels to fuse, got {num_levels}")
    nodes: List[Node] = []
    latest = list(range(num_levels))  # the newest map of each level
    for level in reversed(range(num_levels - 1)):
        nodes.append(Node(f"td{level}", level, (level, latest[level + 1]), fusion))
        latest[level] = num_levels + len(nodes) - 1
    outputs = [latest[0]]
    for level in range(1, num_levels):
        own = (level,) if latest[level] == level else (level, latest[level])
        nodes.append(Node(f"bu{level}", level, own + (latest[level - 1],), fusion))
        latest[level] = num_levels + len(nodes) - 1
        outputs.append(latest[level])
    return Topology(f"bifpn{num_levels}", num_levels, tuple(nodes), tuple(outputs))


def bifpn_topology(num_levels: int, num_repeats: int = 1, fusion: str = "fast_attn") -> Topology:
    """``num_repeats`` BiFPN cells over ``num_levels`` levels (backbone levels plus extra levels)."""
    return stack_cells(bifpn_cell(num_levels, fusion), num_repeats)


def effdet_norm_kwargs(norm: LayerSpec, norm_kwargs: Optional[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """``norm_kwargs``, or EfficientDet's ``eps=1e-3, momentum=0.01`` when they are None and ``norm`` is a batch norm."""
    if norm_kwargs is not None:
        return norm_kwargs
    layer = resolve_norm(norm)
    cls = getattr(layer, "func", layer)
    if isinstance(cls, type) and issubclass(cls, nn.modules.batchnorm._BatchNorm):
        return dict(EFFDET_BN_KWARGS)
    return None


@register_neck("bifpn")
def bifpn(
    spec: FeatureSpec,
    *,
    out_channels: int = 64,
    num_repeats: int = 3,
    fusion: str = "fast_attn",
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "silu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    smooth_depth: int = 1,
    separable: bool = True,
    upsample_mode: str = "nearest",
    extra_levels: int = 2,
    extra_op: str = "maxpool",
    extra_source: str = "input",
) -> GraphNeck:
    """Build a BiFPN (the defaults are EfficientDet-D0's: 64 channels, 3 cells, P6/P7 on a P3-P5 backbone).

    Args:
        spec: the backbone's levels.
        out_channels: channels of every node and output.
        num_repeats: BiFPN cells stacked one after the other.
        fusion: ``fast_attn`` (EfficientDet), ``attn`` (softmax weights) or ``sum`` (D6/D7).
        norm: norm after each conv (default BatchNorm), a class, or None.
        act: activation before each 3x3 conv (default swish / SiLU), a class, or None.
        norm_kwargs: arguments of the norm; None means EfficientDet's ``eps=1e-3, momentum=0.01`` for a
            batch norm and the layer's defaults otherwise.
        act_kwargs: arguments of the activation.
        smooth_depth: ``act-conv-norm`` blocks after each fusion.
        separable: depthwise-separable 3x3 convs (EfficientDet) or plain ones.
        upsample_mode: how maps go up a level.
        extra_levels: levels added beyond the coarsest backbone level; they join the graph.
        extra_op: ``maxpool`` (EfficientDet), ``subsample`` or ``conv``.
        extra_source: must be ``input``: extra levels are inputs of the graph, made from the backbone.

    Raises:
        ValueError: a bad knob, ``extra_source="output"``, or fewer than two levels in all.
    """
    check_knobs(out_channels=out_channels, upsample_mode=upsample_mode, extra_levels=extra_levels, extra_op=extra_op,
                extra_source=extra_source, fusion=fusion, fusions=BIFPN_FUSIONS, num_repeats=num_repeats,
                smooth_depth=smooth_depth)
    if extra_source != "input":
        raise ValueError(
            "extra levels join the BiFPN graph as inputs, so they are made from the coarsest backbone map; "
            f"extra_source={extra_source!r} cannot apply (use 'input')"
        )
    num_levels = spec.num_levels + extra_levels
    if num_levels < 2:
        raise ValueError(
            f"a BiFPN needs at least 2 levels to fuse; the backbone gives {spec.num_levels} and extra_levels="
            f"{extra_levels}: set extra_levels >= 1"
        )
    blocks = preact_blocks(norm=norm, act=act, norm_kwargs=effdet_norm_kwargs(norm, norm_kwargs),
                           act_kwargs=act_kwargs, smooth_depth=smooth_depth, separable=separable)
    neck = GraphNeck(
        spec, bifpn_topology(num_levels, num_repeats, fusion), blocks, out_channels=out_channels,
        upsample_mode=upsample_mode, lateral="if_needed", extra_levels=extra_levels, extra_op=extra_op,
        extra_source="input", extra_in_graph=True,
    )
    return init_weights(neck)
