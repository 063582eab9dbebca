"""Every registered variant for the production tests (compile, export), and the subset the default run checks.

Each variant is built on the first conftest backbone kind it accepts: the CNN pyramid for most, the
single-stride ViT for the necks that only take one (``simple_pyramid*``).

Tracing (Dynamo, torch.export, the ONNX translation) costs time per module: seconds per cell of a repeated
neck on 2 cores, minutes for the whole registry. So the default ``pytest`` run checks each family's code
paths once: the variant with the fewest modules in each family, built with one cell (``num_repeats=1``)
when the family stacks cells. Every registered variant as registered carries the ``sweep`` marker and runs
with ``pytest -m sweep`` (``-m compile`` / ``-m export`` run both sets).
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pytest
import torch

import fpn_zoo
from conftest import backbone

# The order a variant's backbone is chosen in: the CNN pyramid first (what most users feed).
KINDS = ("cnn", "vit", "nhwc")
# The knob that stacks a family's repeated cell: BiFPN / NAS-FPN cells, DyHead blocks, FPG stages, deformable
# encoder layers (csp_pan's and the YOLO necks' num_blocks count bottlenecks inside one block: not a stack).
SHALLOW_KNOB = {"dyhead": "num_blocks", "fpg": "stack_times", "deformable_detr_encoder": "num_layers"}


def build(name: str, overrides: Optional[Mapping[str, Any]] = None) -> Tuple[torch.nn.Module, str]:
    """``(neck, kind)``: ``name`` built on the first backbone kind it accepts (fresh weights, seed 0)."""
    for kind in KINDS:
        torch.manual_seed(0)
        try:
            return fpn_zoo.create_neck(name, backbone(kind), **(overrides or {})), kind
        except fpn_zoo.BackboneMismatch:
            continue
    pytest.fail(f"{name} accepts none of the test backbones {KINDS}")


def shallow(name: str) -> Dict[str, int]:
    """The overrides that build ``name`` with one cell / block, or ``{}`` if it stacks none."""
    cfg = fpn_zoo.neck_cfg(name)
    key = SHALLOW_KNOB.get(cfg.family, "num_repeats")
    return {key: 1} if key in cfg.args else {}


def stacks_cells(name: str) -> bool:
    return bool(shallow(name))


@functools.lru_cache(maxsize=None)
def smallest_per_family() -> Dict[str, str]:
    """``{family: variant}``: the variant with the fewest modules (the least to trace) in each family."""
    best: Dict[str, Tuple[int, str]] = {}
    for name in fpn_zoo.list_necks():
        neck, _ = build(name, shallow(name) or None)
        size = (sum(1 for _ in neck.modules()), name)
        family = fpn_zoo.neck_cfg(name).family
        best[family] = min(best.get(family, size), size)
    return {family: name for family, (_, name) in sorted(best.items())}


def variant_params(*marks: pytest.MarkDecorator) -> List:
    """``(name, overrides)`` params, all with ``marks``: every variant as registered (also marked ``sweep``
    unless it is a default one), and each family's smallest variant (one cell if it stacks cells)."""
    default = set(smallest_per_family().values())
    params = []
    for name in fpn_zoo.list_necks():
        as_registered_is_default = name in default and not stacks_cells(name)
        params.append(pytest.param(name, {}, id=name,
                                   marks=marks if as_registered_is_default else (*marks, pytest.mark.sweep)))
        if name in default and stacks_cells(name):
            knob = next(iter(shallow(name)))
            params.append(pytest.param(name, shallow(name), id=f"{name}-{knob}=1", marks=marks))
    return params
