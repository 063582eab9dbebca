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
"""
from __future__ import annotations

import re
from typing import Dict, Mapping

import torch

__all__ = ["from_mmdet_neck"]

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
