"""RT-DETR's hybrid encoder (issue 15): ``rtdetr_encoder`` reproduces transformers' ``RTDetrModel`` input
projections + ``RTDetrHybridEncoder`` weight for weight, and behaves like every fpn_zoo neck.

Parity runs on x2 map sizes (transformers upsamples by a fixed factor 2), in float64 (<= 1e-10) and float32
(<= 1e-5 relative to the output's scale).
"""
from __future__ import annotations

import pytest
import torch

import fpn_zoo
from _outside_peers import max_abs, rtdetr_encoder_outputs, rtdetr_model
from fpn_zoo import FeatureSpec
from fpn_zoo.convert.transformers_rtdetr import from_transformers_rtdetr

SIZES = [(12, 20), (6, 10), (3, 5)]  # a non-square coarse map: the position embedding must not assume squares
CHANNELS = [16, 24, 32]


def maps(dtype=torch.float64, channels=CHANNELS):
    torch.manual_seed(1)
    return [torch.randn(2, c, h, w, dtype=dtype) for c, (h, w) in zip(channels, SIZES)]


def test_float64_parity_with_transformers_model():
    model = rtdetr_model()
    neck = from_transformers_rtdetr(model)
    with torch.no_grad():
        outs = neck(maps())
    expected = rtdetr_encoder_outputs(model, maps())
    assert max(max_abs(outs, expected)) <= 1e-10
    assert all(e.abs().max() > 0.1 for e in expected)
    assert [o.shape[1] for o in outs] == neck.feature_info.channels() == [32] * 3
    assert neck.feature_info.reduction() == [8, 16, 32]


def test_float32_parity_half_width_blocks_two_aifi_layers_relu():
    model = rtdetr_model(torch.float32, hidden_expansion=0.5, encoder_layers=2, activation_function="relu")
    neck = from_transformers_rtdetr(model)
    assert len(neck.aifi) == 2 and not isinstance(neck.top_down[0].out, torch.nn.Identity)
    with torch.no_grad():
        outs = neck(maps(torch.float32))
    for out, ref in zip(outs, rtdetr_encoder_outputs(model, maps(torch.float32))):
        assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_the_encoder_alone_takes_projected_maps():
    model = rtdetr_model()
    neck = from_transformers_rtdetr(model.encoder)
    assert neck.input_proj is None
    projected = maps(channels=[32] * 3)
    with torch.no_grad():
        expected = list(model.encoder([x.clone() for x in projected]).last_hidden_state)
        assert max(max_abs(neck(projected), expected)) <= 1e-10


def test_the_registered_variant_is_transformers_default_configuration():
    transformers = pytest.importorskip("transformers")
    from transformers.models.rt_detr.modeling_rt_detr import RTDetrHybridEncoder

    torch.manual_seed(0)
    peer = from_transformers_rtdetr(RTDetrHybridEncoder(transformers.RTDetrConfig()))
    ours = fpn_zoo.create_neck("rtdetr_encoder", FeatureSpec((256,) * 3, (8, 16, 32)), input_proj=False)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in peer.state_dict().items()}


@pytest.mark.parametrize("overrides, message", [
    (dict(normalize_before=True), r"config\.normalize_before"),
    (dict(eval_size=64), r"config\.eval_size"),
    (dict(encode_proj_layers=[1]), r"config\.encode_proj_layers"),
    (dict(activation_function="mish"), r"config\.activation_function"),
])
def test_unsupported_configurations_name_the_attribute(overrides, message):
    with pytest.raises(ValueError, match=message):
        from_transformers_rtdetr(rtdetr_model(torch.float32, **overrides))


def test_odd_sizes_feature_info_and_gradients():
    neck = fpn_zoo.create_neck("rtdetr_r18_encoder", [8, 16, 24, 32], out_channels=16, num_heads=4)
    torch.manual_seed(0)
    outs = neck([torch.randn(2, c, h, w) for c, (h, w) in zip([8, 16, 24, 32], [(29, 42), (15, 21), (8, 11), (4, 6)])])
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 29, 42), (16, 15, 21), (16, 8, 11), (16, 4, 6)]
    assert neck.feature_info.channels() == [16] * 4
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in neck.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(out_channels=30), "multiple of 4"),
    (dict(num_heads=3), "num_heads"),
    (dict(hidden_expansion=0), "hidden_expansion"),
    (dict(input_proj=False), "input_proj=False"),
    (dict(ffn_act=None), "ffn_act"),
])
def test_bad_knobs_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fpn_zoo.create_neck("rtdetr_encoder", [8, 16, 32], **kwargs)
