"""Topology as data: a neck is a list of fusion nodes, and one executor runs any of them.

The idea is EfficientDet's (``effdet/fpn_config.py``, https://arxiv.org/abs/1911.09070): a node has an output
level, the ids of the maps it reads, and a fusion method. FPN, PANet, BiFPN, NAS-FPN ... are tables of
nodes; :class:`GraphNeck` resamples each input to the node's level (to the actual size of that level's
map), fuses, and optionally smooths. Families choose the blocks (:class:`Blocks`); topologies never name
a Python class, so a plugin or ``registry.yaml`` can define a new one without code.

Ids: ``0 .. num_levels - 1`` are the input levels (id == level), node ``k`` has id ``num_levels + k``.

Example:
    >>> from fpn_zoo.graph import Node, Topology
    >>> top_down = Topology("two_level_fpn", 2, (
    ...     Node("td1", 1, (1,), smooth=False),
    ...     Node("td0", 0, (0, 2), smooth=False),
    ...     Node("out0", 0, (3,)), Node("out1", 1, (2,)),
    ... ), outputs=(4, 5))
    >>> top_down.validate()
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import re
import warnings

import torch
from torch import nn

from ._features import FeatureSpec, check_module_inputs, make_feature_info
from .layers.fuse import fuse_batchnorm
from .layers.fusion import FUSIONS, SumFusion, make_fusion
from .layers.resample import ExtraLevels, Resample, max_pool_down, skip_identity

__all__ = ["Node", "Topology", "Blocks", "GraphNeck", "DOWNSAMPLES"]

DOWNSAMPLES = ("pool", "conv")


@dataclass(frozen=True)
class Node:
    """One fusion node.

    Attributes:
        name: unique identifier (used in state-dict keys, errors and diagrams).
        level: output level of the node (0 = finest input level).
        inputs: ids of the maps it reads (input levels, then earlier nodes).
        fusion: ``sum`` | ``fast_attn`` | ``attn`` | ``concat``.
        smooth: run the family's smoothing block after the fusion (required for ``concat``).
        downsample: how inputs from finer levels come down: ``pool`` (max-pool) or ``conv`` (learned).
    """

    name: str
    level: int
    inputs: Tuple[int, ...]
    fusion: str = "sum"
    smooth: bool = True
    downsample: str = "pool"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Node":
        unknown = set(d) - {"name", "level", "inputs", "fusion", "smooth", "downsample"}
        if unknown:
            raise ValueError(f"node {d.get('name', '?')!r}: unknown keys {sorted(unknown)}")
        try:
            return cls(
                name=str(d["name"]), level=int(d["level"]), inputs=tuple(int(i) for i in d["inputs"]),
                fusion=d.get("fusion", "sum"), smooth=bool(d.get("smooth", True)),
                downsample=d.get("downsample", "pool"),
            )
        except KeyError as e:
            raise ValueError(f"node {d.get('name', '?')!r} is missing the key {e}") from None


@dataclass(frozen=True)
class Topology:
    """A neck graph: nodes in execution order and the node ids that form the outputs (finest first)."""

    name: str
    num_levels: int
    nodes: Tuple[Node, ...]
    outputs: Tuple[int, ...]

    def level_of(self, node_id: int) -> int:
        return node_id if node_id < self.num_levels else self.nodes[node_id - self.num_levels].level

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first node that makes the graph malformed."""
        if self.num_levels < 1:
            raise ValueError(f"topology {self.name!r}: needs at least one level, got {self.num_levels}")
        seen = set()
        used = set(self.outputs)
        for k, node in enumerate(self.nodes):
            node_id = self.num_levels + k
            where = f"topology {self.name!r}, node {node.name!r} (id {node_id})"
            if not node.name.isidentifier() or node.name in seen:
                raise ValueError(f"{where}: names must be unique identifiers")
            seen.add(node.name)
            if not 0 <= node.level < self.num_levels:
                raise ValueError(f"{where}: level {node.level} does not exist (levels 0..{self.num_levels - 1})")
            if not node.inputs:
                raise ValueError(f"{where}: reads no input")
            for i in node.inputs:
                if not 0 <= i < node_id:
                    raise ValueError(f"{where}: reads id {i}, which is not computed yet (ids 0..{node_id - 1} are)")
            if node.fusion not in FUSIONS:
                raise ValueError(f"{where}: unknown fusion {node.fusion!r}; choose one of {FUSIONS}")
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
        """Read a topology written as data (``registry.yaml``'s ``topologies:`` section)."""
        try:
            nodes = tuple(Node.from_dict(n) for n in d["nodes"])
            topo = cls(name, int(d["num_levels"]), nodes, tuple(int(o) for o in d["outputs"]))
        except KeyError as e:
            raise ValueError(f"topology {name!r} is missing the key {e}") from None
        topo.validate()
        return topo


@dataclass(frozen=True)
class Blocks:
    """The layers a family builds its graph from (factories, called once at construction).

    Attributes:
        lateral: ``(in_channels, out_channels) -> module``: the 1x1 projection of an input.
        smooth: ``(in_channels, out_channels) -> module``: what runs after a fusion.
        down_conv: ``(channels, stride) -> module``: the learned downsampling of ``downsample="conv"``.
        extra_conv: ``(in_channels, out_channels) -> module``: a 3x3 stride-2 block for conv extra levels.
        extra_act: the activation between conv extra levels.
    """

    lateral: Callable[[int, int], nn.Module]
    smooth: Callable[[int, int], nn.Module]
    down_conv: Callable[[int, int], nn.Module]
    extra_conv: Callable[[int, int], nn.Module]
    extra_act: Callable[[], nn.Module] = field(default=lambda: nn.ReLU(inplace=False))


class FusionNode(nn.Module):
    """Resample every input to the node's level, fuse, smooth."""

    def __init__(self, inputs: Sequence[int], level: int, edges: List[nn.Module], fuse: nn.Module, smooth: nn.Module):
        super().__init__()
        self.inputs = tuple(inputs)
        self.level = level
        self.edges = nn.ModuleList(edges)
        self.fuse = fuse
        self.smooth = smooth

    def forward(self, feats: List[torch.Tensor], size: torch.Size) -> torch.Tensor:
        xs = [edge(feats[i], size) for i, edge in zip(self.inputs, self.edges)]
        fused = xs[0] if len(xs) == 1 and isinstance(self.fuse, SumFusion) else self.fuse(xs)
        return skip_identity(self.smooth, fused)


class GraphNeck(nn.Module):
    """Runs a :class:`Topology` on a backbone's feature maps.

    Args:
        spec: the backbone's levels (channels, reductions, layout).
        topology: the graph; its ``num_levels`` must be the backbone's levels plus the extra levels
            that join the graph (``extra_in_graph``).
        blocks: the family's layer factories.
        out_channels: channels of every node and output.
        upsample_mode: ``nearest`` | ``bilinear`` | ``bicubic`` (also fixes sizes after strided ops).
        lateral: ``always`` (every backbone input gets a 1x1 projection, as in FPN) or ``if_needed``
            (only where channels differ, as in BiFPN).
        extra_levels: coarser levels to add beyond the coarsest one.
        extra_op: ``subsample`` | ``maxpool`` | ``conv`` (see :class:`ExtraLevels`).
        extra_source: ``input`` (from the coarsest backbone map) or ``output`` (from the coarsest output).
        extra_in_graph: the extra levels are inputs of the graph (BiFPN) rather than appended outputs.

    State-dict names are stable API (``nodes.<node>.edges.<i>.proj.conv.weight`` ...). ``_version`` is saved
    in every state dict; when a future release renames keys, it adds ``(pattern, replacement)`` pairs under
    the new version in ``_STATE_DICT_RENAMES`` and older checkpoints are upgraded as they load.
    """

    # Layout of the maps inside the neck: necks with depthwise convs make their maps channels-last on entry
    # (oneDNN's NCHW depthwise kernels are its slow path; docs/benchmarks.md has the measurements), dense necks
    # keep the layout they are given. Weights stay NCHW (FSDP2 shards them as they are). The layout changes
    # no math. None = decide at construction; set True / False to override on an instance, or let
    # fpn_zoo.accelerate measure it on the running machine.
    channels_last: Optional[bool] = None

    _version = 1
    _STATE_DICT_RENAMES: Dict[int, Tuple[Tuple[str, str], ...]] = {}

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
        topology.validate()
        if lateral not in ("always", "if_needed"):
            raise ValueError(f"lateral must be 'always' or 'if_needed', got {lateral!r}")
        if extra_source not in ("input", "output"):
            raise ValueError(f"extra_source must be 'input' or 'output', got {extra_source!r}")
        if extra_in_graph and extra_source != "input":
            raise ValueError("extra levels that join the graph must come from the input (extra_source='input')")
        graph_levels = spec.num_levels + (extra_levels if extra_in_graph else 0)
        if topology.num_levels != graph_levels:
            raise ValueError(
                f"topology {topology.name!r} is written for {topology.num_levels} levels, but the backbone "
                f"gives {spec.num_levels}" + (f" (+{extra_levels} extra)" if extra_in_graph else "")
            )
        if spec.num_levels > 1 and len(set(spec.reductions)) == 1:
            warnings.warn(
                f"{topology.name}: every input level has stride {spec.reductions[0]} (a plain ViT?), so this "
                f"neck builds no pyramid: all its outputs stay at stride {spec.reductions[0]}. "
                "'simple_pyramid_fpn' or 'simple_pyramid_bifpn' build strides 8-32 from one such map.",
                UserWarning, stacklevel=3,
            )
        self.spec = spec
        self.topology = topology
        self.out_channels = out_channels
        self.extra_source = extra_source
        self.extra_in_graph = extra_in_graph

        reductions = list(spec.reductions)
        channels = list(spec.channels)
        self.extras: Optional[ExtraLevels] = None
        if extra_levels > 0:
            src_channels = spec.channels[-1] if extra_source == "input" else out_channels
            self.extras = ExtraLevels(
                src_channels, out_channels, extra_levels, extra_op,
                make_proj=blocks.lateral, make_conv=blocks.extra_conv, make_act=blocks.extra_act,
            )
            if extra_in_graph:
                reductions += [reductions[-1] * 2 ** (i + 1) for i in range(extra_levels)]
                channels += [out_channels] * extra_levels

        self.nodes = nn.ModuleDict()
        for k, node in enumerate(topology.nodes):
            edges = []
            for src in node.inputs:
                src_level = topology.level_of(src)
                in_ch = channels[src] if src < topology.num_levels else out_channels
                from_backbone = src < spec.num_levels
                needs_proj = in_ch != out_channels or (from_backbone and lateral == "always")
                proj = blocks.lateral(in_ch, out_channels) if needs_proj else None
                ratio = reductions[node.level] / reductions[src_level]
                stride = int(round(ratio)) if ratio > 1 else 1
                down = None
                if stride >= 2:
                    down = blocks.down_conv(out_channels, stride) if node.downsample == "conv" else max_pool_down(stride)
                edges.append(Resample(proj, down, upsample_mode))
            fused_channels = out_channels * len(node.inputs) if node.fusion == "concat" else out_channels
            smooth = blocks.smooth(fused_channels, out_channels) if node.smooth else nn.Identity()
            self.nodes[node.name] = FusionNode(node.inputs, node.level, edges, make_fusion(node.fusion, len(node.inputs)), smooth)

        self.output_ids = tuple(topology.outputs)
        out_reductions = [reductions[topology.level_of(i)] for i in self.output_ids]
        out_names = [f"nodes.{topology.nodes[i - topology.num_levels].name}" if i >= topology.num_levels else f"input{i}"
                     for i in self.output_ids]
        if self.extras is not None and not extra_in_graph:
            out_reductions += [out_reductions[-1] * 2 ** (i + 1) for i in range(extra_levels)]
            out_names += [f"extras.{i}" for i in range(extra_levels)]
        self.feature_info = make_feature_info([out_channels] * len(out_reductions), out_reductions)
        if self.channels_last is None:
            self.channels_last = any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in self.modules())
        for info, name in zip(self.feature_info.info, out_names):
            info["module"] = name

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        saved_version = (local_metadata or {}).get("version") or 1
        for version in sorted(v for v in self._STATE_DICT_RENAMES if v > saved_version):
            for pattern, replacement in self._STATE_DICT_RENAMES[version]:
                for key in [k for k in state_dict if k.startswith(prefix)]:
                    new_key = prefix + re.sub(pattern, replacement, key[len(prefix):])
                    if new_key != key:
                        state_dict[new_key] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def fuse(self) -> "GraphNeck":
        """Fold BatchNorm into the preceding convs for inference (see :func:`fpn_zoo.fuse_batchnorm`)."""
        return fuse_batchnorm(self)

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
        if self.extras is not None and self.extra_in_graph:
            feats.extend(self.extras(coarsest_input))
        sizes = [f.shape[-2:] for f in feats]
        for node in self.nodes.values():
            feats.append(node(feats, sizes[node.level]))
        outs = [feats[i] for i in self.output_ids]
        if self.extras is not None and not self.extra_in_graph:
            outs.extend(self.extras(coarsest_input if self.extra_source == "input" else outs[-1]))
        return outs

    def describe(self) -> Dict[str, Any]:
        """The graph as plain data (for docs and diagrams)."""
        return {
            "topology": self.topology.name,
            "num_levels": self.topology.num_levels,
            "input_levels": self.spec.num_levels,
            "nodes": [asdict(n) for n in self.topology.nodes],
            "outputs": list(self.output_ids),
            "out_channels": self.out_channels,
            "extra_levels": 0 if self.extras is None else self.extras.num_levels,
            "extra_op": None if self.extras is None else self.extras.op,
            "extra_source": self.extra_source,
            "extra_in_graph": self.extra_in_graph,
        }
