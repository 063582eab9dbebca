"""nasfcos_fpn (issue 15): the searched FPN against a float64 reference written from mmdet's NASFCOS_FPN forward, with
its DCNv2 input convs computed by a bilinear-sampling loop (mmdet's needs compiled mmcv ops, so no peer runs here),
plus the fpn_zoo contract."""
from __future__ import annotations

import math
from typing import List

import pytest
import torch
import torch.nn.functional as F

import fpn_zoo
from fpn_zoo import FeatureSpec
from fpn_zoo.layers.deform import ModulatedDeformConvPack

ODD_SIZES = [(29, 42), (15, 21), (8, 11)]
F64 = torch.float64
CELLS = [("c22_1", 2, 2), ("c22_2", 2, 2), ("c32", 3, 2), ("c02", 0, 2), ("c42", 4, 2), ("c36", 3, 6), ("c61", 6, 1)]


def bilinear(plane: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """DCN's sampling of a ``(C, H, W)`` map: zero outside ``(-1, H) x (-1, W)``, missing corners count zero."""
    height, width = plane.shape[-2:]
    value = plane.new_zeros(plane.shape[0])
    if not (-1 < y < height and -1 < x < width):
        return value
    y0, x0 = math.floor(y), math.floor(x)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                value = value + wy * wx * plane[:, yy, xx]
    return value


def reference_dcn_pack(conv: ModulatedDeformConvPack, x: torch.Tensor) -> torch.Tensor:
    """mmcv's DCNv2 pack (3x3, stride 1, padding 1): offsets and masks from ``conv_offset``, one pixel at a time."""
    predicted = F.conv2d(x, conv.conv_offset.weight, conv.conv_offset.bias, padding=1)
    groups, taps = conv.deform_groups, 9
    offset, mask = predicted[:, : 2 * groups * taps], torch.sigmoid(predicted[:, 2 * groups * taps:])
    per_group = x.shape[1] // groups
    out = torch.zeros(x.shape[0], conv.weight.shape[0], *x.shape[-2:], dtype=x.dtype)
    for b in range(x.shape[0]):
        for y in range(x.shape[2]):
            for xx in range(x.shape[3]):
                acc = conv.bias.clone()
                for g in range(groups):
                    chans = slice(g * per_group, (g + 1) * per_group)
                    for t in range(taps):
                        i, j = divmod(t, 3)
                        dy, dx = offset[b, g * 2 * taps + 2 * t, y, xx], offset[b, g * 2 * taps + 2 * t + 1, y, xx]
                        sample = bilinear(x[b, chans], y - 1 + i + float(dy), xx - 1 + j + float(dx))
                        acc = acc + mask[b, g * taps + t, y, xx] * (conv.weight[:, chans, i, j] @ sample)
                out[b, :, y, xx] = acc
    return out


def bn(norm, x):
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)


def reference_neck(neck, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
    """mmdet NASFCOS_FPN.forward (start_level = all but the three coarsest), written from its source."""
    inputs = inputs[len(inputs) - 3:]
    feats = [F.relu(bn(a.norm, F.conv2d(x, a.conv.weight))) for a, x in zip(neck.adapt_convs, inputs)]
    for name, i1, i2 in CELLS:
        cell = neck.fpn[name]
        x1, x2 = feats[i1], feats[i2]
        out_size = max(x1.size()[2:], x2.size()[2:])  # mmcv BaseMergeCell: the larger one
        resized = []
        for conv, x in ((cell.input1_conv, x1), (cell.input2_conv, x2)):
            if isinstance(conv, torch.nn.Sequential):
                x = F.relu(bn(conv.norm, reference_dcn_pack(conv.conv, x)))
            if x.shape[-2:] != out_size:
                x = F.interpolate(x, size=out_size, mode="nearest")
            resized.append(x)
        fused = F.relu(bn(cell.out_conv.norm, torch.cat(resized, 1)))
        feats.append(F.conv2d(fused, cell.out_conv.conv.weight, groups=fused.shape[1] // 2))
    outs = []
    for idx, level in zip([9, 8, 7], [0, 1, 2]):
        summed = feats[idx] + F.interpolate(feats[5], size=feats[idx].shape[2:], mode="bilinear", align_corners=False)
        outs.append(F.interpolate(summed, size=inputs[level].shape[2:], mode="bilinear", align_corners=False))
    for i, down in enumerate(neck.extra_downsamples):
        x = outs[-1] if i == 0 else F.relu(outs[-1])
        outs.append(F.conv2d(x, down.conv.weight, down.conv.bias, stride=2, padding=1))
    return outs


def randomize(module: torch.nn.Module, seed: int = 3) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.uniform_(-0.5, 0.5)
            if "conv_offset" in name:  # large offsets: taps land between pixels and off the map
                p.mul_(4)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)


@pytest.mark.parametrize("channels, sizes", [
    ([4, 6, 8], [(7, 9), (4, 5), (2, 3)]),
    ([3, 4, 6, 8], [(12, 18), (6, 9), (3, 4), (1, 2)]),  # a C2 level (ignored) and sizes rounded down
], ids=["c3-c5", "c2-c5-floor"])
def test_neck_matches_loop_reference_float64(channels, sizes) -> None:
    spec = FeatureSpec(tuple(channels), tuple(2 ** (i + 3) for i in range(len(channels))))
    neck = fpn_zoo.create_neck("nasfcos_fpn", spec, out_channels=4).double().eval()
    randomize(neck)
    torch.manual_seed(1)
    xs = [torch.randn(2, c, *s, dtype=F64) for c, s in zip(channels, sizes)]
    with torch.no_grad():
        got, ref = neck(xs), reference_neck(neck, xs)
    assert [tuple(g.shape) for g in got] == [tuple(r.shape) for r in ref]
    diff = max((a - b).abs().max().item() for a, b in zip(got, ref))
    print(f"nasfcos_fpn ({len(channels)} levels): float64 max abs diff {diff:.3g}")
    assert diff <= 1e-10


@pytest.mark.parametrize("fmt", ["NCHW", "NHWC"])
def test_outputs_match_feature_info_on_odd_sizes(fmt) -> None:
    spec = FeatureSpec((8, 16, 32), (8, 16, 32), fmt)
    neck = fpn_zoo.create_neck("nasfcos_fpn", spec, out_channels=8)
    xs = [torch.randn(1, c, *s) for c, s in zip(spec.channels, ODD_SIZES)]
    if fmt == "NHWC":
        xs = [x.permute(0, 2, 3, 1) for x in xs]
    outs = neck(xs)
    assert [o.shape[1] for o in outs] == neck.feature_info.channels() == [8] * 5
    assert neck.feature_info.reduction() == [8, 16, 32, 64, 128]
    for out, reduction in zip(outs, neck.feature_info.reduction()):
        assert tuple(out.shape[-2:]) == (math.ceil(225 / reduction), math.ceil(333 / reduction))


@pytest.mark.parametrize("deformable", [True, False])
def test_every_parameter_gets_a_gradient(deformable) -> None:
    neck = fpn_zoo.create_neck("nasfcos_fpn", [8, 16, 32], out_channels=8, deformable=deformable)
    neck.train()
    loss = sum(o.square().mean() for o in neck([torch.randn(2, c, *s) for c, s in zip([8, 16, 32], ODD_SIZES)]))
    loss.backward()
    missing = [name for name, p in neck.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert any("conv_offset" in name for name, _ in neck.named_parameters()) == deformable


@pytest.mark.parametrize("overrides, error, message", [
    (dict(out_channels=9), ValueError, "deform_groups=2 must divide out_channels=9"),
    (dict(deform_groups=0), ValueError, "deform_groups must be >= 1"),
    (dict(deformable="yes"), TypeError, "deformable must be a bool"),
    (dict(extra_levels=-1), ValueError, "extra_levels must be >= 0"),
    (dict(norm="batchnrom"), ValueError, "unknown norm 'batchnrom'"),
])
def test_bad_knobs_raise_clear_errors(overrides, error, message) -> None:
    with pytest.raises(error, match=message):
        fpn_zoo.create_neck("nasfcos_fpn", [8, 16, 32], **overrides)


def test_fewer_than_three_levels_is_declined_with_a_variant_that_fits() -> None:
    with pytest.raises(fpn_zoo.BackboneMismatch, match="use fpn"):
        fpn_zoo.create_neck("nasfcos_fpn", [16, 32])


def test_torch_export_with_dynamic_sizes() -> None:
    """In float64: the exported graph reads the deformable taps through ``grid_sample``, eager through
    ``embedding_bag`` (the same math, summed in another order)."""
    neck = fpn_zoo.create_neck("nasfcos_fpn", [8, 16, 32], out_channels=8).eval()
    randomize(neck)
    neck.double()
    xs = [torch.randn(1, c, *s, dtype=torch.float64) for c, s in zip([8, 16, 32], [(17, 23), (9, 12), (5, 6)])]
    dims = [{2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}] * 3
    program = torch.export.export(neck, (xs,), dynamic_shapes=(dims,))
    other = [torch.randn(1, c, *s, dtype=torch.float64) for c, s in zip([8, 16, 32], [(21, 30), (10, 15), (5, 7)])]
    with torch.no_grad():
        for got, expected in zip(program.module()(other), neck(other)):
            assert (got - expected).abs().max().item() <= 1e-10 * expected.abs().max().item()
