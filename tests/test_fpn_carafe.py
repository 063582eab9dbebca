"""fpn_carafe (issue 15): CARAFE's reassembly and the whole neck against a float64, loop-based reference of the
paper's math (mmdet's FPN_CARAFE needs compiled mmcv ops, so no peer runs here), plus the fpn_zoo contract."""
from __future__ import annotations

import math
from typing import List

import pytest
import torch
import torch.nn.functional as F

import fpn_zoo
from fpn_zoo import FeatureSpec
from fpn_zoo.layers.carafe import CARAFE

ODD_SIZES = [(29, 42), (15, 21), (8, 11)]


def reference_carafe(up: CARAFE, x: torch.Tensor, size) -> torch.Tensor:
    """CARAFE by the paper, one output pixel at a time: kernel from the encoder, softmax, weighted neighbourhood."""
    s, k, groups = up.scale_factor, up.up_kernel, up.up_group
    logits = up.content_encoder(up.channel_compressor(x))  # (n, groups*k*k*s*s, h, w)
    n, c, h, w = x.shape
    out = torch.zeros(n, c, size[0], size[1], dtype=x.dtype)
    per_group = c // groups
    for y in range(size[0]):
        for xx in range(size[1]):
            ys, xs = min(y, s * h - 1), min(xx, s * w - 1)  # past the upsampled map: its last row/column
            sy, sx, a, b = ys // s, xs // s, ys % s, xs % s
            for g in range(groups):
                raw = [logits[:, (g * k * k + t) * s * s + a * s + b, sy, sx] for t in range(k * k)]
                top = torch.stack(raw).max(0).values
                exps = [torch.exp(r - top) for r in raw]
                total = sum(exps)
                for t in range(k * k):
                    iy, ix = sy + t // k - k // 2, sx + t % k - k // 2
                    if 0 <= iy < h and 0 <= ix < w:
                        chans = slice(g * per_group, (g + 1) * per_group)
                        out[:, chans, y, xx] += (exps[t] / total)[:, None] * x[:, chans, iy, ix]
    return out


def randomize(module: torch.nn.Module) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("scale, k, groups, size", [(2, 5, 1, (9, 13)), (2, 3, 2, (8, 12)), (3, 3, 1, (10, 14))])
def test_carafe_matches_loop_reference_float64(scale, k, groups, size) -> None:
    up = CARAFE(4, scale, k, groups, encoder_kernel=3, compressed_channels=3).double()
    randomize(up)  # sharp, non-uniform kernels
    x = torch.randn(2, 4, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        diff = (up(x, size) - reference_carafe(up, x, size)).abs().max().item()
    print(f"carafe s={scale} k={k} g={groups}: float64 max abs diff {diff:.3g}")
    assert diff <= 1e-10


def reference_neck(neck, xs: List[torch.Tensor]) -> List[torch.Tensor]:
    """mmdet FPN_CARAFE's forward (laterals, extras on the raw coarsest map, CARAFE top-down, 3x3 outputs)."""
    def conv(block, x):
        c = block.conv
        return F.conv2d(x, c.weight, c.bias, c.stride, c.padding)
    laterals = [conv(block, x) for block, x in zip(neck.lateral_convs, xs)]
    for block in list(neck.lateral_convs)[len(xs):]:
        laterals.append(conv(block, xs[-1] if len(laterals) == len(xs) else laterals[-1]))
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + reference_carafe(neck.upsample_modules[i - 1], laterals[i],
                                                             laterals[i - 1].shape[-2:])
    return [conv(block, x) for block, x in zip(neck.fpn_convs, laterals)]


@pytest.mark.parametrize("sizes", [[(9, 13), (5, 7), (3, 4)], [(9, 12), (4, 6), (2, 3)]], ids=["ceil", "floor"])
def test_neck_matches_loop_reference_float64(sizes) -> None:
    neck = fpn_zoo.create_neck("fpn_carafe", [3, 5, 6], out_channels=4, compressed_channels=3, up_kernel=3,
                               extra_levels=2).double().eval()
    randomize(neck)
    torch.manual_seed(1)
    xs = [torch.randn(1, c, *s, dtype=torch.float64) for c, s in zip([3, 5, 6], sizes)]
    with torch.no_grad():
        got, ref = neck(xs), reference_neck(neck, xs)
    diff = max((a - b).abs().max().item() for a, b in zip(got, ref))
    print(f"fpn_carafe neck ({'x'.join(map(str, sizes[0]))}): float64 max abs diff {diff:.3g}")
    assert [tuple(g.shape) for g in got] == [tuple(r.shape) for r in ref]
    assert diff <= 1e-10


@pytest.mark.parametrize("fmt", ["NCHW", "NHWC"])
def test_outputs_match_feature_info_on_odd_sizes(fmt) -> None:
    spec = FeatureSpec((8, 16, 32), (8, 16, 32), fmt)
    neck = fpn_zoo.create_neck("fpn_carafe", spec, out_channels=16, compressed_channels=8, extra_levels=2)
    xs = [torch.randn(1, c, *s) for c, s in zip(spec.channels, ODD_SIZES)]
    if fmt == "NHWC":
        xs = [x.permute(0, 2, 3, 1) for x in xs]
    outs = neck(xs)
    assert [o.shape[1] for o in outs] == neck.feature_info.channels() == [16] * 5
    assert neck.feature_info.reduction() == [8, 16, 32, 64, 128]
    for out, reduction in zip(outs, neck.feature_info.reduction()):
        assert tuple(out.shape[-2:]) == (math.ceil(225 / reduction), math.ceil(333 / reduction))


def test_every_parameter_gets_a_gradient() -> None:
    neck = fpn_zoo.create_neck("fpn_carafe", [8, 16, 32], out_channels=16, compressed_channels=8, up_group=2,
                               norm="batchnorm", act="relu")
    neck.train()
    loss = sum(o.square().mean() for o in neck([torch.randn(2, c, *s) for c, s in zip([8, 16, 32], ODD_SIZES)]))
    loss.backward()
    missing = [name for name, p in neck.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("overrides, message", [
    (dict(up_kernel=4), "up_kernel must be odd"),
    (dict(encoder_kernel=2), "encoder_kernel must be odd"),
    (dict(out_channels=16, up_group=3), "up_group=3 must divide out_channels=16"),
    (dict(compressed_channels=0), "compressed_channels must be >= 1"),
    (dict(extra_levels=-1), "extra_levels must be >= 0"),
    (dict(act="relux"), "unknown activation 'relux'"),
])
def test_bad_knobs_raise_clear_errors(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        fpn_zoo.create_neck("fpn_carafe", [8, 16, 32], **overrides)


def test_single_stride_backbone_is_declined_with_a_variant_that_fits() -> None:
    with pytest.raises(fpn_zoo.BackboneMismatch, match="simple_pyramid_fpn"):
        fpn_zoo.create_neck("fpn_carafe", FeatureSpec((64, 64), (16, 16)))


def test_torch_export_with_dynamic_sizes() -> None:
    neck = fpn_zoo.create_neck("fpn_carafe", [8, 16], out_channels=8, compressed_channels=4).eval()
    xs = [torch.randn(1, 8, 17, 23), torch.randn(1, 16, 9, 12)]
    dims = ({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},) * 2
    program = torch.export.export(neck, (xs,), dynamic_shapes=(list(dims),))
    other = [torch.randn(1, 8, 21, 30), torch.randn(1, 16, 10, 15)]  # rounds down, where the export one rounded up
    with torch.no_grad():
        for got, expected in zip(program.module()(other), neck(other)):
            assert (got - expected).abs().max().item() <= 1e-5
