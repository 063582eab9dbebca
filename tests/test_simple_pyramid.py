"""ViTDet's simple pyramid on single-stride backbones (ViT at 16, EVA at 14, XCiT at 8, ConvMixer at 7), and
neck composition (``then=``): a ViT with an FPN / PAN / BiFPN on top."""
from __future__ import annotations

import functools
import math

import pytest
import timm
import torch

import fpn_zoo
from fpn_zoo import FeatureSpec
from fpn_zoo.necks.chain import ChainedNeck
from fpn_zoo.necks.simple_pyramid import pyramid_steps

VIT = "vit_tiny_patch16_224"


@functools.lru_cache(maxsize=None)
def vit(last_only: bool = True, dynamic: bool = False) -> torch.nn.Module:
    """A tiny timm ViT (no weights) at 64 px; ``dynamic`` takes any image size (padded to the patch)."""
    torch.manual_seed(0)
    kwargs = dict(dynamic_img_size=True, dynamic_img_pad=True) if dynamic else {}
    if last_only:
        kwargs["out_indices"] = (-1,)
    return timm.create_model(VIT, features_only=True, pretrained=False, img_size=64, **kwargs).eval()


def vit_features(height: int = 64, width: int = 64, **kwargs):
    torch.manual_seed(0)
    with torch.no_grad():
        return [f.clone() for f in vit(**kwargs)(torch.randn(2, 3, height, width))]


def expected_size(size: int, step: int) -> int:
    """A transposed conv doubles a map; a max-pool halves it, rounding up."""
    for _ in range(abs(step)):
        size = size * 2 if step > 0 else math.ceil(size / 2)
    return size


def assert_pyramid(neck, outs, map_size, stride) -> None:
    """Every output has feature_info's channels, a stride of ``stride * 2**k``, and the size that gives."""
    info = neck.feature_info
    assert len(outs) == len(info)
    for out, channels, reduction in zip(outs, info.channels(), info.reduction()):
        step = math.log2(stride / reduction)
        assert step == round(step), f"stride {reduction} is not {stride} times a power of two"
        assert out.shape[1] == channels
        assert tuple(out.shape[-2:]) == tuple(expected_size(s, int(round(step))) for s in map_size)
        assert torch.isfinite(out).all()


def assert_all_grads(neck, outs) -> None:
    sum(o.float().square().mean() for o in outs).backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


# ------------------------------------------------------------------------------------------- the pyramid


def test_vit_pyramid_shapes_strides_and_gradients() -> None:
    neck = fpn_zoo.create_neck("simple_pyramid", vit(), out_channels=32)
    assert neck.feature_info.reduction() == [4, 8, 16, 32]
    assert neck.feature_info.channels() == [32] * 4
    neck.train()
    feats = vit_features()
    outs = neck(feats)
    assert_pyramid(neck, outs, feats[-1].shape[-2:], 16)
    assert_all_grads(neck, outs)


@pytest.mark.parametrize("stride, expected", [(14, [3.5, 7, 14, 28]), (16, [4, 8, 16, 32])])
def test_true_reductions_follow_the_backbone_stride(stride, expected) -> None:
    neck = fpn_zoo.create_neck("simple_pyramid", FeatureSpec((48,), (stride,)), out_channels=16)
    assert neck.feature_info.reduction() == expected


@pytest.mark.parametrize("stride", [16, 14, 8, 7])
@pytest.mark.parametrize("map_size", [(16, 16), (13, 13), (13, 9)])
def test_single_stride_backbones_and_odd_maps(stride: int, map_size) -> None:
    """EVA (14), XCiT (8), ConvMixer (7): strides snap to the nearest stride * 2**k; sizes are exact."""
    neck = fpn_zoo.create_neck("simple_pyramid", FeatureSpec((24,), (stride,)), out_channels=16)
    for want, got in zip((4, 8, 16, 32), neck.feature_info.reduction()):
        assert want / math.sqrt(2) <= got <= want * math.sqrt(2)
    with torch.no_grad():
        outs = neck.eval()([torch.randn(1, 24, *map_size)])
    assert_pyramid(neck, outs, map_size, stride)


def test_odd_image_size_through_a_real_vit() -> None:
    feats = vit_features(200, 100, dynamic=True)
    assert tuple(feats[-1].shape[-2:]) == (13, 7)
    neck = fpn_zoo.create_neck("simple_pyramid", vit(dynamic=True), out_channels=16).eval()
    with torch.no_grad():
        outs = neck(feats)
    assert_pyramid(neck, outs, (13, 7), 16)
    assert tuple(outs[-1].shape[-2:]) == (7, 4)  # 200 / 32 = 6.25 -> 7, rounded up like the other necks


def test_several_maps_at_one_stride_use_the_last() -> None:
    backbone = vit(last_only=False)
    assert len(set(backbone.feature_info.reduction())) == 1 and len(backbone.feature_info) > 1
    neck = fpn_zoo.create_neck("simple_pyramid", backbone, out_channels=16).eval()
    feats = vit_features(last_only=False)
    with torch.no_grad():
        outs = neck(feats)
        changed = neck([torch.randn_like(f) for f in feats[:-1]] + [feats[-1]])
    assert all(torch.equal(a, b) for a, b in zip(outs, changed))
    assert neck.describe().input.uses == "last"


def test_multi_stride_backbone_is_declined_naming_a_fitting_variant(backbone_kind) -> None:
    from conftest import backbone

    model = backbone(backbone_kind)
    if len(set(model.feature_info.reduction())) == 1:
        fpn_zoo.create_neck("simple_pyramid", model, out_channels=16)
        return
    with pytest.raises(ValueError, match=r"'fpn' or 'pan'.*out_indices=\(-1,\)"):
        fpn_zoo.create_neck("simple_pyramid", model)


def test_nhwc_input() -> None:
    neck = fpn_zoo.create_neck("simple_pyramid", FeatureSpec((24,), (16,), "NHWC"), out_channels=16).eval()
    x = torch.randn(1, 5, 7, 24)
    with torch.no_grad():
        outs = neck([x])
        ref = fpn_zoo.create_neck("simple_pyramid", FeatureSpec((24,), (16,)), out_channels=16).eval()
        ref.load_state_dict(neck.state_dict())
        expected = ref([x.permute(0, 3, 1, 2)])
    assert all(torch.allclose(a, b) for a, b in zip(outs, expected))


def test_vitdet_layers() -> None:
    """Two transposed convs with norm + act between for 1/4, one for 1/8, none for 1/16, a pool for 1/32."""
    neck = fpn_zoo.create_neck("simple_pyramid", FeatureSpec((64,), (16,)), out_channels=32)
    kinds = [[type(m).__name__ for m in level.resample.children()] for level in neck.levels]
    assert kinds == [["ConvTranspose2d", "LayerNorm2d", "GELU", "ConvTranspose2d"], ["ConvTranspose2d"], [],
                     ["MaxPool2d"]]
    assert [level.lateral.conv.in_channels for level in neck.levels] == [16, 32, 64, 64]  # channels halve going up
    described = neck.describe()
    assert described.kind == "simple_pyramid"
    assert [lvl.reduction for lvl in described.levels] == neck.feature_info.reduction()


def test_scales_and_out_strides_agree() -> None:
    assert pyramid_steps(16, scales=(4, 2, 1, 0.5)) == pyramid_steps(16) == [2, 1, 0, -1]
    neck = fpn_zoo.create_neck("simple_pyramid", FeatureSpec((24,), (16,)), out_channels=8, scales=[2, 1, 0.5])
    assert neck.feature_info.reduction() == [8, 16, 32]


def test_extra_levels() -> None:
    neck = fpn_zoo.create_neck("simple_pyramid", FeatureSpec((24,), (16,)), out_channels=8, extra_levels=1)
    assert neck.feature_info.reduction() == [4, 8, 16, 32, 64]
    with torch.no_grad():
        outs = neck.eval()([torch.randn(1, 24, 13, 9)])
    assert tuple(outs[-1].shape[-2:]) == (4, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(out_strides=[4, 8], scales=[4, 2]), "not both"),
    (dict(scales=[3, 1]), "power of two"),
    (dict(out_strides=[16, 8]), "finest first"),
    (dict(out_strides=[16, 17]), "distinct"),
    (dict(out_strides=[]), "non-empty"),
    (dict(then_args={"out_channels": 8}), "then is None"),
    (dict(then="fpnn"), "did you mean 'fpn'"),
    (dict(then="simple_pyramid"), "'fpn' or 'pan'"),
])
def test_bad_arguments_are_clear(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        fpn_zoo.create_neck("simple_pyramid", FeatureSpec((24,), (16,)), **kwargs)


# ------------------------------------------------------------------------------------------- composition


@pytest.mark.parametrize("then", ["fpn", "pan", "bifpn", "csp_pan_n"])
def test_a_vit_gets_a_multi_scale_neck(then: str) -> None:
    if not fpn_zoo.is_neck(then):
        pytest.skip(f"{then} is not registered yet")
    neck = fpn_zoo.create_neck("simple_pyramid", vit(), out_channels=16, then=then)
    assert isinstance(neck, ChainedNeck)
    assert neck.feature_info is neck.second.feature_info
    assert {k.split(".")[0] for k in neck.state_dict()} == {"first", "second"}
    assert neck.describe().kind == "chain"
    assert neck.describe().stages[0].kind == "simple_pyramid"  # each stage describes itself (typed)
    neck.train()
    outs = neck(vit_features())
    assert [o.shape[1] for o in outs] == neck.feature_info.channels()
    assert_all_grads(neck, outs)


@pytest.mark.parametrize("name", ["simple_pyramid_fpn", "simple_pyramid_bifpn"])
def test_composed_variants_by_name(name: str) -> None:
    if "bifpn" in name and not fpn_zoo.is_neck("bifpn"):
        pytest.skip("bifpn is not registered yet")
    neck = fpn_zoo.create_neck(name, vit(), out_channels=16)
    assert isinstance(neck, ChainedNeck)
    assert neck.neck_cfg.name == name
    assert set(neck.feature_info.channels()) == {16}, "the second neck inherits out_channels"
    with torch.no_grad():
        outs = neck.eval()(vit_features())
    for out, reduction in zip(outs, neck.feature_info.reduction()):
        assert out.shape[1] == 16
        assert math.floor(64 / reduction) <= out.shape[-1] <= max(1, math.ceil(64 / reduction))


def test_then_args_win_over_inherited_out_channels() -> None:
    neck = fpn_zoo.create_neck("simple_pyramid_fpn", FeatureSpec((24,), (16,)), out_channels=16,
                               then_args={"out_channels": 8, "extra_levels": 1})
    assert neck.first.feature_info.channels() == [16] * 4
    assert neck.feature_info.channels() == [8] * 5
    assert neck.feature_info.reduction() == [4, 8, 16, 32, 64]


def test_create_model_vit_with_composed_neck() -> None:
    torch.manual_seed(0)
    model = fpn_zoo.create_model(VIT, neck="simple_pyramid_fpn", out_indices=(-1,), img_size=64,
                                 neck_args={"out_channels": 16}).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 16, 16), (16, 8, 8), (16, 4, 4), (16, 2, 2)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
