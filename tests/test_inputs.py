"""Bad input gets a clear ValueError/TypeError naming the problem; valid edge cases work."""
from __future__ import annotations

import re
import warnings

import pytest
import torch

import fpn_zoo
from conftest import backbone, features

CHANNELS = [16, 32, 64]


def maps(batch: int = 2, size: int = 16, dtype=torch.float32, channels=CHANNELS):
    return [torch.randn(batch, c, max(1, size >> i), max(1, size >> i), dtype=dtype) for i, c in enumerate(channels)]


@pytest.fixture(scope="module")
def neck():
    return fpn_zoo.create_neck("fpn_bn_lrelu_64", CHANNELS).eval()


# ------------------------------------------------------------------------------------------ at construction


def test_unknown_neck_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown neck 'fpm'.*'fpn'"):
        fpn_zoo.create_neck("fpm", CHANNELS)


def test_misspelt_override_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"no argument 'out_chanels'.*did you mean 'out_channels'"):
        fpn_zoo.create_neck("fpn", CHANNELS, out_chanels=64)


@pytest.mark.parametrize("value", [0, -8])
def test_non_positive_out_channels(value):
    with pytest.raises(ValueError, match=f"out_channels must be >= 1, got {value}"):
        fpn_zoo.create_neck("fpn", CHANNELS, out_channels=value)


def test_non_int_out_channels():
    with pytest.raises(TypeError, match="out_channels must be an int"):
        fpn_zoo.create_neck("fpn", CHANNELS, out_channels=64.0)


@pytest.mark.parametrize("channels", [[16, 0, 64], [16, -1, 64]])
def test_non_positive_input_channels_name_the_level(channels):
    with pytest.raises(ValueError, match="level 1: channels must be a positive int"):
        fpn_zoo.create_neck("fpn", channels)


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match=r"unknown activation 'leaky_rleu'.*leaky_relu"):
        fpn_zoo.create_neck("fpn", CHANNELS, act="leaky_rleu")


def test_unknown_norm_is_named():
    with pytest.raises(ValueError, match=r"unknown norm 'batchnrom'.*batchnorm"):
        fpn_zoo.create_neck("fpn", CHANNELS, norm="batchnrom")


def test_act_of_wrong_type():
    with pytest.raises(TypeError, match="act must be a name"):
        fpn_zoo.create_neck("fpn", CHANNELS, act=3)


def test_unknown_upsample_mode():
    with pytest.raises(ValueError, match="upsample_mode must be one of"):
        fpn_zoo.create_neck("fpn", CHANNELS, upsample_mode="cubic")


def test_levels_out_of_order():
    with pytest.raises(ValueError, match="finest first"):
        fpn_zoo.create_neck("fpn", [{"num_chs": 16, "reduction": 16}, {"num_chs": 32, "reduction": 8}])


def test_features_of_unknown_kind():
    with pytest.raises(TypeError, match="features must be"):
        fpn_zoo.create_neck("fpn", "resnet50")


def test_model_without_feature_info():
    with pytest.raises(TypeError, match="features_only=True"):
        fpn_zoo.create_neck("fpn", torch.nn.Conv2d(3, 8, 3))


# ---------------------------------------------------------------------------------------------- at forward


def test_wrong_number_of_maps(neck):
    with pytest.raises(ValueError, match=r"expected 3 feature maps \(channels \[16, 32, 64\]\), got 2"):
        neck(maps()[:2])


def test_not_a_list(neck):
    with pytest.raises(TypeError, match="list of 3 feature maps"):
        neck(torch.randn(2, 16, 8, 8))


def test_wrong_channels_name_level_expected_and_got(neck):
    bad = maps()
    bad[1] = torch.randn(2, 48, 8, 8)
    with pytest.raises(ValueError, match="feature map 1 has 48 channels, expected 32"):
        neck(bad)


def test_nhwc_maps_given_to_an_nchw_neck_get_a_hint(neck):
    nhwc = [m.permute(0, 2, 3, 1).contiguous() for m in maps(size=24)]
    with pytest.raises(ValueError, match="input_fmt='NHWC'"):
        neck(nhwc)


def test_wrong_rank(neck):
    bad = maps()
    bad[2] = bad[2][0]
    with pytest.raises(ValueError, match=r"feature map 2 has shape \(64, 4, 4\); expected a 4-d NCHW"):
        neck(bad)


def test_mismatched_batch_sizes(neck):
    bad = maps()
    bad[2] = torch.randn(3, 64, 4, 4)
    with pytest.raises(ValueError, match="feature map 2 has batch size 3, but feature map 0 has 2"):
        neck(bad)


def test_integer_maps(neck):
    with pytest.raises(TypeError, match="feature map 0 has dtype torch.int64"):
        neck([m.long() for m in maps()])


def test_dtype_differs_from_weights(neck):
    with pytest.raises(TypeError, match="float64 but the neck's weights are torch.float32"):
        neck(maps(dtype=torch.float64))


def test_a_tensor_that_is_not_a_tensor(neck):
    bad = maps()
    bad[0] = bad[0].numpy()
    with pytest.raises(TypeError, match="feature map 0 is a ndarray"):
        neck(bad)


# ------------------------------------------------------------------------------------- valid edge cases


@pytest.mark.parametrize("name", ["fpn", "pan", "fpn_bn_lrelu_64", "fpn_p6p7"])
def test_empty_batch(name):
    neck = fpn_zoo.create_neck(name, CHANNELS).eval()
    outs = neck(maps(batch=0))
    assert [o.shape[0] for o in outs] == [0] * len(outs)
    assert outs[0].shape[1] == neck.feature_info.channels()[0]


@pytest.mark.parametrize("name", ["fpn", "pan", "fpn_p6p7"])
def test_one_by_one_maps(name):
    neck = fpn_zoo.create_neck(name, CHANNELS).eval()
    outs = neck(maps(size=1))
    assert all(o.shape[-2:] == (1, 1) for o in outs)


def test_channels_last_inputs_give_the_same_result(neck):
    xs = maps(size=32)
    ref = neck(xs)
    got = neck([x.to(memory_format=torch.channels_last) for x in xs])
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_autocast(neck):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = neck(maps(size=32))
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o.float()).all() for o in outs)


def test_float64():
    neck = fpn_zoo.create_neck("pan", CHANNELS).double().eval()
    outs = neck(maps(size=32, dtype=torch.float64))
    assert all(o.dtype == torch.float64 for o in outs)


def test_single_level_backbone():
    neck = fpn_zoo.create_neck("pan", [32], reductions=[16], extra_levels=2).eval()
    outs = neck([torch.randn(1, 32, 7, 9)])
    assert neck.feature_info.reduction() == [16, 32, 64]
    assert [tuple(o.shape[-2:]) for o in outs] == [(7, 9), (4, 5), (2, 3)]


def test_repeated_strides_work():
    """sequencer-like levels: two at the same stride."""
    neck = fpn_zoo.create_neck("pan", [{"num_chs": 8, "reduction": 7}, {"num_chs": 16, "reduction": 14},
                                      {"num_chs": 16, "reduction": 14}], out_channels=8).eval()
    outs = neck([torch.randn(1, 8, 32, 32), torch.randn(1, 16, 16, 16), torch.randn(1, 16, 16, 16)])
    assert [tuple(o.shape[-2:]) for o in outs] == [(32, 32), (16, 16), (16, 16)]


def test_unusual_strides_crossvit_like():
    """reductions 12 and 17: sizes come from the tensors, not from a fixed factor."""
    neck = fpn_zoo.create_neck("pan", [{"num_chs": 8, "reduction": 12}, {"num_chs": 8, "reduction": 17}]).eval()
    outs = neck([torch.randn(1, 8, 20, 20), torch.randn(1, 8, 14, 14)])
    assert [tuple(o.shape[-2:]) for o in outs] == [(20, 20), (14, 14)]


def test_nhwc_backbone_passed_as_model_is_read_as_nhwc():
    neck = fpn_zoo.create_neck("fpn", backbone("nhwc"), out_channels=16)
    assert neck.spec.input_fmt == "NHWC"
    outs = neck(features("nhwc"))
    assert [o.shape[1] for o in outs] == [16] * 4


def test_nhwc_feature_info_with_explicit_format():
    neck = fpn_zoo.create_neck("fpn", backbone("nhwc").feature_info, input_fmt="NHWC", out_channels=16)
    ref = fpn_zoo.create_neck("fpn", backbone("nhwc"), out_channels=16)
    ref.load_state_dict(neck.state_dict())
    for a, b in zip(neck(features("nhwc")), ref(features("nhwc"))):
        torch.testing.assert_close(a, b)


def test_conv_extra_levels_return_p6_before_the_activation():
    """P7 is computed from act(P6); the P6 handed out must stay un-activated (RetinaNet)."""
    neck = fpn_zoo.create_neck("fpn", [8, 16], out_channels=8, act="relu", extra_levels=2, extra_op="conv").eval()
    with torch.no_grad():
        outs = neck([torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)])
        p6 = neck.extras.convs[0](outs[1])
    torch.testing.assert_close(outs[2], p6)
    assert outs[2].min() < 0


@pytest.mark.parametrize("name", ["fpn", "pan", "bifpn", "nasfpn", "csp_pan_s"])
def test_same_stride_levels_build_no_pyramid_and_every_family_says_so_the_same_way(name):
    """Every multi-level family warns alike (no family refuses, none is silent), naming variants that fit and
    no internal topology id."""
    info = [dict(num_chs=16, reduction=16)] * 3
    with pytest.warns(UserWarning, match=rf"^neck '{name}': every input level has stride 16.*'simple_pyramid_fpn'") as record:
        neck = fpn_zoo.create_neck(name, info, out_channels=8)
    assert not re.search(r"\b(fpn|pan|bifpn|csp_pan)\d", str(record[0].message))
    assert neck.feature_info.reduction()[:3] == [16, 16, 16]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fpn_zoo.create_neck("fpn", [dict(num_chs=16, reduction=8), dict(num_chs=16, reduction=16)], out_channels=8)


# ------------------------------------------------------------------------ maps that contradict feature_info


def test_maps_passed_coarsest_first_are_refused(neck):
    sizes = [4, 8, 16]  # the sizes of a pyramid, coarsest first
    with pytest.raises(ValueError, match=r"feature map 1 is 8x8, but feature map 0 is 4x4.*finest first"):
        neck([torch.randn(2, c, s, s) for c, s in zip(CHANNELS, sizes)])


def test_maps_all_at_one_size_are_refused_where_the_stride_doubles(neck):
    with pytest.raises(ValueError, match=r"feature map 1 is 16x16, but feature map 0 is 16x16: at stride 16 \(vs 8\)"):
        neck([torch.randn(2, c, 16, 16) for c in CHANNELS])


def test_equal_sizes_are_fine_at_equal_strides_and_at_one_pixel():
    same = fpn_zoo.create_neck("pan", [{"num_chs": 8, "reduction": 14}, {"num_chs": 8, "reduction": 14}], out_channels=8)
    same.eval()([torch.randn(1, 8, 5, 5), torch.randn(1, 8, 5, 5)])
    fpn_zoo.create_neck("fpn", CHANNELS, out_channels=8).eval()(maps(size=1))


def test_mixed_dtypes_across_levels_name_the_level(neck):
    xs = maps()
    xs[2] = xs[2].double()
    with pytest.raises(TypeError, match=r"feature map 2 is torch.float64, but feature map 0 is torch.float32"):
        neck(xs)


def test_zero_size_maps_name_the_level(neck):
    xs = maps()
    xs[1] = torch.randn(2, 32, 0, 8)
    with pytest.raises(ValueError, match=r"feature map 1 has a zero-size side: 0x8"):
        neck(xs)


def test_meta_maps_name_the_level(neck):
    xs = maps()
    xs[0] = xs[0].to("meta")
    with pytest.raises(ValueError, match=r"feature map 0 is on the meta device"):
        neck(xs)


@pytest.mark.parametrize("reduction", [float("nan"), float("inf"), 2 ** 40, 0, -8])
def test_non_finite_or_absurd_reductions_are_refused(reduction):
    with pytest.raises(ValueError, match=r"level 1: reduction must be a finite number in \(0, 4096\]"):
        fpn_zoo.FeatureSpec((8, 16), (8, reduction))


# --------------------------------------------------------------------------------- knobs, checked once


@pytest.mark.parametrize("name", ["fpn", "pan", "bifpn", "nasfpn", "csp_pan_s"])
def test_every_family_checks_a_knob_with_the_same_table_and_message(name):
    with pytest.raises(ValueError, match=r"^extra_op must be one of \('subsample', 'maxpool', 'conv'\), "
                                         r"got 'maxpol'; did you mean 'maxpool'"):
        fpn_zoo.create_neck(name, CHANNELS, extra_levels=1, extra_op="maxpol")
    with pytest.raises(ValueError, match=r"^upsample_mode must be one of .*got 'nerest'; did you mean 'nearest'"):
        fpn_zoo.create_neck(name, CHANNELS, upsample_mode="nerest")


@pytest.mark.parametrize("name, knob, bad, close, table", [
    ("fpn_dropblock", "extra_op", "convv", "conv", "('subsample', 'conv')"),
    ("fpn_dropblock", "extra_source", "laterl", "lateral", "('input', 'lateral', 'output')"),
    ("glip_fpn_dropblock", "extra_source", "ouput", "output", "('input', 'lateral', 'output')"),
    ("fpg", "extra_op", "subsampel", "subsample", "('subsample', 'conv')"),
])
def test_mmdet_style_families_check_their_extra_knobs_in_the_one_place(name, knob, bad, close, table):
    """FPN_DropBlock / FPG take a subset (extra_op) or an extension (extra_source: mmdet's on_lateral) of the
    shared tables, checked by fpn_zoo.layers.config.check_knobs with its close-match message."""
    with pytest.raises(ValueError, match=rf"^{knob} must be one of {re.escape(table)}, got '{bad}'; "
                                         rf"did you mean '{close}'"):
        fpn_zoo.create_neck(name, CHANNELS, extra_levels=1, **{knob: bad})
    with pytest.raises(ValueError, match=r"^extra_op must be one of \('subsample', 'conv'\), got 'maxpool'$"):
        fpn_zoo.create_neck(name, CHANNELS, extra_levels=1, extra_op="maxpool")  # in EXTRA_OPS, not theirs
    fpn_zoo.create_neck(name, CHANNELS, extra_levels=1, **{"extra_op": "conv", knob: close})


def test_the_families_keep_no_table_of_their_own():
    import inspect

    from fpn_zoo.layers import config
    from fpn_zoo.necks import fpg, fpn_dropblock

    for builder in (fpn_dropblock.fpn_dropblock, fpg.fpg):
        source = inspect.getsource(builder)
        assert "must be one of" not in source and "extra_op not in" not in source, builder.__name__
    assert fpn_dropblock.EXTRA_OPS is config.MMDET_EXTRA_OPS and fpn_dropblock.EXTRA_SOURCES is config.MMDET_EXTRA_SOURCES


def test_the_executor_trusts_checked_knobs():
    """GraphNeck holds no second copy of the checks (one place: fpn_zoo.layers.config)."""
    import inspect

    from fpn_zoo import graph

    source = inspect.getsource(graph.GraphNeck)
    assert "extra_source must" not in source and "lateral must" not in source


def test_resolve_act_in_place_only_when_asked():
    from fpn_zoo.layers.conv import resolve_act

    assert resolve_act("relu")().inplace is False
    assert resolve_act("relu", inplace=True)().inplace is True
    assert resolve_act("leaky_relu", {"negative_slope": 0.1}, inplace=True)().negative_slope == 0.1
