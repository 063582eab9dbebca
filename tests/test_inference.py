"""Inference helpers: BatchNorm folding keeps every variant's outputs."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fpn_zoo
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
def test_fuse_batchnorm_keeps_outputs(name):
    try:
        neck = fpn_zoo.create_neck(name, backbone("cnn"))
    except fpn_zoo.BackboneMismatch:
        pytest.skip(f"{name} does not take this backbone")
    randomize_norms(neck)
    neck.eval()
    xs = features("cnn")
    with torch.no_grad():
        expected = neck(xs)
        fused = fpn_zoo.fuse_batchnorm(copy.deepcopy(neck))
        got = fused(xs)
    had_bn = any(isinstance(m, nn.BatchNorm2d) for m in neck.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) or not had_bn, "BatchNorm left unfolded"
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_eval_runs_channels_last_and_training_keeps_the_given_layout():
    neck = fpn_zoo.create_neck("fpn", [8, 16], out_channels=8)
    xs = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)]
    neck.train()
    trained = neck(xs)
    assert all(o.is_contiguous() for o in trained)
    neck.eval()
    with torch.no_grad():
        evaluated = neck(xs)
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in evaluated)
    for a, b in zip(trained, evaluated):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-5)
