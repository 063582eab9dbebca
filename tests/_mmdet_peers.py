"""mmdet 3.3 neck classes for parity tests, each file loaded alone (``mmdet.models`` needs compiled mmcv ops).

Same stand-in package as :func:`_peers.mmdet_necks`; ``mmdet/models/layers/csp_layer.py`` loads the same
way for the necks that import ``..layers``.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

NECKS = "_fpn_zoo_mmdet_necks"


def mmdet_neck_class(module: str, class_name: str) -> type:
    """``mmdet/models/necks/<module>.py``'s ``class_name`` (skips the test when mmdet is missing)."""
    mmdet = pytest.importorskip("mmdet")
    if NECKS not in sys.modules:
        package = types.ModuleType(NECKS)
        package.__path__ = [str(Path(mmdet.__file__).parent / "models" / "necks")]
        sys.modules[NECKS] = package
    return getattr(importlib.import_module(f"{NECKS}.{module}"), class_name)

LAYERS = "_fpn_zoo_mmdet_layers"


def mmdet_layer_class(module: str, class_name: str) -> type:
    """``mmdet/models/layers/<module>.py``'s ``class_name``, loaded the same stand-in way."""
    mmdet = pytest.importorskip("mmdet")
    if LAYERS not in sys.modules:
        package = types.ModuleType(LAYERS)
        package.__path__ = [str(Path(mmdet.__file__).parent / "models" / "layers")]
        sys.modules[LAYERS] = package
    return getattr(importlib.import_module(f"{LAYERS}.{module}"), class_name)
