"""effdet ``BiFpn`` weights -> the ``bifpn`` family (and ``graph`` necks such as ``qufpn``).

effdet (https://github.com/rwightman/efficientdet-pytorch) runs the same graph as our executor: node ``k``
of cell ``r`` resamples each input (1x1 conv + BN where channels differ, max-pool down, nearest up), fuses
with edge weights and runs ``act -> separable conv -> BN``. Only the names differ:

=======================================================  ===============================================
effdet ``BiFpn``                                         fpn_zoo (node ``k`` of cell ``r``: ``nodes[r*K + k]``)
=======================================================  ===============================================
``resample.{level}.conv.conv.*`` / ``.conv.bn.*``        ``extras.proj.conv.*`` / ``extras.proj.norm.*``
``cell.{r}.fnode.{k}.combine.resample.{i}.conv.conv.*``  ``nodes.{name}.edges.{j}.proj.conv.*`` (``j``: the
                                                         edge reading effdet's input ``i``)
``cell.{r}.fnode.{k}.combine.resample.{i}.conv.bn.*``    ``nodes.{name}.edges.{j}.proj.norm.*``
``cell.{r}.fnode.{k}.combine.edge_weights``              ``nodes.{name}.fuse.weight``
``cell.{r}.fnode.{k}.after_combine.conv.conv_dw/pw.*``   ``nodes.{name}.smooth.0.conv_dw/pw.*``
``cell.{r}.fnode.{k}.after_combine.conv.conv.*``         ``nodes.{name}.smooth.0.conv.*`` (not separable)
``cell.{r}.fnode.{k}.after_combine.conv.bn.*``           ``nodes.{name}.smooth.0.norm.*``
=======================================================  ===============================================

Build the matching neck first: ``efficientdet_d0`` is ``create_neck("bifpn", backbone)``, ``d1`` ..
``d7`` are ``bifpn_d1`` .. ``bifpn_d7``, ``efficientdet_q0`` is ``qufpn``. The TF-ported ``tf_*`` models
use 'same' padding, which our symmetric-padding convs and pools do not reproduce.

:func:`from_effdet_module` (also reached through :func:`fpn_zoo.convert.from_module`) reads the configuration
from a built ``BiFpn`` (input channels, width, cells, fusion, separable convs, norm, activation, extra levels)
and builds the ``bifpn`` neck itself; effdet's other graphs (``qufpn``) go through :func:`from_effdet_bifpn`
with a neck you build.

Example (needs ``pip install effdet``):
    >>> import fpn_zoo
    >>> from effdet import get_efficientdet_config  # doctest: +SKIP
    >>> from effdet.efficientdet import BiFpn  # doctest: +SKIP
    >>> from fpn_zoo.convert.effdet import from_effdet_bifpn
    >>> info = [dict(num_chs=c, reduction=r) for c, r in ((40, 8), (112, 16), (320, 32))]
    >>> theirs = BiFpn(get_efficientdet_config("efficientdet_d0"), [dict(d) for d in info])  # doctest: +SKIP
    >>> ours = fpn_zoo.create_neck("bifpn", info)
    >>> ours.load_state_dict(from_effdet_bifpn(theirs, ours))  # doctest: +SKIP
    <All keys matched successfully>
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .._features import FeatureSpec
from ..graph import GraphNeck
from ..necks.bifpn import bifpn
from .dispatch import load_exact, match_peer, register_converter

__all__ = ["from_effdet_bifpn", "from_effdet_module"]

_CELL = re.compile(r"^cell\.(\d+)\.fnode\.(\d+)\.(.+)$")
_EXTRA = re.compile(r"^resample\.(\d+)\.conv\.(conv|bn)\.(.+)$")
_EDGE = re.compile(r"^combine\.resample\.(\d+)\.conv\.(conv|bn)\.(.+)$")
_SMOOTH = re.compile(r"^after_combine\.conv\.(conv_dw|conv_pw|conv|bn)\.(.+)$")
_LAYER = {"conv": "conv", "bn": "norm", "conv_dw": "conv_dw", "conv_pw": "conv_pw"}


def _state_dict(source: Union[nn.Module, Mapping[str, torch.Tensor]]) -> Mapping[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, Mapping):
        return source
    raise TypeError(f"expected an effdet BiFpn (or EfficientDet) module or its state dict, got {type(source).__name__}")


def _guess_prefix(keys: List[str]) -> str:
    if any(k.startswith("cell.") for k in keys):
        return ""
    for k in keys:
        at = k.find("cell.0.fnode.")
        if at > 0:
            return k[:at]
    raise ValueError("no effdet BiFpn keys ('cell.<r>.fnode.<k>. ...') in the state dict")


def _cell_input(neck: GraphNeck, r: int, local: int, nodes_per_cell: int, num_cells: int) -> int:
    """Our id of what effdet's cell ``r`` calls input ``local`` (its levels are the previous cell's outputs)."""
    num_levels = neck.topology.num_levels
    if local >= num_levels:
        return num_levels + r * nodes_per_cell + local - num_levels
    if r == 0:
        return local
    out = neck.topology.outputs[local]  # the last cell's output; cell r - 1's is the same node, cells earlier
    return out - (num_cells - r) * nodes_per_cell if out >= num_levels else out


def from_effdet_bifpn(
    source: Union[nn.Module, Mapping[str, torch.Tensor]],
    neck: GraphNeck,
    *,
    prefix: Optional[str] = None,
) -> Dict[str, torch.Tensor]:
    """Rename an effdet ``BiFpn``'s weights for ``neck`` (a ``bifpn`` or ``graph`` neck of the same graph).

    Args:
        source: effdet's ``BiFpn`` module or state dict, or a whole ``EfficientDet``'s (keys under ``fpn.``).
        neck: the fpn_zoo neck to load into, built with the same levels, channels, cells and blocks.
        prefix: where the BiFpn's keys start in ``source``; None finds it.

    Returns:
        A state dict for ``neck.load_state_dict`` (every key of the neck, nothing else).

    Raises:
        ValueError: the two graphs differ (cell or node count, an input effdet reads that our node does
            not, a missing or extra weight, a shape mismatch), naming the key.
    """
    state = _state_dict(source)
    keys = list(state)
    prefix = _guess_prefix(keys) if prefix is None else prefix
    items: List[Tuple[str, torch.Tensor]] = [(k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix)]

    cells: Dict[int, int] = {}
    for key, _ in items:
        m = _CELL.match(key)
        if m:
            cells[int(m.group(1))] = max(cells.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    if not cells:
        raise ValueError("no effdet BiFpn keys ('cell.<r>.fnode.<k>. ...') in the state dict")
    num_cells = len(cells)
    nodes_per_cell = cells[0]
    names = list(neck.nodes.keys())
    if sorted(cells) != list(range(num_cells)) or set(cells.values()) != {nodes_per_cell} \
            or num_cells * nodes_per_cell != len(names):
        raise ValueError(
            f"effdet BiFpn has {num_cells} cell(s) of {nodes_per_cell} node(s); the neck has {len(names)} nodes "
            f"(topology {neck.topology.name!r}): build it with num_repeats={num_cells} and the same topology"
        )

    out: Dict[str, torch.Tensor] = {}
    extra_levels = sorted({int(m.group(1)) for m in (_EXTRA.match(k) for k, _ in items) if m})
    if len(extra_levels) > 1:
        raise ValueError(f"effdet projects the extra levels {extra_levels}; fpn_zoo projects only the first one")
    for key, value in items:
        new = _rename(key, neck, names, nodes_per_cell, num_cells)
        if new is None:
            raise ValueError(f"effdet key {prefix + key!r} is not part of a BiFpn this converter knows")
        out[new] = value

    target = neck.state_dict()
    missing = [k for k in target if k not in out]
    unexpected = [k for k in out if k not in target]
    if missing or unexpected:
        raise ValueError(
            f"the effdet weights do not fit neck topology {neck.topology.name!r}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            " (check out_channels, separable, norm, extra_levels and the backbone channels)"
        )
    for k, v in out.items():
        if v.shape != target[k].shape:
            raise ValueError(f"{k}: effdet has shape {tuple(v.shape)}, the neck {tuple(target[k].shape)}")
    return out


def _rename(key: str, neck: GraphNeck, names: List[str], nodes_per_cell: int, num_cells: int) -> Optional[str]:
    m = _EXTRA.match(key)
    if m:
        return f"extras.proj.{_LAYER[m.group(2)]}.{m.group(3)}"
    m = _CELL.match(key)
    if not m:
        return None
    r, k, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    name = names[r * nodes_per_cell + k]
    node = neck.nodes[name]
    if rest == "combine.edge_weights":
        return f"nodes.{name}.fuse.weight"
    e = _EDGE.match(rest)
    if e:
        ours = _cell_input(neck, r, int(e.group(1)), nodes_per_cell, num_cells)
        if ours not in node.inputs:
            raise ValueError(
                f"effdet cell {r} node {k} reads its input {e.group(1)} (our id {ours}), which our node {name!r} "
                f"does not read (it reads {list(node.inputs)}): the topologies differ"
            )
        return f"nodes.{name}.edges.{node.inputs.index(ours)}.proj.{_LAYER[e.group(2)]}.{e.group(3)}"
    s = _SMOOTH.match(rest)
    if s:
        return f"nodes.{name}.smooth.0.{_LAYER[s.group(1)]}.{s.group(2)}"
    return None


# ------------------------------------------------------------------------------- from the module itself

_OWNER = "effdet BiFpn"
_FUSIONS = {"fastattn": "fast_attn", "attn": "attn", "sum": "sum"}
_ACTS = {"SiLU": "silu", "Swish": "silu", "ReLU": "relu"}


@register_converter("BiFpn")
def from_effdet_module(peer: nn.Module, *, features: Any = None) -> GraphNeck:
    """The ``bifpn`` neck of a built effdet ``BiFpn``, configuration read from the module, weights loaded.

    Args:
        peer: effdet's ``BiFpn`` (an ``EfficientDet``'s ``fpn``), built with PyTorch padding (``pad_type=''``).
        features: the backbone levels (for the true strides); their channels must be the peer's inputs.
            Default: strides 8, 16, 32 ...

    Raises:
        ValueError: a configuration fpn_zoo's ``bifpn`` does not reproduce, naming the attribute.
    """
    cells = list(peer.cell)
    first = cells[0].fnode[0]
    num_inputs = peer.num_levels - len(peer.resample)
    knobs = _after_combine_knobs(first.after_combine)
    knobs["fusion"] = _fusion(cells)
    out_channels = _conv_out_channels(first.after_combine.conv)
    neck = bifpn(_spec(_input_channels(cells[0], num_inputs, out_channels), features), out_channels=out_channels,
                 num_repeats=len(cells), extra_levels=len(peer.resample), extra_op=_extra_op(peer),
                 extra_source="input", **knobs)
    load_exact(neck, from_effdet_bifpn(peer, neck, prefix=""), _OWNER)
    return match_peer(neck, peer)


def _after_combine_knobs(after: nn.Module) -> Dict[str, Any]:
    conv = after.conv
    separable = hasattr(conv, "conv_dw")
    for name in ("conv_dw", "conv_pw") if separable else ("conv",):
        layer = getattr(conv, name)
        if type(layer) is not nn.Conv2d:
            raise ValueError(f"{_OWNER}.cell.0.fnode.0.after_combine.conv.{name}: {type(layer).__name__} (pad_type "
                             "'same' of the tf_ models?) is not supported; only PyTorch padding converts")
    norm = getattr(conv, "bn", None)
    if type(norm) is not nn.BatchNorm2d:
        raise ValueError(f"{_OWNER}.cell.0.fnode.0.after_combine.conv.bn (norm_layer): {type(norm).__name__} is not "
                         "supported (BatchNorm2d)")
    act = getattr(after, "act", None)
    if act is None or type(act).__name__ not in _ACTS:
        raise ValueError(f"{_OWNER}.cell.0.fnode.0.after_combine.act (act_type): {type(act).__name__} is not "
                         f"supported ({', '.join(_ACTS)})")
    return {"separable": separable, "norm": "batchnorm", "norm_kwargs": {"eps": norm.eps, "momentum": norm.momentum},
            "act": _ACTS[type(act).__name__]}


def _conv_out_channels(conv: nn.Module) -> int:
    return (conv.conv_pw if hasattr(conv, "conv_pw") else conv.conv).out_channels


def _fusion(cells: List[nn.Module]) -> str:
    methods = {node.combine.weight_method for cell in cells for node in cell.fnode}
    if len(methods) != 1 or next(iter(methods)) not in _FUSIONS:
        raise ValueError(f"{_OWNER}.cell.*.fnode.*.combine.weight_method: {sorted(methods)} is not supported "
                         f"(one of {sorted(_FUSIONS)})")
    return _FUSIONS[methods.pop()]


def _input_channels(cell: nn.Module, num_inputs: int, width: int) -> List[int]:
    """Channels of the backbone levels, from the first cell's resampling convs (none where they equal ``width``)."""
    channels = [width] * num_inputs
    for node in cell.fnode:
        for offset, resample in node.combine.resample.items():
            conv = getattr(resample, "conv", None)
            if int(offset) < num_inputs and conv is not None:
                channels[int(offset)] = conv.conv.in_channels
    return channels


def _extra_op(peer: nn.Module) -> str:
    for level, resample in peer.resample.items():
        down = getattr(resample, "downsample", None)
        if type(down) is not nn.MaxPool2d or down.kernel_size != 3 or down.stride != 2 or down.padding != 1:
            raise ValueError(f"{_OWNER}.resample.{level}.downsample (downsample_type): {down!r} is not supported; "
                             "only 3x3 stride-2 max-pooling with PyTorch padding converts")
    return "maxpool"


def _spec(channels: List[int], features: Any) -> FeatureSpec:
    if features is None:
        return FeatureSpec(tuple(channels), tuple(8 * 2 ** i for i in range(len(channels))))
    spec = FeatureSpec.resolve(features)
    if list(spec.channels) != channels:
        raise ValueError(f"{_OWNER}: features have channels {list(spec.channels)}, but the peer takes {channels}")
    return spec
