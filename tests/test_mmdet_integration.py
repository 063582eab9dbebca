"""fpn_zoo necks named in mmdetection configs (``fpn_zoo.integrations.mmdet``), tested at the neck level.

mmdet's first ``MODELS.build`` imports ``mmdet.models``, which needs compiled mmcv ops that mmcv-lite (the
only mmcv installable here) lacks; the fixture marks the registry's locations as imported for the test
(mmengine's ``Registry._imported``), which a full mmdet install does not need.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("mmdet")
pytest.importorskip("mmengine")

import fpn_zoo  # noqa: E402

IN_CHANNELS = [16, 24, 40, 64]
SIZES = [(41, 53), (21, 27), (11, 14), (6, 7)]  # odd map sizes, as a 161 x 209 image gives


@pytest.fixture()
def models():
    from mmengine.utils import import_modules_from_strings

    import_modules_from_strings(["fpn_zoo.integrations.mmdet"])  # what custom_imports in a config does
    from mmdet.registry import MODELS

    was = MODELS._imported
    MODELS._imported = True
    try:
        yield MODELS
    finally:
        MODELS._imported = was


def _inputs():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, c, h, w, generator=g) for c, (h, w) in zip(IN_CHANNELS, SIZES))


@pytest.mark.parametrize("name, extra", [
    ("pan", {}),
    ("fpn_p6p7", {"start_level": 1}),  # mmdet RetinaNet's layout: C3-C5 in, P3-P7 out
    ("bifpn", {"start_level": 1}),
])
def test_registry_build_matches_create_neck(models, name, extra):
    cfg = dict(type="FpnZooNeck", name=name, in_channels=IN_CHANNELS, out_channels=32, **extra)
    neck = models.build(cfg)
    assert type(neck).__name__ == "FpnZooNeck"
    neck.init_weights()  # mmengine's BaseModule hook runs and keeps the neck's own initialisation

    start = extra.get("start_level", 0)
    strides = [4, 8, 16, 32][start:]
    ours = fpn_zoo.create_neck(name, IN_CHANNELS[start:], reductions=strides, out_channels=32)
    ours.load_state_dict(neck.neck.state_dict())
    neck.eval(), ours.eval()
    x = _inputs()
    with torch.no_grad():
        got = neck(x)
        want = ours(list(x[start:]))
    assert isinstance(got, tuple) and len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert neck.out_channels == [32] * len(want)
    if name == "fpn_p6p7":
        assert neck.strides == [8, 16, 32, 64, 128]


# The layouts tried in turn for a variant: a ResNet's C2-C5, then what the variants that decline it take.
LAYOUTS = {
    "C2-C5": {},
    "C3-C5": {"start_level": 1},  # a graph written for 5 levels (nasfpn, qufpn): 3 maps + P6, P7
    "one width": {"in_channels": [32] * 4},  # after an FPN (bfp), as Libra R-CNN's neck=[FPN, BFP]
    "one map": {"start_level": 3},  # C5 alone (centernet_neck, yolof_dilated_encoder) or a ViT's (simple_pyramid*)
}


@pytest.mark.parametrize("name", fpn_zoo.list_necks())
def test_any_variant_builds_and_runs_in_a_config(models, name):
    """Every registered variant as an mmdet neck: built from a config on a ResNet's C2-C5 (tiny widths, odd
    sizes), or declined with a BackboneMismatch naming the variant, then built on a layout it takes; it runs and
    matches create_neck with the same weights."""
    takes_width = "out_channels" in fpn_zoo._registry.family_args(fpn_zoo.neck_cfg(name).family)
    width = {"out_channels": 32} if takes_width else {}
    for layout, change in LAYOUTS.items():
        cfg = dict(type="FpnZooNeck", name=name, **{"in_channels": IN_CHANNELS, **width, **change})
        try:
            torch.manual_seed(0)
            neck = models.build(cfg)
        except fpn_zoo.BackboneMismatch as e:
            assert f"name={name!r}" in str(e) and "start_level" in str(e), e
            continue
        break
    else:
        pytest.fail(f"{name} builds on none of the layouts {list(LAYOUTS)}")
    in_channels, start = cfg["in_channels"], cfg.get("start_level", 0)
    strides = cfg.get("strides", [4, 8, 16, 32])
    ours = fpn_zoo.create_neck(name, fpn_zoo.FeatureSpec(tuple(in_channels[start:]), tuple(strides[start:])), **width)
    ours.load_state_dict(neck.neck.state_dict())
    neck.eval(), ours.eval()
    g = torch.Generator().manual_seed(0)
    x = tuple(torch.randn(1, c, h, w, generator=g) for c, (h, w) in zip(in_channels, SIZES))
    with torch.no_grad():
        got, want = neck(x), ours(list(x[start:]))
    assert isinstance(got, tuple) and len(got) == len(want) == len(neck.out_channels) == len(neck.strides), layout
    assert [o.shape[1] for o in got] == neck.out_channels
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_strides_input_fmt_and_overrides(models):
    neck = models.build(dict(type="FpnZooNeck", name="fpn", in_channels=[8, 16], strides=[14, 28],
                             out_channels=16, norm="batchnorm"))
    assert neck.strides == [14, 28]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in neck.modules())
    nhwc = models.build(dict(type="FpnZooNeck", name="fpn", in_channels=[8, 16], input_fmt="NHWC", out_channels=16))
    out = nhwc((torch.rand(1, 12, 12, 8), torch.rand(1, 6, 6, 16)))
    assert [tuple(o.shape) for o in out] == [(1, 16, 12, 12), (1, 16, 6, 6)]


def test_bad_config_is_named(models):
    with pytest.raises(ValueError, match="did you mean 'pan'"):
        models.build(dict(type="FpnZooNeck", name="pann", in_channels=IN_CHANNELS))
    with pytest.raises(ValueError, match="out_chanels.*did you mean 'out_channels'"):
        models.build(dict(type="FpnZooNeck", name="pan", in_channels=IN_CHANNELS, out_chanels=8))
    with pytest.raises(ValueError, match="strides"):
        models.build(dict(type="FpnZooNeck", name="pan", in_channels=IN_CHANNELS, strides=[8, 16]))
    with pytest.raises(ValueError, match="start_level"):
        models.build(dict(type="FpnZooNeck", name="pan", in_channels=IN_CHANNELS, start_level=4))
    neck = models.build(dict(type="FpnZooNeck", name="pan", in_channels=IN_CHANNELS, out_channels=8))
    with pytest.raises(ValueError, match="expected 4 maps"):
        neck(_inputs()[:3])
