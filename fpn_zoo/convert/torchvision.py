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

Example:
    >>> import torch, torchvision, fpn_zoo
    >>> from fpn_zoo.convert.torchvision import from_torchvision_fpn
    >>> tv = torchvision.ops.FeaturePyramidNetwork([16, 32], 8)
    >>> neck = fpn_zoo.create_neck("fpn", [16, 32], out_channels=8)
    >>> neck.load_state_dict(from_torchvision_fpn(tv.state_dict()))
    <All keys matched successfully>
"""
from __future__ import annotations

import re
from typing import Dict, Mapping

import torch

__all__ = ["from_torchvision_fpn"]

_BLOCK = re.compile(r"^(inner_blocks|layer_blocks)\.(\d+)\.(?:([01])\.)?(.+)$")
_EXTRA = re.compile(r"^extra_blocks\.p(\d+)\.(weight|bias)$")


def from_torchvision_fpn(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> Dict[str, torch.Tensor]:
    """Rename a torchvision FPN state dict for an ``fpn`` neck with the same levels and norm.

    Args:
        state_dict: the FPN's state dict, or a whole detector's (then give ``prefix``, e.g.
            ``"backbone.fpn."`` for torchvision's Faster/Mask R-CNN and RetinaNet).
        prefix: keep only keys under this prefix, and strip it.

    Returns:
        A state dict for ``create_neck("fpn", ...)`` (``extra_levels=2, extra_op="conv"`` for RetinaNet's
        ``LastLevelP6P7``; its ``extra_source`` is ``"output"`` when the FPN's in and out channels of the
        coarsest level match, else ``"input"``, as torchvision decides).

    Raises:
        ValueError: a key that is not part of a torchvision FPN.
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
    return out
