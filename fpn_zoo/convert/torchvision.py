"""torchvision ``FeaturePyramidNetwork`` weights -> the ``fpn`` family.

torchvision's FPN (``torchvision.ops.FeaturePyramidNetwork``, used by every torchvision detector) and our
``fpn`` family compute the same thing; only the parameter names differ:

================================  ==========================================
torchvision                       fpn_zoo
================================  ==========================================
``inner_blocks.{l}.0.*``          ``nodes.td{l}.edges.0.proj.conv.*``
``inner_blocks.{l}.1.*`` (norm)   ``nodes.td{l}.edges.0.proj.norm.*``
``layer_blocks.{l}.0.*``          ``nodes.out{l}.smooth.0.conv.*``
``layer_blocks.{l}.1.*`` (norm)   ``nodes.out{l}.smooth.0.norm.*``
``extra_blocks.p6/p7.*``          ``extras.convs.0/1.conv.*`` (``LastLevelP6P7``)
================================  ==========================================

Two entry points: :func:`from_torchvision_module` (also reached through :func:`fpn_zoo.convert.from_module`)
reads the configuration from a built ``FeaturePyramidNetwork`` (levels, channels, norm, extra block and where
its P6 comes from) and returns the matching neck with the weights loaded; :func:`from_torchvision_fpn`
renames a state dict (a detector checkpoint) for a neck you build, and checks it against that neck when given
one. A state dict cannot tell ``LastLevelMaxPool`` (no weights) from no extra block: only the module can.

Example:
    >>> import torch, torchvision, fpn_zoo
    >>> from fpn_zoo.convert.torchvision import from_torchvision_fpn
    >>> tv = torchvision.ops.FeaturePyramidNetwork([16, 32], 8)
    >>> neck = fpn_zoo.create_neck("fpn", [16, 32], out_channels=8)
    >>> neck.load_state_dict(from_torchvision_fpn(tv.state_dict(), neck=neck))
    <All keys matched successfully>
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from .._features import FeatureSpec
from ..necks.fpn import fpn
from .dispatch import load_exact, match_peer, register_converter

__all__ = ["from_torchvision_fpn", "from_torchvision_module", "p6p7_source"]

_BLOCK = re.compile(r"^(inner_blocks|layer_blocks)\.(\d+)\.(?:([01])\.)?(.+)$")
_EXTRA = re.compile(r"^extra_blocks\.p(\d+)\.(weight|bias)$")


def p6p7_source(p6_weight: torch.Tensor) -> str:
    """Where torchvision's ``LastLevelP6P7`` takes P6 from, as fpn_zoo's ``extra_source``.

    torchvision sets ``use_P5 = in_channels == out_channels``: P6 from the coarsest output (P5) when its conv
    is square in channels, else from the coarsest input (C5).
    """
    return "output" if p6_weight.shape[0] == p6_weight.shape[1] else "input"


def from_torchvision_fpn(state_dict: Mapping[str, torch.Tensor], prefix: str = "",
                         neck: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """Rename a torchvision FPN state dict for an ``fpn`` neck with the same levels and norm.

    Args:
        state_dict: the FPN's state dict, or a whole detector's (then give ``prefix``, e.g.
            ``"backbone.fpn."`` for torchvision's Faster/Mask R-CNN and RetinaNet).
        prefix: keep only keys under this prefix, and strip it.
        neck: the neck the result is for; when given, it is checked to take exactly these tensors (same
            keys and shapes) and, with ``LastLevelP6P7`` weights, to make P6 from the same source.

    Returns:
        A state dict for ``create_neck("fpn", ...)`` (``extra_levels=2, extra_op="conv"`` for RetinaNet's
        ``LastLevelP6P7``; its ``extra_source`` is ``"output"`` when the FPN's in and out channels of the
        coarsest level match, else ``"input"``, as torchvision decides).

    Raises:
        ValueError: a key that is not part of a torchvision FPN; with ``neck``, a tensor without a counterpart,
            a shape mismatch, or P6 made from the other source (naming ``extra_source``).
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        block = _BLOCK.match(key)
        extra = _EXTRA.match(key)
        if block:
            kind, level, index, rest = block.groups()
            layer = "norm" if index == "1" else "conv"
            base = f"nodes.td{level}.edges.0.proj" if kind == "inner_blocks" else f"nodes.out{level}.smooth.0"
            out[f"{base}.{layer}.{rest}"] = value
        elif extra:
            out[f"extras.convs.{int(extra.group(1)) - 6}.conv.{extra.group(2)}"] = value
        else:
            raise ValueError(f"{prefix}{key!r} is not a torchvision FeaturePyramidNetwork parameter")
    if not out:
        raise ValueError(f"no torchvision FPN parameters found under prefix {prefix!r}")
    if neck is not None:
        _check_target(out, neck)
    return out


def _check_target(state: Dict[str, torch.Tensor], neck: nn.Module) -> None:
    """``neck`` takes exactly ``state`` and makes P6 where torchvision's ``LastLevelP6P7`` does."""
    p6 = state.get("extras.convs.0.conv.weight")
    if p6 is not None:
        source = p6p7_source(p6)
        built = getattr(neck, "extra_source", None)
        if built != source:
            raise ValueError(
                f"extra_source: torchvision's LastLevelP6P7 here makes P6 from the coarsest "
                f"{'output (P5)' if source == 'output' else 'input (C5)'} (p6 takes {p6.shape[1]} channels, "
                f"makes {p6.shape[0]}), but the neck was built with extra_source={built!r}: build it with "
                f"extra_source={source!r}, or use fpn_zoo.convert.from_module on the FeaturePyramidNetwork")
    expected = neck.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"the torchvision FPN weights do not fit the neck: neck tensors with no torchvision "
                         f"tensor {missing}, torchvision tensors with no neck tensor {unexpected} (check the "
                         "levels, norm and extra levels)")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{key}: torchvision has shape {tuple(value.shape)}, the neck "
                             f"{tuple(expected[key].shape)} (check the channels)")


# ------------------------------------------------------------------------------- from the module itself

_OWNER = "torchvision FeaturePyramidNetwork"


def _norm_knobs(norm: nn.Module, where: str) -> Tuple[str, Dict[str, Any]]:
    if type(norm) is nn.BatchNorm2d:
        if not (norm.affine and norm.track_running_stats):
            raise ValueError(f"{_OWNER}.{where}: a BatchNorm2d without affine weights or running stats is not "
                             "supported")
        return "batchnorm", {"eps": norm.eps, "momentum": norm.momentum}
    if type(norm) is nn.GroupNorm and norm.affine:
        return "groupnorm", {"num_groups": norm.num_groups, "eps": norm.eps}
    raise ValueError(f"{_OWNER}.{where} (norm_layer): {type(norm).__name__} has no fpn_zoo equivalent "
                     "(BatchNorm2d, affine GroupNorm)")


def _block_config(block: nn.Module, where: str, kernel: int) -> Tuple[int, int, Optional[nn.Module]]:
    """(in, out channels, norm or None) of a ``Conv2dNormActivation``, checked to be conv [+ norm]."""
    layers = list(block.children())
    conv = layers[0] if layers else None
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (kernel, kernel) or conv.stride != (1, 1) \
            or conv.padding != (kernel // 2, kernel // 2) or conv.dilation != (1, 1) or conv.groups != 1:
        raise ValueError(f"{_OWNER}.{where}.0: expected a {kernel}x{kernel} stride-1 'same' conv, got {conv!r}")
    if len(layers) > 2:
        raise ValueError(f"{_OWNER}.{where}: {type(layers[2]).__name__} after the norm is not supported "
                         "(torchvision's FPN has no activation)")
    norm = layers[1] if len(layers) == 2 else None
    if (conv.bias is not None) != (norm is None):
        raise ValueError(f"{_OWNER}.{where}.0.bias: fpn_zoo's convs have a bias exactly when there is no norm")
    return conv.in_channels, conv.out_channels, norm


def _shared_norm(blocks: Any) -> Dict[str, Any]:
    """The norm knobs every block shares (torchvision builds all with one ``norm_layer``)."""
    configs = [(where, None if norm is None else _norm_knobs(norm, f"{where}.1")) for where, (_, _, norm) in blocks]
    first_where, first = configs[0]
    for where, config in configs[1:]:
        if config != first:
            raise ValueError(f"{_OWNER}.{where}.1 (norm_layer): {config} differs from {first_where}'s {first}")
    return {"norm": None} if first is None else {"norm": first[0], "norm_kwargs": first[1]}


def _extra_knobs(extra: Optional[nn.Module], coarsest_in: int, out_channels: int, norm: Optional[str]) -> Dict[str, Any]:
    if extra is None:
        return {}
    kind = type(extra).__name__
    if kind == "LastLevelMaxPool":
        return {"extra_levels": 1, "extra_op": "subsample"}
    if kind != "LastLevelP6P7":
        raise ValueError(f"{_OWNER}.extra_blocks: {kind} is not supported (LastLevelMaxPool, LastLevelP6P7)")
    if norm is not None:
        raise ValueError(f"{_OWNER}.extra_blocks: LastLevelP6P7's convs have no norm, but next to norm_layer "
                         f"({norm}) fpn_zoo's conv extra levels get one: not convertible exactly")
    p6, p7 = extra.p6, extra.p7
    source = "output" if extra.use_P5 else "input"
    source_channels = out_channels if extra.use_P5 else coarsest_in
    if p6.in_channels != source_channels or p6.out_channels != out_channels or p7.in_channels != out_channels \
            or p7.out_channels != out_channels:
        raise ValueError(f"{_OWNER}.extra_blocks: LastLevelP6P7({p6.in_channels}, {p6.out_channels}) with "
                         f"use_P5={extra.use_P5} does not fit an FPN of {out_channels} channels on a coarsest "
                         f"input of {coarsest_in}: fpn_zoo's P6/P7 have the FPN's width")
    return {"extra_levels": 2, "extra_op": "conv", "extra_source": source}


@register_converter("FeaturePyramidNetwork")
def from_torchvision_module(peer: nn.Module, *, features: Any = None) -> nn.Module:
    """The ``fpn`` neck of a torchvision ``FeaturePyramidNetwork``, configuration and weights read from it.

    Args:
        peer: the built ``torchvision.ops.FeaturePyramidNetwork`` (a detector's ``backbone.fpn``).
        features: the backbone levels (for the true strides); their channels must be the peer's.

    Raises:
        ValueError: a configuration fpn_zoo's ``fpn`` does not reproduce, naming the attribute.
    """
    laterals = [_block_config(b, f"inner_blocks.{i}", 1) for i, b in enumerate(peer.inner_blocks)]
    smooths = [_block_config(b, f"layer_blocks.{i}", 3) for i, b in enumerate(peer.layer_blocks)]
    blocks = [(f"inner_blocks.{i}", b) for i, b in enumerate(laterals)]
    blocks += [(f"layer_blocks.{i}", b) for i, b in enumerate(smooths)]
    out_channels = laterals[0][1]
    knobs = _shared_norm(blocks)
    for where, (_, out, _) in blocks:
        if out != out_channels:
            raise ValueError(f"{_OWNER}.{where}.0.out_channels: {out}, but the FPN's width is {out_channels}")
    channels = [c for c, _, _ in laterals]
    knobs.update(_extra_knobs(peer.extra_blocks, channels[-1], out_channels, knobs["norm"]))
    spec = _spec(channels, features)
    neck = fpn(spec, out_channels=out_channels, act=None, **knobs)
    load_exact(neck, from_torchvision_fpn(peer.state_dict()), _OWNER)
    return match_peer(neck, peer)


def _spec(channels: Any, features: Any) -> FeatureSpec:
    channels = tuple(int(c) for c in channels)
    if features is None:
        return FeatureSpec(channels, tuple(8 * 2 ** i for i in range(len(channels))))
    spec = FeatureSpec.resolve(features)
    if spec.channels != channels:
        raise ValueError(f"{_OWNER}: features have channels {list(spec.channels)}, but the peer takes "
                         f"{list(channels)}")
    return spec
