"""Every registered variant on each kind of timm backbone: shapes and strides agree with feature_info,
outputs are finite, every parameter gets a gradient, odd image sizes work."""
from __future__ import annotations

import math
import re

import pytest
import torch

import fpn_zoo
from conftest import BACKBONES, backbone, features

VARIANTS = fpn_zoo.list_necks()


def build_or_decline(name: str, kind: str):
    """Build ``name`` on backbone ``kind``; a variant that declines must say which variant fits instead."""
    try:
        return fpn_zoo.create_neck(name, backbone(kind))
    except fpn_zoo.BackboneMismatch as e:  # any other error is a failure, not a decline
        suggested = [w for w in re.findall(r"[A-Za-z0-9_]+", str(e)) if fpn_zoo.is_neck(w) and w != name]
        assert suggested, f"{name} declined {kind} without naming a variant that fits: {e}"
        pytest.skip(f"{name} declines {kind} (suggests {suggested[0]})")


def assert_matches_feature_info(neck, outs, height: int, width: int) -> None:
    info = neck.feature_info
    assert len(outs) == len(info) == len(info.channels())
    for level, (out, channels, reduction) in enumerate(zip(outs, info.channels(), info.reduction())):
        assert out.ndim == 4 and out.shape[0] == 2
        assert out.shape[1] == channels, f"level {level}: {out.shape[1]} channels, feature_info says {channels}"
        for size, full in zip(out.shape[-2:], (height, width)):
            assert math.floor(full / reduction) <= size <= max(1, math.ceil(full / reduction)), (
                f"level {level}: size {size} does not fit stride {reduction} of {full} px"
            )
        assert torch.isfinite(out).all(), f"level {level} has non-finite values"


@pytest.mark.parametrize("kind", sorted(BACKBONES))
@pytest.mark.parametrize("name", VARIANTS)
def test_forward_shapes_strides_and_gradients(name: str, kind: str) -> None:
    neck = build_or_decline(name, kind)
    neck.eval()
    with torch.no_grad():
        outs = neck(features(kind))
    assert_matches_feature_info(neck, outs, 64, 96)

    neck.train()
    outs = neck(features(kind))
    sum(o.float().mean() for o in outs).backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient (DDP find_unused_parameters=False would fail): {missing}"
    assert all(torch.isfinite(p.grad).all() for p in neck.parameters())


@pytest.mark.parametrize("kind", ["cnn", "nhwc"])
@pytest.mark.parametrize("name", VARIANTS)
def test_odd_image_size(name: str, kind: str) -> None:
    neck = build_or_decline(name, kind).eval()
    with torch.no_grad():
        outs = neck(features(kind, 65, 97))
    assert_matches_feature_info(neck, outs, 65, 97)


@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_every_backbone_kind_is_served(kind: str) -> None:
    served = []
    for name in VARIANTS:
        try:
            fpn_zoo.create_neck(name, backbone(kind))
            served.append(name)
        except fpn_zoo.BackboneMismatch:
            pass
    assert served, f"no variant accepts the {kind} backbone {BACKBONES[kind][0]}"
