"""Our defaults reproduce the peers' math: weights converted from torchvision's FeaturePyramidNetwork and
mmdet's FPN / PAFPN give the peers' outputs (max abs diff <= 1e-5), on odd map sizes.

Both sides run in float64: a difference in the math shows at any precision, float32 summation order
(our convs run channels-last) does not."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

import fpn_zoo
from _peers import mmdet_necks
from fpn_zoo.convert.mmdet import from_mmdet_neck
from fpn_zoo.convert.torchvision import from_torchvision_fpn

CHANNELS = [16, 32, 64]
SIZES = [(29, 42), (15, 21), (8, 11)]  # strides 8/16/32 of a 225 x 333 image


def inputs():
    torch.manual_seed(1)
    return [torch.randn(2, c, h, w, dtype=torch.float64) for c, (h, w) in zip(CHANNELS, SIZES)]


def assert_same_outputs(ref, got):
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5


def n_params(module):
    return sum(p.numel() for p in module.parameters())


TORCHVISION_CASES = {
    "plain": (dict(), dict()),
    "batchnorm": (dict(norm_layer=torch.nn.BatchNorm2d), dict(norm="batchnorm")),
    "maxpool_p6": (dict(extra_blocks=LastLevelMaxPool()), dict(extra_levels=1)),
    "retinanet_p6p7_from_c5": (dict(extra_blocks=LastLevelP6P7(64, 8)),
                               dict(extra_levels=2, extra_op="conv", extra_source="input")),
    "retinanet_p6p7_from_p5": (dict(extra_blocks=LastLevelP6P7(8, 8)), dict(extra_levels=2, extra_op="conv")),
}


@pytest.mark.parametrize("case", sorted(TORCHVISION_CASES))
def test_fpn_reproduces_torchvision(case):
    tv_kwargs, our_kwargs = TORCHVISION_CASES[case]
    torch.manual_seed(0)
    tv = torchvision.ops.FeaturePyramidNetwork(CHANNELS, 8, **tv_kwargs)
    if "norm_layer" in tv_kwargs:  # non-trivial running stats, so eval-mode BN is really compared
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    tv.double().eval()
    neck = fpn_zoo.create_neck("fpn", CHANNELS, out_channels=8, **our_kwargs).double().eval()
    assert n_params(neck) == n_params(tv)
    neck.load_state_dict(from_torchvision_fpn(tv.state_dict()))
    xs = inputs()
    ref = list(tv(OrderedDict((str(i), x) for i, x in enumerate(xs))).values())
    assert_same_outputs(ref, neck(xs))


def test_torchvision_detector_checkpoint_with_prefix():
    tv = torchvision.ops.FeaturePyramidNetwork(CHANNELS, 8)
    checkpoint = {f"backbone.fpn.{k}": v for k, v in tv.state_dict().items()}
    checkpoint["backbone.body.conv1.weight"] = torch.zeros(1)
    converted = from_torchvision_fpn(checkpoint, prefix="backbone.fpn.")
    fpn_zoo.create_neck("fpn", CHANNELS, out_channels=8).load_state_dict(converted)


def test_torchvision_converter_rejects_foreign_keys():
    with pytest.raises(ValueError, match="not a torchvision FeaturePyramidNetwork parameter"):
        from_torchvision_fpn({"lateral_convs.0.conv.weight": torch.zeros(1)})


MMDET_CASES = {
    "pafpn": ("PAFPN", "pan", dict(), dict()),
    "pafpn_bn": ("PAFPN", "pan", dict(norm_cfg=dict(type="BN")), dict(norm="batchnorm")),
    "pafpn_5_outs": ("PAFPN", "pan", dict(num_outs=5), dict(extra_levels=2)),
    "fpn": ("FPN", "fpn", dict(), dict()),
}


@pytest.mark.parametrize("case", sorted(MMDET_CASES))
def test_reproduces_mmdet(case):
    fpn_module, pafpn_module = mmdet_necks()
    cls_name, family, mm_kwargs, our_kwargs = MMDET_CASES[case]
    cls = getattr(pafpn_module if cls_name == "PAFPN" else fpn_module, cls_name)
    mm_kwargs = {"num_outs": 3, **mm_kwargs}
    torch.manual_seed(0)
    peer = cls(CHANNELS, 8, **mm_kwargs).double().eval()
    neck = fpn_zoo.create_neck(family, CHANNELS, out_channels=8, **our_kwargs).double().eval()
    assert n_params(neck) == n_params(peer)
    neck.load_state_dict(from_mmdet_neck(peer.state_dict()))
    xs = inputs()
    assert_same_outputs(peer(xs), neck(xs))


def test_mmdet_extra_convs_are_refused_clearly():
    fpn_module, _ = mmdet_necks()
    peer = fpn_module.FPN(CHANNELS, 8, num_outs=5, add_extra_convs="on_input")
    with pytest.raises(ValueError, match="extra-level conv"):
        from_mmdet_neck(peer.state_dict())
