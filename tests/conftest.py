"""Shared fixtures: tiny timm backbones (timm's own ``test_*`` models, no weights) and their features."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import timm
import torch

# The repository's tooling (tools/: docs generator, sweep) is not installed; tests import it from the checkout.
# Appended, not prepended: an installed fpn_zoo stays the one under test.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.append(ROOT)

torch.set_num_threads(1)  # tiny tensors gain nothing from threads, and lose a lot on a loaded machine

# One of each shape a timm backbone comes in: a CNN pyramid, an NHWC model, a single-stride ViT.
BACKBONES = {
    "cnn": ("test_efficientnet", dict(out_indices=(2, 3, 4))),
    "nhwc": ("test_mambaout", {}),
    "vit": ("test_vit", {}),
}


@functools.lru_cache(maxsize=None)
def backbone(kind: str) -> torch.nn.Module:
    name, kwargs = BACKBONES[kind]
    torch.manual_seed(0)
    return timm.create_model(name, features_only=True, pretrained=False, **kwargs).eval()


@functools.lru_cache(maxsize=None)
def _features(kind: str, height: int, width: int):
    torch.manual_seed(0)
    with torch.no_grad():
        return tuple(backbone(kind)(torch.randn(2, 3, height, width)))


def features(kind: str, height: int = 64, width: int = 96):
    """Backbone maps for a batch of two images (fresh leaf tensors each call)."""
    return [f.clone() for f in _features(kind, height, width)]


@pytest.fixture(params=sorted(BACKBONES))
def backbone_kind(request) -> str:
    return request.param
