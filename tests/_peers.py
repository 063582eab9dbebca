"""Peer implementations for parity tests, loaded without their heavy package imports."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest


def mmdet_necks():
    """mmdet's ``necks`` folder as a stand-in package: importing ``mmdet.models`` pulls compiled mmcv ops
    that mmcv-lite lacks, but ``fpn.py`` and ``pafpn.py`` only need ``mmcv.cnn.ConvModule``."""
    mmdet = pytest.importorskip("mmdet")
    name = "_fpn_zoo_mmdet_necks"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(Path(mmdet.__file__).parent / "models" / "necks")]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.fpn"), importlib.import_module(f"{name}.pafpn")
