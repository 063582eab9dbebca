"""In float32 the default ``fpn`` and ``pan`` compute the peers' function to float32 rounding.

The bound comes from the math, not from one CPU's rounding: both necks are linear (convs, nearest
upsampling, sums; no norm or activation by default), so the standard forward error analysis of sums of
products gives, elementwise and to first order in the unit roundoff ``u = 2**-24``,

    |float32 result - exact result| <= gamma(n) * (|W_L| ... |W_1| |x|),   gamma(n) = n u / (1 - n u),

with ``n`` the number of accumulations along the longest path (each conv's fan-in plus its bias, each sum)
and ``|W_L| ... |W_1| |x|`` the same network run in float64 with every weight, bias and input replaced by
its absolute value. The float64 run stands in for the exact result. Any kernel on any CPU (oneDNN's
direct, Winograd-free, blocked, AVX2 or AVX-512) meets it; a wrong weight or a missing term does not: it
is off by the size of the outputs.

Measured (AMD EPYC with AVX-512, torch 2.14.1, `pytest -s tests/test_float32_parity.py`): max abs diff
between ours and the peer 0.0 at every level for both (the same oneDNN calls on both sides); the worst
error is 1e-4 of the bound (the bound is worst-case; typical errors grow like sqrt(n), not n).
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torchvision

import fpn_zoo
from _peers import mmdet_necks
from fpn_zoo.convert.mmdet import from_mmdet_neck
from fpn_zoo.convert.torchvision import from_torchvision_fpn

CHANNELS, WIDTH = [64, 128, 256], 64
SIZES = [(29, 42), (15, 21), (8, 11)]
UNIT_ROUNDOFF = 2.0 ** -24


def gamma(n: int) -> float:
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def _inputs(dtype=torch.float32):
    torch.manual_seed(1)
    return [torch.randn(2, c, h, w).to(dtype) for c, (h, w) in zip(CHANNELS, SIZES)]


def _absolute(module: torch.nn.Module) -> torch.nn.Module:
    module = copy.deepcopy(module).double()
    with torch.no_grad():
        for p in module.parameters():
            p.abs_()
    return module


def _check(run_ours, run_peer, ours, peer, path_length: int):
    xs = _inputs()
    with torch.no_grad():
        got, theirs = run_ours(ours, xs), run_peer(peer, xs)
        exact = run_peer(copy.deepcopy(peer).double(), [x.double() for x in xs])
        magnitude = run_peer(_absolute(peer), [x.double().abs() for x in xs])
    bound_factor = gamma(path_length)
    diffs = []
    for level, (a, b, e, m) in enumerate(zip(got, theirs, exact, magnitude, strict=True)):
        bound = bound_factor * m
        ours_err, peer_err = (a.double() - e).abs(), (b.double() - e).abs()
        assert bool((peer_err <= bound).all()), f"level {level}: the bound does not hold for the peer itself"
        assert bool((ours_err <= bound).all()), (
            f"level {level}: max error {ours_err.max().item():.2e} exceeds the float32 bound "
            f"(max {bound.max().item():.2e})"
        )
        assert bool(((a - b).abs() <= 2 * bound.float()).all()), f"level {level}: ours and the peer's differ by more than both bounds"
        diffs.append(((a - b).abs().max().item(), (ours_err / bound).max().item()))
    return diffs


def _fpn_path(cin: int, width: int, levels: int) -> int:
    # 1x1 lateral (fan-in + bias), the top-down sums, 3x3 output conv (9 * width + bias)
    return (cin + 1) + (levels - 1) + (9 * width + 1)


def test_fpn_matches_torchvision_in_float32():
    torch.manual_seed(0)
    peer = torchvision.ops.FeaturePyramidNetwork(CHANNELS, WIDTH).eval()
    for p in peer.parameters():  # non-zero biases, so their rounding is exercised too
        torch.nn.init.uniform_(p, -0.05, 0.05) if p.dim() == 1 else None
    ours = fpn_zoo.create_neck("fpn", CHANNELS, out_channels=WIDTH).eval()
    ours.load_state_dict(from_torchvision_fpn(peer.state_dict()))

    def run_peer(module, xs):
        return list(module(OrderedDict((str(i), x) for i, x in enumerate(xs))).values())

    diffs = _check(lambda m, xs: m(xs), run_peer, ours, peer, _fpn_path(max(CHANNELS), WIDTH, len(CHANNELS)))
    print("fpn vs torchvision, per level (max abs diff, error / bound):", diffs)


def test_pan_matches_mmdet_in_float32():
    _, pafpn = mmdet_necks()
    torch.manual_seed(0)
    peer = pafpn.PAFPN(CHANNELS, WIDTH, num_outs=len(CHANNELS)).eval()
    for p in peer.parameters():
        torch.nn.init.uniform_(p, -0.05, 0.05) if p.dim() == 1 else None
    ours = fpn_zoo.create_neck("pan", CHANNELS, out_channels=WIDTH).eval()
    ours.load_state_dict(from_mmdet_neck(peer.state_dict()))
    levels = len(CHANNELS)
    # FPN, then per bottom-up step: a stride-2 3x3 conv (9 * width + bias), the sum, a 3x3 conv.
    path = _fpn_path(max(CHANNELS), WIDTH, levels) + (levels - 1) * ((9 * WIDTH + 1) + 1 + (9 * WIDTH + 1))
    diffs = _check(lambda m, xs: m(xs), lambda m, xs: list(m(xs)), ours, peer, path)
    print("pan vs mmdet PAFPN, per level (max abs diff, error / bound):", diffs)
