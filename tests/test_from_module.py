"""``fpn_zoo.convert.from_module``: one call adopts a peer's neck module, configuration read from the module,
weights loaded, outputs equal to the peer's in float64 (max abs diff <= 1e-10) on odd map sizes.

An unsupported configuration is a ValueError naming the peer's attribute, never a partial load; the
state-dict converter, given the target neck, refuses one built with the wrong P6 source.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import List, Sequence

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

import fpn_zoo
from _mmdet_peers import mmdet_neck_class
from fpn_zoo.convert import dispatch, from_module, from_torchvision_fpn, register_converter

CHANNELS = [16, 32, 64]
ODD_SIZES = [(29, 42), (15, 21), (8, 11)]  # strides 8/16/32 of a 225 x 333 image
TOLERANCE = 1e-10


def maps(channels: Sequence[int], sizes, dtype=torch.float64) -> List[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(2, c, h, w, dtype=dtype) for c, (h, w) in zip(channels, sizes)]


def randomize(module: nn.Module) -> nn.Module:
    """Non-trivial weights, biases and running stats, so every mismapped tensor shows in the outputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.3, 0.3)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 2)
    return module.double().eval()


def max_diff(ref: Sequence[torch.Tensor], got: Sequence[torch.Tensor]) -> float:
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert a.shape == b.shape
    return max((a - b).abs().max().item() for a, b in zip(ref, got))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------ torchvision

TORCHVISION = {  # case: (in_channels_list, FeaturePyramidNetwork kwargs, expected extra_source or None)
    "plain": (CHANNELS, dict(), None),
    "batchnorm": (CHANNELS, dict(norm_layer=nn.BatchNorm2d), None),
    "groupnorm": (CHANNELS, dict(norm_layer=partial(nn.GroupNorm, 4)), None),
    "maxpool_p6": (CHANNELS, dict(extra_blocks=LastLevelMaxPool()), "output"),
    "p6p7_from_c5": (CHANNELS, dict(extra_blocks=LastLevelP6P7(64, 8)), "input"),
    "p6p7_from_p5": (CHANNELS, dict(extra_blocks=LastLevelP6P7(8, 8)), "output"),
    "p6p7_from_p5_c5_as_wide": ([16, 32, 8], dict(extra_blocks=LastLevelP6P7(8, 8)), "output"),
}


def torchvision_outputs(tv: nn.Module, xs: List[torch.Tensor]) -> List[torch.Tensor]:
    return list(tv(OrderedDict((str(i), x) for i, x in enumerate(xs))).values())


@pytest.mark.parametrize("case", sorted(TORCHVISION))
def test_torchvision_fpn_module(case):
    channels, kwargs, source = TORCHVISION[case]
    tv = randomize(torchvision.ops.FeaturePyramidNetwork(channels, 8, **kwargs))
    neck = from_module(tv)
    assert not neck.training and n_params(neck) == n_params(tv)
    if source is not None:
        assert neck.extra_source == source
    xs = maps(channels, ODD_SIZES)
    with torch.no_grad():
        assert max_diff(torchvision_outputs(tv, xs), neck(xs)) <= TOLERANCE


def test_torchvision_p6p7_into_a_neck_with_the_wrong_source_raises():
    """LastLevelP6P7(C, C) with C5 as wide as the FPN: P6 comes from P5, and every shape also fits a neck making P6
    from C5, which used to load silently and give wrong P6 / P7."""
    tv = torchvision.ops.FeaturePyramidNetwork([16, 32, 8], 8, extra_blocks=LastLevelP6P7(8, 8))
    wrong = fpn_zoo.create_neck("fpn", [16, 32, 8], out_channels=8, extra_levels=2, extra_op="conv",
                                extra_source="input")
    assert {k: v.shape for k, v in wrong.state_dict().items()} == \
        {k: v.shape for k, v in from_torchvision_fpn(tv.state_dict()).items()}  # the old silent load
    with pytest.raises(ValueError, match="extra_source='output'"):
        from_torchvision_fpn(tv.state_dict(), neck=wrong)
    right = fpn_zoo.create_neck("fpn", [16, 32, 8], out_channels=8, extra_levels=2, extra_op="conv")
    right.load_state_dict(from_torchvision_fpn(tv.state_dict(), neck=right))


def test_torchvision_state_dict_checked_against_the_neck():
    tv = torchvision.ops.FeaturePyramidNetwork(CHANNELS, 8, norm_layer=nn.BatchNorm2d)
    with pytest.raises(ValueError, match="no torchvision tensor"):
        from_torchvision_fpn(tv.state_dict(), neck=fpn_zoo.create_neck("fpn", CHANNELS, out_channels=8))
    plain = torchvision.ops.FeaturePyramidNetwork(CHANNELS, 8)
    with pytest.raises(ValueError, match="shape"):
        from_torchvision_fpn(plain.state_dict(), neck=fpn_zoo.create_neck("fpn", CHANNELS, out_channels=16))


class _Custom(ExtraFPNBlock):
    def forward(self, results, x, names):  # pragma: no cover - never run
        return results, names


@pytest.mark.parametrize("kwargs, channels, attribute", [
    (dict(extra_blocks=_Custom()), CHANNELS, "extra_blocks"),
    (dict(extra_blocks=LastLevelP6P7(64, 16)), CHANNELS, "extra_blocks"),
    (dict(norm_layer=nn.InstanceNorm2d), CHANNELS, r"inner_blocks\.0\.1 \(norm_layer\)"),
    (dict(norm_layer=nn.BatchNorm2d, extra_blocks=LastLevelP6P7(8, 8)), CHANNELS, "extra_blocks.*no norm"),
])
def test_torchvision_unsupported_configurations_name_the_attribute(kwargs, channels, attribute):
    tv = torchvision.ops.FeaturePyramidNetwork(channels, 8, **kwargs)
    with pytest.raises(ValueError, match=attribute):
        from_module(tv)


def test_features_give_the_true_strides_and_are_checked():
    tv = torchvision.ops.FeaturePyramidNetwork(CHANNELS, 8)
    spec = fpn_zoo.FeatureSpec(tuple(CHANNELS), (4, 8, 16))
    assert from_module(tv, features=spec).feature_info.reduction() == [4, 8, 16]
    with pytest.raises(ValueError, match="channels"):
        from_module(tv, features=fpn_zoo.FeatureSpec((16, 32, 32), (8, 16, 32)))


# ------------------------------------------------------------------------------------------ mmdet FPN / PAFPN

MMDET = {  # case: (file, class, kwargs)
    "fpn": ("fpn", "FPN", dict(num_outs=3)),
    "fpn_maxpool_p6p7": ("fpn", "FPN", dict(num_outs=5)),
    "fpn_fcos_extra_convs": ("fpn", "FPN", dict(num_outs=5, add_extra_convs="on_output", relu_before_extra_convs=True)),
    "fpn_extra_convs_on_input": ("fpn", "FPN", dict(num_outs=5, add_extra_convs="on_input",
                                                    relu_before_extra_convs=True)),
    "fpn_gn_relu": ("fpn", "FPN", dict(num_outs=3, norm_cfg=dict(type="GN", num_groups=4), act_cfg=dict(type="ReLU"))),
    "pafpn": ("pafpn", "PAFPN", dict(num_outs=3)),
    "pafpn_bn_5_outs": ("pafpn", "PAFPN", dict(num_outs=5, norm_cfg=dict(type="BN"))),
}


@pytest.mark.parametrize("case", sorted(MMDET))
def test_mmdet_fpn_module(case):
    module, class_name, kwargs = MMDET[case]
    torch.manual_seed(0)
    peer = randomize(mmdet_neck_class(module, class_name)(CHANNELS, 8, **kwargs))
    neck = from_module(peer)
    assert n_params(neck) == n_params(peer)
    xs = maps(CHANNELS, ODD_SIZES)
    with torch.no_grad():
        assert max_diff(list(peer(xs)), neck(xs)) <= TOLERANCE


@pytest.mark.parametrize("kwargs, attribute", [
    (dict(num_outs=3, start_level=1), "start_level"),
    (dict(num_outs=5, add_extra_convs="on_input"), "relu_before_extra_convs"),
    (dict(num_outs=5, add_extra_convs="on_lateral", relu_before_extra_convs=True), "add_extra_convs"),
    (dict(num_outs=3, upsample_cfg=dict(scale_factor=2)), "upsample_cfg"),
    (dict(num_outs=3, norm_cfg=dict(type="BN"), no_norm_on_lateral=True), "no_norm_on_lateral"),
])
def test_mmdet_unsupported_configurations_name_the_attribute(kwargs, attribute):
    peer = mmdet_neck_class("fpn", "FPN")(CHANNELS, 8, **kwargs)
    with pytest.raises(ValueError, match=attribute):
        from_module(peer)


# ------------------------------------------------------------------------------------------ mmdet families

@pytest.mark.parametrize("module, class_name, args, kwargs, channels", [
    ("channel_mapper", "ChannelMapper", ([8, 16, 32], 16), dict(norm_cfg=dict(type="GN", num_groups=4), num_outs=4),
     [8, 16, 32]),
    ("ssh", "SSH", (3, [8, 16, 32], [16, 16, 32]), {}, [8, 16, 32]),
])
def test_mmdet_family_modules(module, class_name, args, kwargs, channels):
    torch.manual_seed(0)
    peer = randomize(mmdet_neck_class(module, class_name)(*args, **kwargs))
    neck = from_module(peer)
    xs = maps(channels, ODD_SIZES)
    with torch.no_grad():
        assert max_diff(list(peer(xs)), neck(xs)) <= TOLERANCE


# ------------------------------------------------------------------------------------------ effdet

def effdet_bifpn(**changes):
    pytest.importorskip("effdet")
    from effdet import get_efficientdet_config
    from effdet.config import set_config_writeable
    from effdet.efficientdet import BiFpn

    config = get_efficientdet_config("efficientdet_d0")  # pad_type '': PyTorch padding
    set_config_writeable(config)
    config.image_size = (128, 128)  # effdet fixes its feature sizes from it: 16, 8, 4, 2, 1 px for P3-P7
    config.fpn_cell_repeats = 2
    config.fpn_channels = 16
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    info = [dict(num_chs=c, reduction=r) for c, r in ((8, 8), (16, 16), (24, 32))]
    return BiFpn(config, info)


@pytest.mark.parametrize("changes", [dict(), dict(fpn_name="bifpn_attn", act_type="relu", separable_conv=False)],
                         ids=["d0_fast_attn", "attn_relu_plain_convs"])
def test_effdet_bifpn_module(changes):
    peer = randomize(effdet_bifpn(**changes))
    neck = from_module(peer)
    assert n_params(neck) == n_params(peer)
    xs = maps([8, 16, 24], [(16, 16), (8, 8), (4, 4)])
    with torch.no_grad():
        assert max_diff(peer(list(xs)), neck(xs)) <= TOLERANCE  # effdet appends to the list it is given


def test_effdet_unsupported_configuration_names_the_attribute():
    peer = effdet_bifpn(downsample_type="avg")
    with pytest.raises(ValueError, match=r"resample\.3\.downsample"):
        from_module(peer)


# ------------------------------------------------------------------------------------------ the dispatch table

def test_no_converter_and_not_a_module_are_clear_errors():
    with pytest.raises(ValueError, match="no fpn_zoo converter for .*Conv2d; supported: .*FeaturePyramidNetwork"):
        from_module(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="nn.Module"):
        from_module({"inner_blocks.0.0.weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="unexpected keyword"):
        from_module(torchvision.ops.FeaturePyramidNetwork(CHANNELS, 8), featurs=None)


def test_register_converter_by_name_or_type(monkeypatch):
    monkeypatch.setattr(dispatch, "_CONVERTERS", dict(dispatch._CONVERTERS))

    class PeerNeck(nn.Module):
        pass

    class SubPeer(PeerNeck):
        pass

    @register_converter("PeerNeck")
    def by_name(peer, **hints):
        return nn.Identity()

    assert type(from_module(SubPeer())) is nn.Identity  # found through the MRO, by name
    with pytest.raises(ValueError, match="registered already"):
        register_converter("PeerNeck")(lambda peer: peer)

    @register_converter(SubPeer)
    def by_type(peer, **hints):
        return nn.Sequential()

    assert type(from_module(SubPeer())) is nn.Sequential  # the exact type wins over a base's name
    register_converter("PeerNeck", override=True)(by_type)
    assert type(from_module(PeerNeck())) is nn.Sequential
    with pytest.raises(TypeError, match="class names or classes"):
        register_converter(3)


def test_importing_the_converters_does_not_import_the_peers():
    import subprocess
    import sys

    code = ("import fpn_zoo.convert as c, sys; c.list_converters(); "
            "print(sorted(m for m in ('mmdet', 'mmcv', 'effdet', 'ultralytics', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_from_module_adopts_the_outside_peers_too():
    """ultralytics and transformers necks go through the same one call as torchvision / mmdet / effdet."""
    from _outside_peers import deformable_detr_model, rtdetr_model, ultralytics_model, upernet_head
    from fpn_zoo.convert import (
        from_transformers_deformable_detr, from_transformers_rtdetr, from_transformers_upernet, from_ultralytics,
    )

    for peer, direct in ((ultralytics_model("yolov8n.yaml"), from_ultralytics),
                         (rtdetr_model(), from_transformers_rtdetr),
                         (deformable_detr_model(), from_transformers_deformable_detr),
                         (upernet_head([8, 16, 32]), from_transformers_upernet)):
        neck, expected = fpn_zoo.convert.from_module(peer), direct(peer)
        assert type(neck) is type(expected)
        for (k, a), (k2, b) in zip(neck.state_dict().items(), expected.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(a, b)
