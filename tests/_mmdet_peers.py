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

MODELS_PACKAGE = "_fpn_zoo_mmdet_models"  # stands in for mmdet.models, so ``from ..layers import`` resolves


def _stand_in(name: str, folder: Path) -> types.ModuleType:
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    return sys.modules[name]


def _models_package() -> Path:
    mmdet = pytest.importorskip("mmdet")
    models = Path(mmdet.__file__).parent / "models"
    _stand_in(MODELS_PACKAGE, models)
    return models


def mmdet_layer_class(module: str, class_name: str) -> type:
    """``mmdet/models/layers/<module>.py``'s ``class_name``, loaded the same stand-in way."""
    _stand_in(f"{MODELS_PACKAGE}.layers", _models_package() / "layers")
    return getattr(importlib.import_module(f"{MODELS_PACKAGE}.layers.{module}"), class_name)


def mmdet_csp_neck_class(module: str, class_name: str) -> type:
    """A neck importing ``..layers.CSPLayer`` (``yolox_pafpn``, ``cspnext_pafpn``): the stand-in layers package
    gets ``CSPLayer`` from ``csp_layer.py`` alone (mmdet's ``layers/__init__`` needs compiled ops)."""
    layers = _stand_in(f"{MODELS_PACKAGE}.layers", _models_package() / "layers")
    layers.CSPLayer = mmdet_layer_class("csp_layer", "CSPLayer")
    _stand_in(f"{MODELS_PACKAGE}.necks", _models_package() / "necks")
    return getattr(importlib.import_module(f"{MODELS_PACKAGE}.necks.{module}"), class_name)
