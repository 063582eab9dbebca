"""Topology as data: a neck is a list of fusion nodes, and one executor runs any of them.

The idea is EfficientDet's (``effdet/fpn_config.py``, https://arxiv.org/abs/1911.09070): a node has an output
level, the maps it reads, and a fusion method. FPN, PANet, BiFPN, NAS-FPN ... are tables of nodes;
:class:`GraphNeck` resamples each input to the node's level (to the actual size of that level's map), fuses,
and optionally smooths. Families choose the blocks (:class:`~fpn_zoo.layers.blocks.Blocks`); topologies
never name a Python class, so a plugin or ``registry.yaml`` can define a new one without code.

Ids (the Python form): ``0 .. num_levels - 1`` are the input levels (id == level), node ``k`` has id
``num_levels + k``. Written as data (:meth:`Topology.from_dict`), maps are named instead: input level ``l``
is ``in{l}`` and a node is its name.

Example:
    >>> from fpn_zoo.graph import Topology
    >>> top_down = Topology.from_dict("two_level_fpn", {
    ...     "num_levels": 2,
    ...     "nodes": [{"name": "td1", "level": 1, "inputs": ["in1"], "smooth": False},
    ...               {"name": "td0", "level": 0, "inputs": ["in0", "td1"], "smooth": False},
    ...               {"name": "out0", "level": 0, "inputs": ["td0"]}, {"name": "out1", "level": 1, "inputs": ["td1"]}],
    ...     "outputs": ["out0", "out1"]})
    >>> top_down.nodes[1].inputs, top_down.outputs
    ((0, 2), (4, 5))
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ._features import FeatureSpec, check_module_inputs, make_feature_info, warn_single_stride
from ._utils import close_matches
from .layers.blocks import Blocks
from .layers.config import DOWNSAMPLES, FUSIONS
from .layers.fold import fold_batchnorm
from .layers.fusion import SumFusion, WeightedFusion, make_fusion
from .layers.resample import ExtraLevels, Resample, max_pool_down

__all__ = ["Node", "Topology", "GraphDescription", "GraphNeck", "FusionNode", "stack_cells", "INPUT_PREFIX"]

#: Input level ``l`` of a topology written as data is named ``in{l}``.
INPUT_PREFIX = "in"

_NODE_KEYS = ("name", "level", "inputs", "fusion", "smooth", "downsample")


@dataclass(frozen=True)
class Node:
    """One fusion node.

    Attributes:
        name: unique identifier (used in state-dict keys, errors and diagrams).
        level: output level of the node (0 = finest input level).
        inputs: ids of the maps it reads (input levels, then earlier nodes).
        fusion: one of :data:`~fpn_zoo.layers.config.FUSIONS`.
        smooth: run the family's smoothing block after the fusion (required for ``concat``).
        downsample: how inputs from finer levels come down: ``pool`` (max-pool) or ``conv`` (learned).
    """

    name: str
    level: int
    inputs: Tuple[int, ...]
    fusion: str = "sum"
    smooth: bool = True
    downsample: str = "pool"


def _typed(where: str, key: str, value: Any, kind: type, what: str) -> Any:
    """``value`` if it is a ``kind`` (a bool is not an int), else a ``ValueError`` naming ``where`` and ``key``."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(f"{where}: {key} must be {what}, got {type(value).__name__} {value!r}")


def _name_list(where: str, key: str, value: Any) -> List[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {key} must be a list of map names (input levels 'in0', 'in1' ... or node "
                         f"names), got {type(value).__name__} {value!r}")
    return list(value)


@dataclass(frozen=True)
class Topology:
    """A neck graph: nodes in execution order and the ids of the maps that form the outputs (finest first)."""

    name: str
    num_levels: int
    nodes: Tuple[Node, ...]
    outputs: Tuple[int, ...]

    def level_of(self, node_id: int) -> int:
        return node_id if node_id < self.num_levels else self.nodes[node_id - self.num_levels].level

    def name_of(self, node_id: int) -> str:
        """``in{l}`` for input level ``l``, else the node's name."""
        return f"{INPUT_PREFIX}{node_id}" if node_id < self.num_levels else self.nodes[node_id - self.num_levels].name

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first node that makes the graph malformed."""
        if self.num_levels < 1:
            raise ValueError(f"topology {self.name!r}: needs at least one level, got {self.num_levels}")
        seen = {self.name_of(level) for level in range(self.num_levels)}
        used = set(self.outputs)
        for k, node in enumerate(self.nodes):
            node_id = self.num_levels + k
            where = f"topology {self.name!r}, node {node.name!r} (id {node_id})"
            if not node.name.isidentifier() or node.name in seen:
                raise ValueError(f"{where}: names must be unique identifiers, other than the input names "
                                 f"{INPUT_PREFIX}0..{INPUT_PREFIX}{self.num_levels - 1}")
            seen.add(node.name)
            if not 0 <= node.level < self.num_levels:
                raise ValueError(f"{where}: level {node.level} does not exist (levels 0..{self.num_levels - 1})")
            if not node.inputs:
                raise ValueError(f"{where}: reads no input")
            for i in node.inputs:
                if not 0 <= i < node_id:
                    raise ValueError(f"{where}: reads id {i}, which is not computed yet (ids 0..{node_id - 1} are)")
            if node.fusion not in FUSIONS:
                raise ValueError(f"{where}: unknown fusion {node.fusion!r}; choose one of {FUSIONS}"
                                 f"{close_matches(node.fusion, FUSIONS)}")
            if node.fusion == "concat" and not node.smooth:
                raise ValueError(f"{where}: a concat node needs smooth=True to bring the channels back")
            if node.downsample not in DOWNSAMPLES:
                raise ValueError(f"{where}: unknown downsample {node.downsample!r}; choose one of {DOWNSAMPLES}")
            used.update(node.inputs)
        for k, node in enumerate(self.nodes):
            if self.num_levels + k not in used:
                raise ValueError(f"topology {self.name!r}: node {node.name!r} is computed but never used")
        last = self.num_levels + len(self.nodes)
        if not self.outputs:
            raise ValueError(f"topology {self.name!r}: has no outputs")
        levels = []
        for i in self.outputs:
            if not 0 <= i < last:
                raise ValueError(f"topology {self.name!r}: output id {i} does not exist (ids 0..{last - 1})")
            levels.append(self.level_of(i))
        if levels != sorted(set(levels)):
            raise ValueError(f"topology {self.name!r}: output levels {levels} must be distinct, finest first")

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> "Topology":
        """Read a topology written as data (``registry.yaml``'s ``topologies:`` section).

        The format: ``num_levels`` (an int), ``nodes`` (a list of mappings with ``name``, ``level`` (an int),
        ``inputs`` (a list of names: ``in0`` .. ``in{num_levels - 1}`` for the input levels, or the name of an
        earlier node), optional ``fusion``, ``smooth`` (a bool) and ``downsample``), and ``outputs`` (a list of
        names, finest first). Types are strict: ``inputs: "in1"``, ``smooth: "false"``, ``level: 0.9`` are
        errors, not guesses.

        Raises:
            ValueError: naming the topology, the node and the key: a missing or unknown key, a value of the
                wrong type, an unknown map name (with close matches), or a malformed graph.
        """
        where = f"topology {name!r}"
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected a mapping with num_levels, nodes and outputs, got {type(d).__name__}")
        unknown = sorted(set(d) - {"num_levels", "nodes", "outputs"})
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; expected num_levels, nodes, outputs")
        for key in ("num_levels", "nodes", "outputs"):
            if key not in d:
                raise ValueError(f"{where} is missing the key {key!r}")
        num_levels = _typed(where, "num_levels", d["num_levels"], int, "an int")
        if not isinstance(d["nodes"], (list, tuple)):
            raise ValueError(f"{where}: nodes must be a list, got {type(d['nodes']).__name__}")
        ids = {f"{INPUT_PREFIX}{level}": level for level in range(max(num_levels, 0))}

        def resolve(names: List[str], at: str, key: str) -> Tuple[int, ...]:
            missing = [n for n in names if n not in ids]
            if missing:
                raise ValueError(f"{at}: {key} names {missing[0]!r}, which is neither an input level "
                                 f"({INPUT_PREFIX}0..{INPUT_PREFIX}{num_levels - 1}) nor an earlier node"
                                 f"{close_matches(missing[0], ids)}")
            return tuple(ids[n] for n in names)

        nodes = []
        for k, raw in enumerate(d["nodes"]):
            if not isinstance(raw, Mapping):
                raise ValueError(f"{where}: node {k} must be a mapping, got {type(raw).__name__} {raw!r}")
            at = f"{where}, node {raw.get('name', k)!r}"
            unknown = sorted(set(raw) - set(_NODE_KEYS))
            if unknown:
                raise ValueError(f"{at}: unknown keys {unknown}{close_matches(unknown[0], _NODE_KEYS)}")
            for key in ("name", "level", "inputs"):
                if key not in raw:
                    raise ValueError(f"{at} is missing the key {key!r}")
            node = Node(
                name=_typed(at, "name", raw["name"], str, "a string"),
                level=_typed(at, "level", raw["level"], int, "an int"),
                inputs=resolve(_name_list(at, "inputs", raw["inputs"]), at, "inputs"),
                fusion=_typed(at, "fusion", raw.get("fusion", "sum"), str, "a string"),
                smooth=_typed(at, "smooth", raw.get("smooth", True), bool, "true or false"),
                downsample=_typed(at, "downsample", raw.get("downsample", "pool"), str, "a string"),
            )
            if node.name in ids:
                raise ValueError(f"{at}: the name {node.name!r} is taken (by an input level or an earlier node)")
            ids[node.name] = num_levels + k
            nodes.append(node)
        outputs = resolve(_name_list(where, "outputs", d["outputs"]), where, "outputs")
        topology = cls(name, num_levels, tuple(nodes), outputs)
        topology.validate()
        return topology

    def to_dict(self) -> Dict[str, Any]:
        """The named form :meth:`from_dict` reads (defaults left out)."""
        nodes = []
        for node in self.nodes:
            entry: Dict[str, Any] = {"name": node.name, "level": node.level,
                                     "inputs": [self.name_of(i) for i in node.inputs]}
            for key, default in (("fusion", "sum"), ("smooth", True), ("downsample", "pool")):
                if getattr(node, key) != default:
                    entry[key] = getattr(node, key)
            nodes.append(entry)
        return {"num_levels": self.num_levels, "nodes": nodes, "outputs": [self.name_of(i) for i in self.outputs]}


def stack_cells(cell: Topology, num_repeats: int) -> Topology:
    """Repeat a cell: cell ``r + 1`` reads cell ``r``'s outputs as its levels; node ``n`` of cell ``r`` is ``c{r}_{n}``.

    Raises:
        ValueError: ``num_repeats > 1`` and the cell cannot feed itself: its outputs are not one map per level,
            finest first, or it never reads some level (the previous cell's output there would go unused).
    """
    cell.validate()
    num_levels = cell.num_levels
    out_levels = [cell.level_of(i) for i in cell.outputs]
    if num_repeats > 1 and out_levels != list(range(num_levels)):
        raise ValueError(
            f"topology {cell.name!r} cannot be repeated: its outputs are at levels {out_levels}, but a repeated "
            f"cell must return one map per level 0..{num_levels - 1}, finest first"
        )
    read = {i for node in cell.nodes for i in node.inputs} | set(cell.outputs)
    unread = [level for level in range(num_levels) if level not in read]
    if num_repeats > 1 and unread:
        raise ValueError(
            f"topology {cell.name!r} cannot be repeated: it never reads level(s) {unread}, so the previous "
            "cell's outputs there would go unused"
        )

    def global_id(local: int, feed: List[int], base: int) -> int:
        return feed[local] if local < num_levels else base + local - num_levels

    nodes: List[Node] = []
    feed = list(range(num_levels))
    for r in range(num_repeats):
        base = num_levels + len(nodes)
        for node in cell.nodes:
            inputs = tuple(global_id(i, feed, base) for i in node.inputs)
            nodes.append(replace(node, name=f"c{r}_{node.name}", inputs=inputs))
        feed = [global_id(i, feed, base) for i in cell.outputs]
    stacked = Topology(f"{cell.name}x{num_repeats}", num_levels, tuple(nodes), tuple(feed))
    stacked.validate()
    return stacked


@dataclass(frozen=True)
class GraphDescription:
    """What a built :class:`GraphNeck` computes, for docs and diagrams (:func:`fpn_zoo.diagram.mermaid`).

    Attributes:
        topology: the topology's name.
        num_levels: levels of the graph (backbone levels, plus the extra levels that join it).
        input_levels: backbone levels.
        nodes: the topology's nodes, in execution order.
        outputs: ids of the output maps (before the extra levels appended after the graph).
        out_channels: channels of every node and output.
        extra_levels: extra levels made by the neck (0 if none).
        extra_op: how they are made (see :data:`~fpn_zoo.layers.config.EXTRA_OPS`), or None.
        extra_source: what they are made from: ``input`` or ``output``.
        extra_in_graph: whether they are inputs of the graph (BiFPN) or appended to its outputs.
    """

    topology: str
    num_levels: int
    input_levels: int
    nodes: Tuple[Node, ...]
    outputs: Tuple[int, ...]
    out_channels: int
    extra_levels: int
    extra_op: Optional[str]
    extra_source: str
    extra_in_graph: bool
    kind: str = "graph"


class FusionNode(nn.Module):
    """Resample every input to the node's level, fuse, smooth.

    Children (state-dict names): ``edges`` (one :class:`~fpn_zoo.layers.resample.Resample` per input),
    ``fuse`` (the fusion op, holding the ``fast_attn`` / ``attn`` weights), ``smooth``.

    What runs per call is worked out once, here, not per forward: which edges need a projection, a strided op
    or a resize, and whether the fusion is a plain sum (added inline) or a single input (passed through).
    Modules with work to do are called as modules (their hooks fire); the ``edges`` and this node are
    routing containers that :class:`GraphNeck` does not call through ``nn.Module.__call__``, so hooks
    registered on them (or FSDP2 ``fully_shard`` of them) do not run: hook or shard the blocks inside
    (``edges.<i>.proj``, ``smooth`` ...) or the whole neck. Replacing ``fuse``, ``smooth`` or an edge's
    ``proj`` / ``down`` by assignment is seen; replacing an item of ``edges`` or of ``smooth`` is not.
    """

    def __init__(self, inputs: Sequence[int], level: int, edges: List[Resample], fuse: nn.Module, smooth: nn.Module):
        super().__init__()
        self.inputs = tuple(inputs)
        self.level = level
        self.edges = nn.ModuleList(edges)
        self.fuse = fuse
        self.smooth = smooth
        self._plan_ready = True
        self._plan()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("fuse", "smooth") and self.__dict__.get("_plan_ready"):
            self._plan()

    def _plan(self) -> None:
        self._reads = tuple(zip(self.inputs, self.edges))
        fuse = self.fuse
        if isinstance(fuse, SumFusion):
            self._fusion = "sum"
        elif len(self.inputs) == 1 and not isinstance(fuse, WeightedFusion):
            self._fusion = "first"  # concat / global pooling of one map is the map
        else:
            self._fusion = "module"
        smooth = self.smooth
        if isinstance(smooth, nn.Identity):
            self._smooth_steps: Tuple[nn.Module, ...] = ()
        elif type(smooth) is nn.Sequential:  # a plain chain of blocks: call the blocks, not the chain
            self._smooth_steps = tuple(m for m in smooth if not isinstance(m, nn.Identity))
        else:
            self._smooth_steps = (smooth,)

    def forward(self, feats: List[torch.Tensor], size: torch.Size) -> torch.Tensor:
        """Args: every map computed so far (input levels, then earlier nodes); the node level's size."""
        if self._fusion == "sum":
            i, edge = self._reads[0]
            out = edge.forward(feats[i], size)
            for i, edge in self._reads[1:]:
                out = out + edge.forward(feats[i], size)
        else:
            xs = [edge.forward(feats[i], size) for i, edge in self._reads]
            out = xs[0] if self._fusion == "first" else self.fuse(xs)
        for step in self._smooth_steps:
            out = step(out)
        return out


class GraphNeck(nn.Module):
    """Runs a :class:`Topology` on a backbone's feature maps.

    The family that builds it has checked every knob (:func:`fpn_zoo.layers.config.check_knobs`); the neck
    trusts its arguments.

    Args:
        spec: the backbone's levels (channels, reductions, layout).
        topology: the graph; its ``num_levels`` must be the backbone's levels plus the extra levels
            that join the graph (``extra_in_graph``).
        blocks: the family's layer factories.
        out_channels: channels of every node and output.
        upsample_mode: one of :data:`~fpn_zoo.layers.config.UPSAMPLE_MODES` (also fixes sizes after strided ops).
        lateral: ``always`` (every backbone input gets a 1x1 projection, as in FPN) or ``if_needed``
            (only where channels differ, as in BiFPN).
        extra_levels: coarser levels to add beyond the coarsest one.
        extra_op: ``subsample`` | ``maxpool`` | ``conv`` (see :class:`~fpn_zoo.layers.resample.ExtraLevels`).
        extra_source: ``input`` (from the coarsest backbone map) or ``output`` (from the coarsest output);
            ``input`` when the extra levels join the graph.
        extra_in_graph: the extra levels are inputs of the graph (BiFPN) rather than appended outputs.

    State-dict names are stable API (``nodes.<node>.edges.<i>.proj.conv.weight`` ...); ``_version`` is saved in
    every state dict so that a release that renames keys can upgrade older checkpoints as they load.
    """

    # Layout of the maps inside the neck: necks with depthwise convs make their maps channels-last on entry
    # (oneDNN's NCHW depthwise kernels are its slow path: see docs/benchmarks.md), dense necks
    # keep the layout they are given. Weights stay NCHW (FSDP2 shards them as they are). The layout changes
    # no math. None = decide at construction; set True / False to override on an instance.
    channels_last: Optional[bool] = None

    _version = 1

    def __init__(
        self,
        spec: FeatureSpec,
        topology: Topology,
        blocks: Blocks,
        *,
        out_channels: int,
        upsample_mode: str = "nearest",
        lateral: str = "always",
        extra_levels: int = 0,
        extra_op: str = "subsample",
        extra_source: str = "output",
        extra_in_graph: bool = False,
    ) -> None:
        super().__init__()
        graph_levels = spec.num_levels + (extra_levels if extra_in_graph else 0)
        if topology.num_levels != graph_levels:
            raise ValueError(
                f"topology {topology.name!r} is written for {topology.num_levels} levels, but the backbone "
                f"gives {spec.num_levels}" + (f" (+{extra_levels} extra)" if extra_in_graph else "")
            )
        warn_single_stride(spec)
        self.spec = spec
        self.topology = topology
        self.out_channels = out_channels
        self.upsample_mode = upsample_mode
        self.lateral = lateral
        self.extra_source = extra_source
        self.extra_in_graph = extra_in_graph
        self.extras = self._build_extras(blocks, extra_levels, extra_op)
        self._channels, self._reductions = self._graph_levels(extra_levels if extra_in_graph else 0)
        self.nodes = nn.ModuleDict({node.name: self._build_node(node, blocks) for node in topology.nodes})
        self.feature_info = self._output_info()
        if self.channels_last is None:
            self.channels_last = any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in self.modules())

    # ------------------------------------------------------------------------------------------ builders

    def _build_extras(self, blocks: Blocks, extra_levels: int, extra_op: str) -> Optional[ExtraLevels]:
        """The extra levels (P6, P7 ...), or None."""
        if extra_levels == 0:
            return None
        src_channels = self.spec.channels[-1] if self.extra_source == "input" else self.out_channels
        return ExtraLevels(src_channels, self.out_channels, extra_levels, extra_op,
                           make_proj=blocks.lateral, make_conv=blocks.extra_conv, make_act=blocks.extra_act)

    def _graph_levels(self, in_graph: int) -> Tuple[List[int], List[float]]:
        """Channels and reductions of the graph's levels: the backbone's, then ``in_graph`` extra levels."""
        channels = list(self.spec.channels) + [self.out_channels] * in_graph
        reductions = list(self.spec.reductions)
        reductions += [reductions[-1] * 2 ** (i + 1) for i in range(in_graph)]
        return channels, reductions

    def _build_edge(self, src: int, node: Node, blocks: Blocks) -> Resample:
        """Input ``src`` of ``node``: a projection where channels differ (or always, for a backbone map with
        ``lateral="always"``), a strided op from a finer level, a resize where sizes may differ."""
        topology = self.topology
        src_level = topology.level_of(src)
        in_ch = self._channels[src] if src < topology.num_levels else self.out_channels
        from_backbone = src < self.spec.num_levels
        needs_proj = in_ch != self.out_channels or (from_backbone and self.lateral == "always")
        proj = blocks.lateral(in_ch, self.out_channels) if needs_proj else None
        ratio = self._reductions[node.level] / self._reductions[src_level]
        stride = int(round(ratio)) if ratio > 1 else 1
        down = None
        if stride >= 2:
            down = blocks.down_conv(self.out_channels, stride) if node.downsample == "conv" else max_pool_down(stride)
        return Resample(proj, down, self.upsample_mode, resize=src_level != node.level or down is not None)

    def _build_node(self, node: Node, blocks: Blocks) -> FusionNode:
        edges = [self._build_edge(src, node, blocks) for src in node.inputs]
        fused_channels = self.out_channels * len(node.inputs) if node.fusion == "concat" else self.out_channels
        smooth = blocks.smooth(fused_channels, self.out_channels) if node.smooth else nn.Identity()
        return FusionNode(node.inputs, node.level, edges, make_fusion(node.fusion, len(node.inputs)), smooth)

    def _output_info(self):
        """The timm ``FeatureInfo`` of the outputs: the topology's, then the appended extra levels."""
        topology = self.topology
        reductions = [self._reductions[topology.level_of(i)] for i in topology.outputs]
        names = [f"nodes.{topology.name_of(i)}" if i >= topology.num_levels else f"input{i}" for i in topology.outputs]
        if self.extras is not None and not self.extra_in_graph:
            reductions += [reductions[-1] * 2 ** (i + 1) for i in range(self.extras.num_levels)]
            names += [f"extras.{i}" for i in range(self.extras.num_levels)]
        info = make_feature_info([self.out_channels] * len(reductions), reductions)
        for entry, name in zip(info.info, names):
            entry["module"] = name
        return info

    # ------------------------------------------------------------------------------------------ running

    @property
    def output_ids(self) -> Tuple[int, ...]:
        return self.topology.outputs

    def fold_batchnorm(self) -> "GraphNeck":
        """Fold BatchNorm into the preceding convs for inference (see :func:`fpn_zoo.layers.fold.fold_batchnorm`)."""
        return fold_batchnorm(self)

    def _prepare(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":  # a free view, already channels-last in memory
            return [f.permute(0, 3, 1, 2) for f in features]
        if self.channels_last:
            return [f.contiguous(memory_format=torch.channels_last) for f in features]
        return list(features)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level, finest first. Returns: one NCHW map per output level."""
        feats = self._prepare(features)
        coarsest_input = feats[-1]
        extras = self.extras
        if extras is not None and self.extra_in_graph:
            feats.extend(extras(coarsest_input))
        sizes = [f.shape[-2:] for f in feats]
        for node in self.nodes.values():
            feats.append(node.forward(feats, sizes[node.level]))
        outs = [feats[i] for i in self.topology.outputs]
        if extras is not None and not self.extra_in_graph:
            outs.extend(extras(coarsest_input if self.extra_source == "input" else outs[-1]))
        return outs

    def describe(self) -> GraphDescription:
        """The graph as a typed description (for docs and diagrams)."""
        return GraphDescription(
            topology=self.topology.name, num_levels=self.topology.num_levels, input_levels=self.spec.num_levels,
            nodes=self.topology.nodes, outputs=self.topology.outputs, out_channels=self.out_channels,
            extra_levels=0 if self.extras is None else self.extras.num_levels,
            extra_op=None if self.extras is None else self.extras.op,
            extra_source=self.extra_source, extra_in_graph=self.extra_in_graph,
        )
