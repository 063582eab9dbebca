"""mmdet ``FPN`` / ``PAFPN`` weights -> the ``fpn`` / ``pan`` families.

mmdet's necks (``mmdet/models/necks/fpn.py``, ``pafpn.py``) build every conv as an mmcv ``ConvModule``
(``.conv``, then ``.bn`` / ``.gn`` for the norm). Our ``pan`` reproduces ``PAFPN``'s math, ``fpn`` that of
``FPN``; this module renames the parameters:

==============================  ======================================
mmdet                           fpn_zoo
==============================  ======================================
``lateral_convs.{l}``           ``nodes.td{l}.edges.0.proj``
``fpn_convs.{l}`` (FPN)         ``nodes.out{l}.smooth.0``
``fpn_convs.{l}`` (PAFPN)       ``nodes.fpn{l}.smooth.0``
``downsample_convs.{l}``        ``nodes.bu{l+1}.edges.1.down``
``pafpn_convs.{l}``             ``nodes.out{l+1}.smooth.0``
==============================  ======================================

The neck must be built on exactly the levels mmdet used (``start_level`` .. ``end_level``), with the same
out_channels and norm. mmdet's extra *convs* (``add_extra_convs``) apply no activation between P6 and P7
by default, unlike RetinaNet's paper and torchvision, so they are refused rather than silently changed;
extra levels by max-pool have no weights and map to ``extra_levels=k, extra_op="subsample"``.

:func:`from_mmdet_fpn_module` (also reached through :func:`fpn_zoo.convert.from_module`) reads the whole
configuration from a built ``FPN`` / ``PAFPN`` (levels, channels, ``num_outs``, ``add_extra_convs``, norm and
activation of its ``ConvModule`` s) and returns the matching neck with the weights loaded. Through the module,
``add_extra_convs="on_input"`` / ``"on_output"`` with ``relu_before_extra_convs=True`` (FCOS's neck) convert:
that is exactly fpn_zoo's ``extra_op="conv"``. The other mmdet necks are :mod:`fpn_zoo.convert.mmdet_families`'
(:func:`from_mmdet_module`), registered for :func:`~fpn_zoo.convert.from_module` here.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

from .._features import FeatureSpec
from ..necks.fpn import fpn
from ..necks.pan import pan
from .dispatch import load_exact, match_peer, register_converter
from .mmdet_families import CONVERTERS as FAMILY_CONVERTERS
from .mmdet_families import conv_module_config, from_mmdet_module

__all__ = ["from_mmdet_neck", "from_mmdet_fpn_module"]

register_converter(*FAMILY_CONVERTERS)(from_mmdet_module)

_KEY = re.compile(r"^(lateral_convs|fpn_convs|downsample_convs|pafpn_convs)\.(\d+)\.(conv|bn|gn|ln)\.(.+)$")


def from_mmdet_neck(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> Dict[str, torch.Tensor]:
    """Rename an mmdet ``FPN`` or ``PAFPN`` state dict (``PAFPN`` when it has ``pafpn_convs``).

    Args:
        state_dict: the neck's state dict, or a whole detector's with ``prefix="neck."``.
        prefix: keep only keys under this prefix, and strip it.

    Raises:
        ValueError: keys that are not part of an mmdet FPN/PAFPN, or extra-level convs.
    """
    items = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not items:
        raise ValueError(f"no mmdet neck parameters found under prefix {prefix!r}")
    is_pafpn = any(k.startswith("pafpn_convs.") for k in items)
    num_levels = len({k.split(".")[1] for k in items if k.startswith("lateral_convs.")})
    out: Dict[str, torch.Tensor] = {}
    for key, value in items.items():
        match = _KEY.match(key)
        if match is None:
            raise ValueError(f"{prefix}{key!r} is not an mmdet FPN/PAFPN parameter")
        kind, index, layer, rest = match.groups()
        level = int(index)
        if kind == "fpn_convs" and level >= num_levels:
            raise ValueError(
                f"{prefix}{key!r} is an extra-level conv (add_extra_convs); mmdet applies no activation "
                "between its extra convs, which fpn_zoo's conv extra levels do, so it cannot be converted exactly"
            )
        base = {
            "lateral_convs": f"nodes.td{level}.edges.0.proj",
            "fpn_convs": f"nodes.fpn{level}.smooth.0" if is_pafpn else f"nodes.out{level}.smooth.0",
            "downsample_convs": f"nodes.bu{level + 1}.edges.1.down",
            "pafpn_convs": f"nodes.out{level + 1}.smooth.0",
        }[kind]
        out[f"{base}.{'conv' if layer == 'conv' else 'norm'}.{rest}"] = value
    return out


# ------------------------------------------------------------------------------- from the module itself


@register_converter("FPN", "PAFPN")
def from_mmdet_fpn_module(peer: nn.Module, *, features: Any = None) -> nn.Module:
    """The ``fpn`` (mmdet ``FPN``) or ``pan`` (``PAFPN``) neck of a built mmdet module, weights loaded.

    Args:
        peer: the built mmdet 3.3 ``FPN`` or ``PAFPN``.
        features: the backbone levels the peer runs on (for the true strides); their channels must be the
            peer's ``in_channels``. Default: strides 8, 16, 32 ...

    Raises:
        ValueError: a configuration fpn_zoo does not reproduce, naming the attribute (``start_level``,
            ``end_level``, ``upsample_cfg``, ``add_extra_convs``, ``relu_before_extra_convs``, a ConvModule's
            norm or activation ...).
    """
    owner = type(peer).__name__
    is_pafpn = owner == "PAFPN" or hasattr(peer, "pafpn_convs")
    levels = _check_levels(peer, owner)
    knobs = _conv_knobs(peer, owner, levels, is_pafpn)
    knobs.update(_extra_knobs(peer, owner, levels, knobs))
    spec = _spec(peer.in_channels, features, owner)
    neck = (pan if is_pafpn else fpn)(spec, out_channels=peer.out_channels, **knobs)
    state = peer.state_dict()
    extra_keys = {k: v for k, v in state.items() if _extra_conv_index(k, levels) is not None}
    renamed = from_mmdet_neck({k: v for k, v in state.items() if k not in extra_keys})
    for key, value in extra_keys.items():
        renamed[f"extras.convs.{_extra_conv_index(key, levels)}.conv.{key.split('.', 3)[3]}"] = value
    load_exact(neck, renamed, f"mmdet {owner}")
    return match_peer(neck, peer)


def _check_levels(peer: nn.Module, owner: str) -> int:
    """The number of backbone levels used; every input level must be (``start_level=0``, ``end_level=-1``)."""
    if peer.start_level != 0 or peer.backbone_end_level != peer.num_ins:
        raise ValueError(f"mmdet {owner}.start_level/end_level: only all input levels convert (start_level=0, "
                         f"end_level=-1), got start_level={peer.start_level}, backbone_end_level="
                         f"{peer.backbone_end_level} of {peer.num_ins} inputs; build the neck on the levels used")
    if dict(peer.upsample_cfg) != {"mode": "nearest"}:
        raise ValueError(f"mmdet {owner}.upsample_cfg: {dict(peer.upsample_cfg)} is not supported; fpn_zoo resizes "
                         "to the finer map's size by nearest (mmdet's default dict(mode='nearest'))")
    return peer.num_ins


def _conv_knobs(peer: nn.Module, owner: str, levels: int, is_pafpn: bool) -> Dict[str, Any]:
    """The one norm / act configuration of every ConvModule of the pyramid (extra convs are checked apart)."""
    groups = ["lateral_convs", "fpn_convs"] + (["downsample_convs", "pafpn_convs"] if is_pafpn else [])
    convs: List[Tuple[str, nn.Module]] = []
    for group in groups:
        modules = list(getattr(peer, group))
        count = levels - 1 if group in ("downsample_convs", "pafpn_convs") else levels
        convs += [(f"{group}.{i}", m) for i, m in enumerate(modules[:count])]
    configs = [(where, conv_module_config(m, f"mmdet {owner}.{where}")) for where, m in convs]
    first_where, first = configs[0]
    for where, config in configs[1:]:
        if config != first:
            hint = " (no_norm_on_lateral)" if where.startswith("lateral") or first_where.startswith("lateral") else ""
            raise ValueError(f"mmdet {owner}.{where}: norm/act {config} differ from {first_where}'s {first}{hint}; "
                             "fpn_zoo uses one norm and one activation throughout")
    return {k: v for k, v in first.items() if v or k in ("norm", "act")}


def _extra_knobs(peer: nn.Module, owner: str, levels: int, knobs: Dict[str, Any]) -> Dict[str, Any]:
    extra_levels = peer.num_outs - levels
    if extra_levels <= 0:
        return {}
    if not peer.add_extra_convs:
        return {"extra_levels": extra_levels, "extra_op": "subsample"}
    if peer.add_extra_convs not in ("on_input", "on_output"):
        raise ValueError(f"mmdet {owner}.add_extra_convs: {peer.add_extra_convs!r} is not supported "
                         "('on_input', 'on_output' or False)")
    if extra_levels > 1 and not peer.relu_before_extra_convs:
        raise ValueError(f"mmdet {owner}.relu_before_extra_convs: False, but fpn_zoo's conv extra levels apply a "
                         "ReLU between them (torchvision's and the RetinaNet paper's P6 -> ReLU -> P7), so this "
                         "cannot be converted exactly")
    for i, m in enumerate(list(peer.fpn_convs)[levels:]):
        config = conv_module_config(m, f"mmdet {owner}.fpn_convs.{levels + i}")
        if config["norm"] is not None or config["act"] is not None:
            raise ValueError(f"mmdet {owner}.fpn_convs.{levels + i}: extra convs with norm or activation "
                             f"({config['norm']!r}, {config['act']!r}) are not supported")
    if knobs.get("norm") is not None or knobs.get("act") is not None:
        raise ValueError(f"mmdet {owner}.add_extra_convs: extra convs next to a norm or activation are not supported")
    return {"extra_levels": extra_levels, "extra_op": "conv", "extra_source": peer.add_extra_convs[3:]}


def _extra_conv_index(key: str, levels: int) -> Any:
    """``k`` for the ``k``-th extra conv's key (``fpn_convs.{levels + k}.conv.*``), else None."""
    match = re.match(r"^fpn_convs\.(\d+)\.conv\.", key)
    if match and int(match.group(1)) >= levels:
        return int(match.group(1)) - levels
    return None


def _spec(channels: Any, features: Any, owner: str) -> FeatureSpec:
    channels = tuple(int(c) for c in channels)
    if features is None:
        return FeatureSpec(channels, tuple(8 * 2 ** i for i in range(len(channels))))
    spec = FeatureSpec.resolve(features)
    if spec.channels != channels:
        raise ValueError(f"mmdet {owner}: features have channels {list(spec.channels)}, but the peer takes "
                         f"{list(channels)}")
    return spec
