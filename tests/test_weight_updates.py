"""No update path leaves a stale result: after every way PyTorch, timm and mmengine change weights, an eval
forward equals that of a fresh module loaded with the same weights.

The library caches nothing derived from weights (the Winograd weight cache that went stale after fused
optimizer steps and ``.data`` writes is gone); these tests keep it that way for any future cache.
"""
from __future__ import annotations

import copy

import pytest
import torch

import fpn_zoo

SPEC = [dict(num_chs=8, reduction=8), dict(num_chs=16, reduction=16), dict(num_chs=32, reduction=32)]
INPUTS = [torch.rand(2, 8, 32, 32), torch.rand(2, 16, 16, 16), torch.rand(2, 32, 8, 8)]  # bifpn's P7: 2x2


def _loss(neck):
    return sum(o.square().mean() for o in neck(INPUTS))


def fused_adamw(neck):
    opt = torch.optim.AdamW(neck.parameters(), lr=0.1, fused=True)
    _loss(neck).backward()
    opt.step()


def fused_sgd(neck):
    opt = torch.optim.SGD(neck.parameters(), lr=0.5, momentum=0.9, fused=True)
    _loss(neck).backward()
    opt.step()


def foreach_adam(neck):
    opt = torch.optim.Adam(neck.parameters(), lr=0.1, foreach=True)
    _loss(neck).backward()
    opt.step()


def data_mul(neck):
    for p in neck.parameters():
        p.data.mul_(1.5)


def data_copy(neck):
    for p in neck.parameters():
        p.data.copy_(torch.randn_like(p))


def numpy_write(neck):
    for p in neck.parameters():
        array = p.detach().numpy()
        array *= 0.5
        array += 0.01


def vector_to_parameters(neck):
    vec = torch.nn.utils.parameters_to_vector(neck.parameters())
    torch.nn.utils.vector_to_parameters(vec * 0.5 + 0.1, neck.parameters())


def load_state_dict(neck):
    state = {k: (v + torch.rand_like(v) if v.is_floating_point() else v) for k, v in neck.state_dict().items()}
    neck.load_state_dict(state)


def torch_ema(neck):
    """torch.optim.swa_utils.AveragedModel, the EMA timm's ModelEmaV3 and torchvision's recipes build on."""
    ema = torch.optim.swa_utils.AveragedModel(neck, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.5))
    data_copy(neck)
    ema.update_parameters(neck)
    neck.load_state_dict(ema.module.state_dict())


def mmengine_ema(neck):
    """mmengine's ExponentialMovingAverage (mmdet's EMAHook) writes the averaged weights through ``.data``."""
    averaging = pytest.importorskip("mmengine.model.averaged_model")
    ema = averaging.ExponentialMovingAverage(neck, momentum=0.5)
    data_copy(neck)
    ema.update_parameters(neck)
    with torch.no_grad():
        for p, q in zip(neck.parameters(), ema.module.parameters()):
            p.data.copy_(q.data)


UPDATES = [fused_adamw, fused_sgd, foreach_adam, data_mul, data_copy, numpy_write, vector_to_parameters,
           load_state_dict, torch_ema, mmengine_ema]


@pytest.mark.parametrize("update", UPDATES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", ["fpn", "fpn_bn_lrelu_64", "bifpn"])
def test_eval_after_update_equals_a_fresh_module(name, update):
    torch.manual_seed(0)
    neck = fpn_zoo.create_neck(name, SPEC, out_channels=16)
    neck.eval()
    with torch.no_grad():
        before = neck(INPUTS)  # anything a forward might cache is made here
    neck.train()
    update(neck)
    neck.eval()
    fresh = copy.deepcopy(neck)  # same weights, never run
    fresh.load_state_dict(neck.state_dict())
    with torch.no_grad():
        got, expected = neck(INPUTS), fresh(INPUTS)
    assert any(not torch.equal(a, b) for a, b in zip(before, got)), f"{update.__name__} changed nothing"
    # A stale result is off by the size of the update (~100%). Equal weights in other storage (a slice of
    # vector_to_parameters' buffer is not aligned as a fresh tensor is) may round differently in float32,
    # hence float32's default tolerances rather than bit equality.
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_accelerate_after_update_uses_the_new_weights():
    neck = fpn_zoo.create_neck("fpn_bn_lrelu_64", SPEC, out_channels=16)
    first = fpn_zoo.accelerate(neck, INPUTS, layout="contiguous")
    fused_adamw(neck)
    neck.eval()
    again = fpn_zoo.accelerate(neck, INPUTS, layout="contiguous")
    with torch.no_grad():
        expected = neck(INPUTS)
    for a, b, old in zip(expected, again(INPUTS), first(INPUTS)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(old, a, rtol=1e-4, atol=1e-5)
