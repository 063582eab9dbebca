"""UPerNet's pyramid (issue 15): ``upernet`` reproduces transformers' ``UperNetHead`` up to its classifier weight
for weight (the fused map, and the pyramid levels the head fuses), and behaves like every fpn_zoo neck.

transformers resizes to the target size (bilinear), so parity runs on odd map sizes.
"""
from __future__ import annotations

import pytest
import torch

import fpn_zoo
from _outside_peers import max_abs, run_hooked, upernet_head
from fpn_zoo import FeatureSpec
from fpn_zoo.convert.transformers_upernet import from_transformers_upernet

CHANNELS = [8, 16, 24, 32]
SIZES = [(57, 83), (29, 42), (15, 21), (8, 11)]  # a 225 x 333 image at strides 4-32


def maps(dtype=torch.float64):
    torch.manual_seed(1)
    return [torch.randn(2, c, h, w, dtype=dtype) for c, (h, w) in zip(CHANNELS, SIZES)]


def test_float64_parity_fused_map_before_the_classifier():
    head = upernet_head(CHANNELS)
    neck = from_transformers_upernet(head)
    (expected,) = run_hooked(head, [head.fpn_bottleneck], maps())
    with torch.no_grad():
        (out,) = neck(maps())
    assert (out - expected).abs().max() <= 1e-10 and expected.abs().max() > 0.1
    assert neck.feature_info.channels() == [16] and neck.feature_info.reduction() == [4]
    assert not any(k.startswith("classifier") for k in neck.state_dict())


def test_float64_parity_pyramid_levels():
    head = upernet_head(CHANNELS)
    neck = from_transformers_upernet(head, output="pyramid")
    expected = run_hooked(head, [*head.fpn_convs, head.bottleneck], maps())
    with torch.no_grad():
        outs = neck(maps())
    assert max(max_abs(outs, expected)) <= 1e-10
    assert [tuple(o.shape[-2:]) for o in outs] == SIZES and neck.feature_info.reduction() == [4, 8, 16, 32]
    assert neck.fuse is None


def test_float32_parity_other_pool_scales():
    head = upernet_head(CHANNELS, torch.float32, pool_scales=[1, 3])
    neck = from_transformers_upernet(head)
    (expected,) = run_hooked(head, [head.fpn_bottleneck], maps(torch.float32))
    with torch.no_grad():
        (out,) = neck(maps(torch.float32))
    assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert neck.ppm.pool_scales == (1, 3)


def test_the_registered_variants_are_transformers_default_configuration():
    head = upernet_head([16, 32, 64, 128], torch.float32, hidden_size=512)
    spec = FeatureSpec((16, 32, 64, 128), (4, 8, 16, 32))
    for output, variant in (("fused", "upernet_fused"), ("pyramid", "upernet")):
        peer = from_transformers_upernet(head, output=output)
        ours = fpn_zoo.create_neck(variant, spec)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in peer.state_dict().items()}


def test_unsupported_configurations_name_the_attribute():
    head = upernet_head(CHANNELS, torch.float32)
    head.lateral_convs[1].activation = torch.nn.GELU()
    with pytest.raises(ValueError, match=r"UperNetHead\.lateral_convs\.1\.activation: GELU"):
        from_transformers_upernet(head)
    head = upernet_head(CHANNELS, torch.float32)
    head.align_corners = True
    with pytest.raises(ValueError, match="align_corners"):
        from_transformers_upernet(head)
    with pytest.raises(ValueError, match="features have channels"):
        from_transformers_upernet(upernet_head(CHANNELS, torch.float32), features=[8, 16, 24])
    with pytest.raises(TypeError, match="UperNetHead"):
        from_transformers_upernet(torch.nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("output", ["pyramid", "fused"])
def test_feature_info_nhwc_and_gradients(output):
    spec = FeatureSpec((8, 16, 24), (4, 8, 16), input_fmt="NHWC")
    neck = fpn_zoo.create_neck("upernet", spec, out_channels=8, output=output)
    torch.manual_seed(0)
    outs = neck([torch.randn(2, h, w, c) for c, (h, w) in zip(spec.channels, SIZES)])
    assert [o.shape[1] for o in outs] == neck.feature_info.channels()
    assert [tuple(o.shape[-2:]) for o in outs] == SIZES[:len(outs)]
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in neck.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(output="both"), "output must be one of"),
    (dict(pool_scales=[]), "pool_scales"),
    (dict(pool_scales=[1, 1]), "distinct"),
    (dict(pool_scales=[0, 2]), "pool_scales must be >= 1"),
    (dict(upsample_mode="bilinar"), "did you mean"),
])
def test_bad_knobs_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fpn_zoo.create_neck("upernet", [8, 16, 32], **kwargs)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (8, 11), (13, 7)])
def test_adaptive_pool_by_matrices_is_torch_adaptive_pool(size):
    from fpn_zoo.necks.upernet import adaptive_avg_pool

    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for bins in (1, 2, 3, 6):
        torch.testing.assert_close(adaptive_avg_pool(x, bins), torch.nn.functional.adaptive_avg_pool2d(x, bins),
                                   rtol=0, atol=1e-12)
