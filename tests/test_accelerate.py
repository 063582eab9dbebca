"""fpn_zoo.accelerate: an inference snapshot that computes the neck's function, with a measured layout."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fpn_zoo
import fpn_zoo.inference as inference
from conftest import backbone, features
from test_inference import randomize_norms

ONE_PER_FAMILY = ["fpn", "fpn_bn_lrelu_64", "pan", "bifpn", "nasfpn", "csp_pan_n"]


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_same_function_as_the_neck_in_float64(name):
    """Folding and layouts change no math: in float64 the snapshot equals the neck to float64 rounding."""
    neck = fpn_zoo.create_neck(name, backbone("cnn")).double()
    randomize_norms(neck)
    neck.eval()
    xs = [x.double() for x in features("cnn")]
    with torch.no_grad():
        expected = neck(xs)
    for layout in inference.LAYOUTS:
        got = fpn_zoo.accelerate(neck, xs, layout=layout)(xs)
        for a, b in zip(expected, got, strict=True):
            assert b.dtype == torch.float64 and b.shape == a.shape
            assert (a - b).abs().max().item() <= 1e-10 * max(1.0, a.abs().max().item())


def test_layout_is_measured_once_per_process(monkeypatch):
    inference.clear_layout_cache()
    calls = []
    real = inference._median_times
    monkeypatch.setattr(inference, "_median_times", lambda steps, rounds: calls.append(sorted(steps)) or real(steps, rounds))
    spec = [dict(num_chs=8, reduction=8), dict(num_chs=16, reduction=16)]
    xs = [torch.rand(1, 8, 16, 16), torch.rand(1, 16, 8, 8)]
    first = fpn_zoo.accelerate(fpn_zoo.create_neck("fpn", spec, out_channels=8), xs, rounds=1)
    assert calls == [["channels_last", "contiguous"]]
    assert set(first.timings) == set(inference.LAYOUTS)
    assert first.layout == min(first.timings, key=first.timings.get), "the faster layout is kept"
    second = fpn_zoo.accelerate(fpn_zoo.create_neck("fpn", spec, out_channels=8), xs, rounds=1)
    assert len(calls) == 1 and second.layout == first.layout, "same architecture and shapes: no second timing"
    fpn_zoo.accelerate(fpn_zoo.create_neck("fpn", spec, out_channels=8), [torch.rand(1, 8, 32, 32), torch.rand(1, 16, 16, 16)], rounds=1)
    assert len(calls) == 2, "other input shapes are measured again"


def test_snapshot_is_frozen_and_independent_of_the_original():
    neck = fpn_zoo.create_neck("fpn_bn_lrelu_64", [8, 16])
    xs = [torch.rand(1, 8, 16, 16), torch.rand(1, 16, 8, 8)]
    fast = fpn_zoo.accelerate(neck, xs, layout="contiguous")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules()), "BatchNorm folded"
    assert not any(p.requires_grad for p in fast.parameters())
    with pytest.raises(RuntimeError, match="inference snapshot"):
        fast.train()
    fast.eval()  # allowed
    before = [o.clone() for o in fast(xs)]
    with torch.no_grad():
        for p in neck.parameters():
            p.mul_(2.0)
    after = fast(xs)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, error", [
    (dict(layout="nhwc"), ValueError), (dict(compile="yes"), ValueError), (dict(rounds=0), ValueError),
])
def test_bad_arguments(kwargs, error):
    neck = fpn_zoo.create_neck("fpn", [8, 16], out_channels=8)
    with pytest.raises(error):
        fpn_zoo.accelerate(neck, [torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4)], **kwargs)


def test_inputs_must_be_a_list_of_maps():
    neck = fpn_zoo.create_neck("fpn", [8, 16], out_channels=8)
    with pytest.raises(TypeError, match="list of feature maps"):
        fpn_zoo.accelerate(neck, torch.rand(1, 8, 8, 8))
    with pytest.raises(TypeError, match="neck module"):
        fpn_zoo.accelerate("fpn", [torch.rand(1, 8, 8, 8)])


@pytest.mark.compile
@pytest.mark.slow
def test_compiled_snapshot_matches():
    neck = fpn_zoo.create_neck("fpn", [8, 16], out_channels=8).eval()
    xs = [torch.rand(1, 8, 16, 16), torch.rand(1, 16, 8, 8)]
    fast = fpn_zoo.accelerate(neck, xs, layout="contiguous", compile=True)
    assert fast.compiled
    with torch.no_grad():
        for a, b in zip(neck(xs), fast(xs)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
