"""Mermaid diagrams of built necks, drawn from the modules themselves (never written by hand).

* A :class:`~fpn_zoo.graph.GraphNeck` is drawn node by node from its topology: the input levels, the extra
  levels that join the graph, every fusion node (its fusion and whether it is smoothed), every edge (with
  the 1x1 projection / down- / upsampling the built module really applies on it), the outputs and the
  extra levels appended after them.
* A neck whose ``describe()`` has ``stages`` (:class:`~fpn_zoo.necks.chain.ChainedNeck`) is drawn as one
  subgraph per stage, each stage's outputs feeding the next stage's inputs.
* Any other neck is drawn as inputs -> one box (its kind and the scalar facts of its ``describe()``) ->
  outputs.

``describe()`` returns a frozen dataclass (:class:`~fpn_zoo.graph.GraphDescription`,
:class:`~fpn_zoo.necks.simple_pyramid.PyramidDescription`, ...); a plain mapping is read as well (a chain's
description with ``stages``, or a plugin's own).

Example:
    >>> import fpn_zoo
    >>> from fpn_zoo.diagram import mermaid
    >>> text = mermaid(fpn_zoo.create_neck("fpn", [16, 32], reductions=[8, 16], out_channels=8))
    >>> text.splitlines()[0]
    'flowchart LR'
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from .graph import GraphDescription, Node

__all__ = ["mermaid", "NODE_PREFIX"]

NODE_PREFIX = "n_"  # ids of fusion nodes: "<stage prefix>n_<node name>"

Level = Tuple[Optional[int], Optional[float]]  # (channels, stride), either may be unknown


def _fmt_stride(stride: Optional[float]) -> str:
    if stride is None:
        return ""
    return f"stride {int(stride)}" if float(stride).is_integer() else f"stride {stride:g}"


def _level_text(channels: Optional[int], stride: Optional[float]) -> str:
    parts = [f"{channels} ch" if channels is not None else "", _fmt_stride(stride)]
    return ", ".join(p for p in parts if p)


def _label(*lines: str) -> str:
    text = "<br/>".join(line for line in lines if line)
    return '"' + text.replace('"', "#quot;") + '"'


def _feature_levels(module: Optional[nn.Module]) -> Optional[List[Level]]:
    info = getattr(module, "feature_info", None)
    if info is None:
        return None
    try:
        return [(int(c), float(r)) for c, r in zip(info.channels(), info.reduction())]
    except Exception:  # a feature_info of another shape: no labels rather than no diagram
        return None


def _input_levels(module: Optional[nn.Module]) -> Optional[List[Level]]:
    spec = getattr(module, "spec", None)
    if spec is None or not hasattr(spec, "channels"):
        return None
    return [(int(c), float(r)) for c, r in zip(spec.channels, spec.reductions)]


def _as_description(desc: Any, module: Optional[nn.Module] = None) -> Any:
    """A :class:`GraphDescription` as is; any other dataclass or mapping as a dict (stages read the same way)."""
    if isinstance(desc, GraphDescription):
        return desc
    if dataclasses.is_dataclass(desc) and not isinstance(desc, type):
        if hasattr(desc, "stages"):  # shallow: each stage is read on its own
            desc = {f.name: getattr(desc, f.name) for f in dataclasses.fields(desc)}
        else:
            desc = dataclasses.asdict(desc)
    if isinstance(desc, Mapping):
        desc = dict(desc)
        if {"nodes", "num_levels", "outputs"} <= set(desc):  # the untyped form of a graph (fpn_zoo 0.1.0)
            return GraphDescription(
                topology=str(desc.get("topology", "")), num_levels=int(desc["num_levels"]),
                input_levels=int(desc.get("input_levels", desc["num_levels"])),
                nodes=tuple(n if isinstance(n, Node) else Node(str(n["name"]), int(n["level"]), tuple(n["inputs"]),
                                                             n.get("fusion", "sum"), bool(n.get("smooth", True)),
                                                             n.get("downsample", "pool")) for n in desc["nodes"]),
                outputs=tuple(int(i) for i in desc["outputs"]), out_channels=desc.get("out_channels"),
                extra_levels=int(desc.get("extra_levels") or 0), extra_op=desc.get("extra_op"),
                extra_source=str(desc.get("extra_source", "output")), extra_in_graph=bool(desc.get("extra_in_graph")),
            )
        return desc
    return {"kind": str(desc) if desc is not None else type(module).__name__}


def _describe(module: Optional[nn.Module]) -> Any:
    describe = getattr(module, "describe", None)
    if callable(describe):
        try:
            desc = describe()
        except Exception as e:  # the diagram says so rather than the docs failing
            return {"kind": type(module).__name__, "describe() failed": f"{type(e).__name__}: {e}"}
        return _as_description(desc, module)
    return {"kind": type(module).__name__} if module is not None else {}


def _stage_modules(module: Optional[nn.Module], count: int) -> List[Optional[nn.Module]]:
    """The stage modules of a composed neck: its direct children that are necks (have ``feature_info``)."""
    if module is not None:
        children = [m for m in module.children() if hasattr(m, "feature_info")]
        if len(children) == count:
            return children
    return [None] * count


class _Chart:
    """Accumulates the lines of one Mermaid flowchart."""

    def __init__(self) -> None:
        self.lines: List[str] = ["flowchart LR"]
        self.indent = "  "

    def node(self, node_id: str, label: str, shape: str = "box", cls: Optional[str] = None) -> str:
        opener, closer = {"box": ("[", "]"), "round": ("([", "])"), "hex": ("{{", "}}")}[shape]
        self.lines.append(f"{self.indent}{node_id}{opener}{label}{closer}" + (f":::{cls}" if cls else ""))
        return node_id

    def edge(self, src: str, dst: str, label: str = "") -> None:
        arrow = f" -->|{_label(label)}| " if label else " --> "
        self.lines.append(f"{self.indent}{src}{arrow}{dst}")

    def begin(self, sub_id: str, title: str) -> None:
        self.lines.append(f"{self.indent}subgraph {sub_id} [{_label(title)}]")
        self.indent += "  "

    def end(self) -> None:
        self.indent = self.indent[:-2]
        self.lines.append(f"{self.indent}end")

    def text(self) -> str:
        self.lines += [
            "  classDef input fill:#e8f0fe,stroke:#4a6fa5",
            "  classDef output fill:#e6f4ea,stroke:#3c8c5a",
            "  classDef extra fill:#fef7e0,stroke:#b08a2e",
        ]
        return "\n".join(self.lines) + "\n"


def _edge_text(edge: Optional[nn.Module], src_stride: Optional[float], dst_stride: Optional[float],
               src_level: int, dst_level: int, downsample: str) -> str:
    """What happens on one input edge: ``1x1``, ``up``, ``pool /2``, ``conv /2`` (joined with ', ')."""
    parts = []
    if edge is not None and not isinstance(getattr(edge, "proj", nn.Identity()), nn.Identity):
        parts.append("1x1")
    coarser = (src_stride > dst_stride) if src_stride is not None and dst_stride is not None else src_level > dst_level
    finer = (src_stride < dst_stride) if src_stride is not None and dst_stride is not None else src_level < dst_level
    if coarser:
        ratio = src_stride / dst_stride if src_stride and dst_stride else 0
        parts.append(f"up x{ratio:g}" if ratio else "up")
    elif finer:
        down = getattr(edge, "down", None)
        if down is not None:
            kind = "identity" if isinstance(down, nn.Identity) else "pool" if isinstance(down, (nn.MaxPool2d, nn.AvgPool2d)) else "conv"
        else:
            kind = downsample
        ratio = f" /{int(round(dst_stride / src_stride))}" if src_stride and dst_stride else ""
        parts.append("resize" if kind == "identity" else f"{kind}{ratio}")
    return ", ".join(parts)


def _smooth_text(block: Optional[nn.Module]) -> str:
    """``smooth: 2x ConvNormAct``, ``smooth: CSPBlock (separable)``: what runs after a fusion."""
    if block is None or isinstance(block, nn.Identity):
        return "smooth"
    if isinstance(block, nn.Sequential):
        kinds = [type(m).__name__ for m in block]
        text = f"{len(kinds)}x {kinds[0]}" if len(set(kinds)) == 1 and len(kinds) > 1 else " + ".join(kinds)
    else:
        text = type(block).__name__
    separable = any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in block.modules())
    return f"smooth: {text}" + (" (separable)" if separable else "")


def _draw_graph(chart: _Chart, desc: GraphDescription, module: Optional[nn.Module], prefix: str,
                inputs: Optional[List[Level]]) -> Tuple[List[str], List[str]]:
    """Draw a graph description; returns the ids of its input nodes and of its output nodes."""
    num_levels = desc.num_levels
    n_inputs = desc.input_levels
    nodes = desc.nodes
    outputs = list(desc.outputs)
    extras = getattr(module, "extras", None)
    extra_op = getattr(extras, "op", desc.extra_op or "extra")
    extra_in_graph = desc.extra_in_graph
    out_channels = desc.out_channels

    strides: List[Optional[float]] = [None] * num_levels
    channels: List[Optional[int]] = [None] * num_levels
    for level, (c, r) in enumerate((inputs or [])[:n_inputs]):
        channels[level], strides[level] = c, r
    for level in range(n_inputs, num_levels):
        prev = strides[level - 1] if level > 0 else None
        strides[level] = prev * 2 if prev is not None else None
        channels[level] = out_channels

    ids: List[str] = []
    for level in range(n_inputs):
        ids.append(chart.node(f"{prefix}in{level}", _label(f"input {level}", _level_text(channels[level], strides[level])),
                              "round", "input"))
    extra_proj = extras is not None and not isinstance(getattr(extras, "proj", nn.Identity()), nn.Identity)
    extra_text = {"conv": "3x3 conv /2"}.get(extra_op, f"{extra_op} /2")
    for level in range(n_inputs, num_levels):  # extra levels that are inputs of the graph (BiFPN)
        node_id = chart.node(f"{prefix}in{level}", _label(f"extra level {level}", _level_text(channels[level], strides[level])),
                             "round", "extra")
        chart.edge(ids[-1], node_id, ("1x1, " if extra_proj and level == n_inputs else "") + extra_text)
        ids.append(node_id)
    input_ids = ids[:n_inputs]

    built = getattr(module, "nodes", None)
    for k, node in enumerate(nodes):
        name, level = node.name, node.level
        fusion = node.fusion
        smooth = node.smooth
        n_in = len(node.inputs)
        fusion_module = built[name] if built is not None and name in built else None
        what = fusion if n_in > 1 else ("" if smooth else "copy")
        smooth_text = _smooth_text(getattr(fusion_module, "smooth", None)) if smooth else ""
        node_id = chart.node(f"{prefix}{NODE_PREFIX}{name}",
                             _label(name, what, smooth_text, _fmt_stride(strides[level])))
        edges = list(getattr(fusion_module, "edges", [])) if fusion_module is not None else []
        for j, src in enumerate(node.inputs):
            src_level = src if src < num_levels else nodes[src - num_levels].level
            edge = edges[j] if j < len(edges) else None
            chart.edge(ids[src], node_id, _edge_text(edge, strides[src_level], strides[level], src_level, level,
                                                     node.downsample))
        ids.append(node_id)

    out_levels = _feature_levels(module)
    out_ids: List[str] = []
    for k, src in enumerate(outputs):
        level = src if src < num_levels else nodes[src - num_levels].level
        ch, stride = out_levels[k] if out_levels and k < len(out_levels) else (out_channels, strides[level])
        out_ids.append(chart.node(f"{prefix}out{k}", _label(f"output {k}", _level_text(ch, stride)), "round", "output"))
        chart.edge(ids[src], out_ids[-1])
    n_extra = getattr(extras, "num_levels", 0) if extras is not None and not extra_in_graph else 0
    if n_extra:
        source = input_ids[-1] if desc.extra_source == "input" else out_ids[-1]
        for j in range(n_extra):
            k = len(outputs) + j
            ch, stride = out_levels[k] if out_levels and k < len(out_levels) else (out_channels, None)
            node_id = chart.node(f"{prefix}out{k}", _label(f"output {k} (extra)", _level_text(ch, stride)), "round", "output")
            chart.edge(source, node_id, ("1x1, " if extra_proj and j == 0 else "") + extra_text)
            out_ids.append(node_id)
            source = node_id
    return input_ids, out_ids


def _fact(key: str, value: Any) -> Optional[str]:
    """``key: value`` for a scalar, a short list or a flat dict; None for anything bigger."""
    if isinstance(value, (int, float, str, bool)):
        return f"{key}: {value}"
    if isinstance(value, (list, tuple)) and 0 < len(value) <= 6 and all(isinstance(x, (int, float, str)) for x in value):
        return f"{key}: {list(value)}"
    if isinstance(value, Mapping) and value and all(isinstance(x, (int, float, str, bool)) for x in value.values()):
        return f"{key}: " + ", ".join(f"{k}={v}" for k, v in value.items())
    return None


def _level_lines(level: Mapping[str, Any]) -> List[str]:
    lines = []
    for key, value in level.items():
        if key in ("reduction", "stride"):
            continue  # the output node shows it
        if isinstance(value, (list, tuple)):
            lines += [str(v) for v in value]
        else:
            lines.append(f"{key}: {value}")
    return lines


def _draw_box(chart: _Chart, desc: Mapping[str, Any], module: Optional[nn.Module], prefix: str,
              inputs: Optional[List[Level]]) -> Tuple[List[str], List[str]]:
    """Any other neck: inputs -> one box (kind and facts) -> outputs.

    When ``describe()`` has lists of per-level dicts that add up to the outputs (``levels`` then
    ``extra_levels``, as ``simple_pyramid`` gives), each output gets a node listing what makes it; extra
    levels hang off the previous output.
    """
    kind = str(desc.get("kind", type(module).__name__ if module is not None else "neck"))
    facts = [f for f in (_fact(k, v) for k, v in desc.items() if k != "kind") if f]
    box = chart.node(f"{prefix}neck", _label(kind, *facts[:6]), "hex")
    input_ids = []
    for level, (c, r) in enumerate(inputs or [(None, None)]):
        input_ids.append(chart.node(f"{prefix}in{level}", _label(f"input {level}", _level_text(c, r)), "round", "input"))
        chart.edge(input_ids[-1], box)
    outs = _feature_levels(module) or [(None, r) for r in (desc.get("reductions") or [])] or [(None, None)]
    dict_lists = {k: list(v) for k, v in desc.items()
                  if isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v)}
    extras = dict_lists.pop("extra_levels", [])
    levels = [x for v in dict_lists.values() for x in v]
    per_level = len(levels) + len(extras) == len(outs) and len(levels) > 0
    out_ids: List[str] = []
    for k, (c, r) in enumerate(outs):
        out_id = f"{prefix}out{k}"
        if per_level:
            is_extra = k >= len(levels)
            lines = _level_lines(extras[k - len(levels)] if is_extra else levels[k])
            step = chart.node(f"{prefix}level{k}", _label(*lines) if lines else _label(f"level {k}"))
            chart.edge(out_ids[-1] if is_extra and out_ids else box, step)
            chart.node(out_id, _label(f"output {k}" + (" (extra)" if is_extra else ""), _level_text(c, r)), "round", "output")
            chart.edge(step, out_id)
        else:
            chart.node(out_id, _label(f"output {k}", _level_text(c, r)), "round", "output")
            chart.edge(box, out_id)
        out_ids.append(out_id)
    return input_ids, out_ids


def _draw(chart: _Chart, desc: Any, module: Optional[nn.Module], prefix: str,
          inputs: Optional[List[Level]]) -> Tuple[List[str], List[str]]:
    if inputs is None:
        inputs = _input_levels(module)
    if isinstance(desc, GraphDescription):
        return _draw_graph(chart, desc, module, prefix, inputs)
    stages = desc.get("stages")
    if isinstance(stages, Sequence) and not isinstance(stages, str) and stages:
        modules = _stage_modules(module, len(stages))
        first_inputs: List[str] = []
        prev_outs: List[str] = []
        level_info = inputs
        for s, (stage_desc, stage_module) in enumerate(zip(stages, modules)):
            stage_desc = _as_description(stage_desc, stage_module)
            if isinstance(stage_desc, GraphDescription):
                title = f"stage {s + 1}: graph {stage_desc.topology}"
            else:
                title = f"stage {s + 1}: {stage_desc.get('kind') or type(stage_module).__name__}"
            chart.begin(f"{prefix}s{s}", title)
            ins, outs = _draw(chart, stage_desc, stage_module, f"{prefix}s{s}_", level_info)
            chart.end()
            for a, b in zip(prev_outs, ins):
                chart.edge(a, b)
            first_inputs = first_inputs or ins
            prev_outs = outs
            level_info = _feature_levels(stage_module)
        return first_inputs, prev_outs
    return _draw_box(chart, desc, module, prefix, inputs)


def mermaid(neck: nn.Module) -> str:
    """A Mermaid ``flowchart`` of the built ``neck`` (see the module docstring for what is drawn)."""
    chart = _Chart()
    desc = _describe(neck)
    _draw(chart, desc, neck, "", None)
    return chart.text()
