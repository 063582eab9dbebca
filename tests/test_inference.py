"""Inference helpers: BatchNorm folding keeps every variant's outputs."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fpn_zoo
from fpn_zoo.layers.fold import fold_batchnorm
from conftest import backbone, features

VARIANTS = fpn_zoo.list_necks()


def randomize_norms(module: nn.Module) -> None:
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("name", VARIANTS)
def test_fold_batchnorm_keeps_outputs(name):
    try:
        neck = fpn_zoo.create_neck(name, backbone("cnn"))
    except fpn_zoo.BackboneMismatch:
        pytest.skip(f"{name} does not take this backbone")
    randomize_norms(neck)
    neck.eval()
    xs = features("cnn")
    with torch.no_grad():
        expected = neck(xs)
        fused = fold_batchnorm(copy.deepcopy(neck))
        got = fused(xs)
    had_bn = any(isinstance(m, nn.BatchNorm2d) for m in neck.modules()) and name != "nasfcos_fpn"  # BN->ReLU->conv
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) or not had_bn, "BatchNorm left unfolded"
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, channels_last", [("fpn", False), ("bifpn", True)])
def test_layout_follows_the_convs(name, channels_last):
    """Necks with depthwise convs run their maps channels-last (oneDNN's NHWC depthwise convs are faster),
    in training and eval; dense necks keep the layout given. Weights stay NCHW either way."""
    neck = fpn_zoo.create_neck(name, [dict(num_chs=8, reduction=8), dict(num_chs=16, reduction=16),
                                      dict(num_chs=32, reduction=32)], out_channels=8)
    assert neck.channels_last is channels_last
    assert all(p.is_contiguous() for p in neck.parameters())
    xs = [torch.randn(1, 8, 32, 32), torch.randn(1, 16, 16, 16), torch.randn(1, 32, 8, 8)]
    neck.train()
    trained = neck(xs)
    neck.eval()
    with torch.no_grad():
        evaluated = neck(xs)
    for outs in (trained, evaluated):
        assert all(o.is_contiguous(memory_format=torch.channels_last) == channels_last for o in outs)
    if name == "fpn":  # no batch statistics: train and eval compute the same function
        for a, b in zip(trained, evaluated):
            torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-5)
    neck.channels_last = not channels_last
    with torch.no_grad():
        assert all(o.is_contiguous(memory_format=torch.channels_last) != channels_last for o in neck(xs))
