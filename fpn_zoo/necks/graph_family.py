"""The ``graph`` family: any topology written as data, with the shared knobs. A new neck needs only YAML.

A topology lives in ``registry.yaml``'s ``topologies:`` section (or a plugin's, or
:func:`fpn_zoo.register_topology`) in :meth:`fpn_zoo.graph.Topology.from_dict`'s format; a variant of this
family names it and sets the blocks. NAS-FPN (Ghiasi et al., CVPR 2019, https://arxiv.org/abs/1904.07392)
and EfficientDet's QuFPN (``effdet/config/fpn_config.py``) are built that way::

    topologies:
      my_cell:
        num_levels: 2
        nodes:
          - {name: down, level: 0, inputs: [in0, in1]}
          - {name: up, level: 1, inputs: [in1, down]}
        outputs: [down, up]
    necks:
      my_neck:
        family: graph
        args: {topology: my_cell, num_repeats: 3, out_channels: 64}

Maps are named: input level ``l`` is ``in{l}`` (extra levels that join the graph continue the count), a node
is its name. The topology's ``num_levels`` counts the backbone levels plus the extra levels that join the
graph (``extra_in_graph``, the default). ``num_repeats > 1`` stacks the topology as a cell
(:func:`~fpn_zoo.graph.stack_cells`):
it must then return one map per level. ``pre_act=True`` gives the EfficientDet / NAS-FPN blocks
(``act -> conv -> norm`` after a fusion, ``conv-norm`` projections), ``pre_act=False`` the FPN ones
(``conv -> norm -> act`` everywhere).

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("nasfpn", [24, 40, 80], out_channels=16, num_repeats=2).eval()
    >>> neck.feature_info.reduction()
    [8, 16, 32, 64, 128]
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Optional, Union

from .._features import BackboneMismatch, FeatureSpec
from .._registry import get_topology, register_neck
from ..graph import GraphNeck, Topology, stack_cells
from ..layers.blocks import init_weights, preact_blocks, standard_blocks
from ..layers.config import check_knobs
from ..layers.conv import LayerSpec

__all__ = ["graph", "resolve_topology"]


def resolve_topology(topology: Union[str, Topology], fusion: Optional[str] = None) -> Topology:
    """A registered topology by name (or a :class:`Topology` as is), with every node's fusion replaced by ``fusion``.

    ``fusion`` is None or one of :data:`~fpn_zoo.layers.config.FUSIONS` (checked by :func:`graph`).
    """
    if isinstance(topology, str):
        cell = get_topology(topology)
    elif isinstance(topology, Topology):
        cell = topology
        cell.validate()
    else:
        raise TypeError(f"topology must be a registered topology name or a Topology, got {type(topology).__name__}")
    if fusion is not None:
        cell = replace(cell, nodes=tuple(replace(node, fusion=fusion) for node in cell.nodes))
        cell.validate()
    return cell


def _check_levels(cell: Topology, spec: FeatureSpec, extra_levels: int, extra_in_graph: bool) -> None:
    graph_levels = spec.num_levels + (extra_levels if extra_in_graph else 0)
    if cell.num_levels == graph_levels:
        return
    if extra_in_graph:
        have = f"{spec.num_levels} backbone level(s) + {extra_levels} extra level(s) = {graph_levels}"
        needed = cell.num_levels - spec.num_levels
        hint = (f"set extra_levels={needed}" if needed >= 0 else
                f"feed at most {cell.num_levels} backbone levels (timm out_indices)")
    else:
        have = f"{spec.num_levels} backbone level(s)"
        hint = f"feed {cell.num_levels} backbone levels (timm out_indices), or let extra levels join the graph"
    raise BackboneMismatch(
        f"topology {cell.name!r} is written for {cell.num_levels} levels, but this neck has {have}; {hint}, "
        "or pick a variant whose graph fits any level count, such as 'bifpn'"
    )


@register_neck("graph")
def graph(
    spec: FeatureSpec,
    *,
    topology: Union[str, Topology],
    num_repeats: int = 1,
    fusion: Optional[str] = None,
    out_channels: int = 256,
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "relu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    smooth_depth: int = 1,
    separable: bool = False,
    pre_act: bool = True,
    lateral: str = "always",
    upsample_mode: str = "nearest",
    extra_levels: int = 0,
    extra_op: str = "maxpool",
    extra_source: str = "input",
    extra_in_graph: bool = True,
) -> GraphNeck:
    """Build a neck from a topology written as data.

    Args:
        spec: the backbone's levels.
        topology: a registered topology name (see :func:`fpn_zoo.list_topologies`) or a :class:`Topology`.
        num_repeats: stack the topology as a cell this many times.
        fusion: replace every node's fusion (``sum``, ``fast_attn``, ...); None keeps the topology's.
        out_channels: channels of every node and output.
        norm: norm of each conv block, a class, or None.
        act: activation of each conv block, a class, or None.
        norm_kwargs: arguments of the norm layer.
        act_kwargs: arguments of the activation.
        smooth_depth: conv blocks after each smoothed fusion.
        separable: depthwise-separable 3x3 convs.
        pre_act: ``act -> conv -> norm`` blocks and activation-free projections (EfficientDet, NAS-FPN), or
            ``conv -> norm -> act`` blocks (FPN).
        lateral: ``always`` (every edge reading a backbone map projects it) or ``if_needed`` (only where
            channels differ).
        upsample_mode: how maps go up a level.
        extra_levels: levels added beyond the coarsest backbone level.
        extra_op: ``maxpool``, ``subsample`` or ``conv``.
        extra_source: ``input`` (the coarsest backbone map) or ``output`` (only with ``extra_in_graph=False``).
        extra_in_graph: the extra levels are inputs of the graph (counted in the topology's ``num_levels``)
            rather than appended to its outputs.

    Raises:
        ValueError: unknown or malformed topology (naming the node), a level count the topology is not
            written for (naming both counts), a cell that cannot be repeated, or a bad knob.
    """
    check_knobs(out_channels=out_channels, upsample_mode=upsample_mode, extra_levels=extra_levels, extra_op=extra_op,
                extra_source=extra_source, lateral=lateral, fusion=fusion, num_repeats=num_repeats,
                smooth_depth=smooth_depth)
    if extra_in_graph and extra_levels > 0 and extra_source != "input":
        raise ValueError(
            "extra levels that join the graph (extra_in_graph=True) are made from the coarsest backbone map; "
            f"extra_source={extra_source!r} needs extra_in_graph=False"
        )
    cell = resolve_topology(topology, fusion)
    _check_levels(cell, spec, extra_levels, extra_in_graph)
    graph_topology = stack_cells(cell, num_repeats) if num_repeats > 1 else cell
    if pre_act:
        blocks = preact_blocks(norm=norm, act=act, norm_kwargs=norm_kwargs, act_kwargs=act_kwargs,
                               smooth_depth=smooth_depth, separable=separable)
    else:
        blocks = standard_blocks(norm=norm, act=act, norm_kwargs=norm_kwargs, act_kwargs=act_kwargs,
                                 smooth_depth=smooth_depth, separable=separable)
    neck = GraphNeck(
        spec, graph_topology, blocks, out_channels=out_channels, upsample_mode=upsample_mode, lateral=lateral,
        extra_levels=extra_levels, extra_op=extra_op, extra_source=extra_source if extra_levels > 0 else "input",
        extra_in_graph=extra_in_graph and extra_levels > 0,
    )
    return init_weights(neck)
