"""dyhead (issue 15): DCNv2, the three attentions and a whole DyHead block against float64, loop-based references
of the paper's math (mmdet's DyHead needs compiled mmcv ops, so no peer runs here), plus the fpn_zoo contract."""
from __future__ import annotations

import math
from typing import List

import pytest
import torch
import torch.nn.functional as F

import fpn_zoo
from fpn_zoo import FeatureSpec
from fpn_zoo.layers.deform import ModulatedDeformConv
from fpn_zoo.necks.dyhead import DyReLU, ScaleAttention

ODD_SIZES = [(29, 42), (15, 21), (8, 11)]
F64 = torch.float64


def bilinear(plane: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """DCN's sampling of one ``(C, H, W)`` map: zero outside ``(-1, H) x (-1, W)``, missing corners count zero."""
    height, width = plane.shape[-2:]
    if not (-1 < y < height and -1 < x < width):
        return plane.new_zeros(plane.shape[0])
    y0, x0 = math.floor(y), math.floor(x)
    value = plane.new_zeros(plane.shape[0])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                value = value + wy * wx * plane[:, yy, xx]
    return value


def reference_dcn(conv: ModulatedDeformConv, x, read_offset, read_mask, out_size) -> torch.Tensor:
    """DCNv2 one output pixel at a time; ``read_offset(b, tap, axis, y, x)`` / ``read_mask(b, tap, y, x)``."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    out = torch.zeros(x.shape[0], conv.weight.shape[0], *out_size, dtype=x.dtype)
    for b in range(x.shape[0]):
        for y in range(out_size[0]):
            for xx in range(out_size[1]):
                acc = conv.bias.clone() if conv.bias is not None else torch.zeros(conv.weight.shape[0], dtype=x.dtype)
                for t in range(kh * kw):
                    i, j = divmod(t, kw)
                    sample = bilinear(x[b], y * sh - ph + i + read_offset(b, t, 0, y, xx),
                                      xx * sw - pw + j + read_offset(b, t, 1, y, xx))
                    acc = acc + read_mask(b, t, y, xx) * (conv.weight[:, :, i, j] @ sample)
                out[b, :, y, xx] = acc
    return out


def tensor_reader(t: torch.Tensor):
    return lambda b, *idx: float(t[b][idx[0] * 2 + idx[1], idx[2], idx[3]]) if len(idx) == 4 else float(t[b][idx])


def test_deform_conv_matches_bilinear_loop_float64() -> None:
    torch.manual_seed(0)
    conv = ModulatedDeformConv(3, 4, 3, stride=2, padding=1).double()
    x = torch.randn(2, 3, 7, 9, dtype=F64)
    offset = 2.5 * torch.randn(2, 18, 4, 5, dtype=F64)  # far enough to leave the map at the borders
    mask = torch.rand(2, 9, 4, 5, dtype=F64)
    with torch.no_grad():
        got = conv(x, offset, mask)
        ref = reference_dcn(conv, x, lambda b, t, a, y, xx: float(offset[b, 2 * t + a, y, xx]),
                            lambda b, t, y, xx: float(mask[b, t, y, xx]), (4, 5))
    diff = (got - ref).abs().max().item()
    print(f"deform_conv2d vs bilinear loop: float64 max abs diff {diff:.3g}")
    assert diff <= 1e-10


@pytest.mark.parametrize("form", ["bilinear taps (eager)", "grid_sample (traced)"])
@pytest.mark.parametrize("stride, dilation, deform_groups", [(1, 1, 1), (2, 1, 2), (1, 2, 4)])
def test_sampled_deform_conv_is_torchvisions_in_value_and_gradient(stride, dilation, deform_groups, form) -> None:
    """Both CPU forms (bilinear taps summed by ``embedding_bag``, or ``grid_sample``, then a matmul) against
    ``torchvision.ops.deform_conv2d`` in float64: outputs and every gradient (input, offsets, masks, weight,
    bias) agree to float64 rounding."""
    from torchvision.ops import deform_conv2d

    from fpn_zoo.layers.deform import _deform_conv_by_grid_sample, sampled_deform_conv2d

    conv = sampled_deform_conv2d if form.startswith("bilinear") else _deform_conv_by_grid_sample

    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 11, dtype=F64, requires_grad=True)
    weight = torch.randn(5, 8, 3, 3, dtype=F64, requires_grad=True)
    bias = torch.randn(5, dtype=F64, requires_grad=True)
    out_h, out_w = (9 - 1) // stride + 1, (11 - 1) // stride + 1  # padding = dilation keeps a 3x3 tap centred
    offset = (2.5 * torch.randn(2, 18 * deform_groups, out_h, out_w, dtype=F64)).requires_grad_()
    mask = torch.rand(2, 9 * deform_groups, out_h, out_w, dtype=F64, requires_grad=True)
    args = (x, offset, weight, bias)
    ours = conv(*args, (stride, stride), (dilation, dilation), (dilation, dilation), mask)
    ref = deform_conv2d(*args, stride=stride, padding=dilation, dilation=dilation, mask=mask)
    assert ours.shape == ref.shape and (ours - ref).abs().max() <= 1e-12
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, [*args, mask], grad), torch.autograd.grad(ref, [*args, mask], grad)):
        assert (a - b).abs().max() <= 1e-10 * (1 + b.abs().max())


def test_grouped_deform_conv_keeps_torchvisions_kernel() -> None:
    conv = ModulatedDeformConv(4, 6, 3, groups=2).double()
    x = torch.randn(1, 4, 5, 5, dtype=F64)
    offset, mask = torch.randn(1, 18, 5, 5, dtype=F64), torch.rand(1, 9, 5, 5, dtype=F64)
    from torchvision.ops import deform_conv2d

    expected = deform_conv2d(x, offset, conv.weight, conv.bias, padding=(1, 1), mask=mask)
    assert torch.equal(conv(x, offset, mask), expected)


def hard_sigmoid(v: float) -> float:
    return min(max((v + 3) / 6, 0.0), 1.0)


def reference_scale_attention(attn: ScaleAttention, x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        pooled = [float(x[b, c].mean()) for c in range(x.shape[1])]
        v = float(attn.conv.bias[0]) + sum(float(attn.conv.weight[0, c, 0, 0]) * p for c, p in enumerate(pooled))
        out[b] = x[b] * hard_sigmoid(max(v, 0.0))
    return out


def reference_dyrelu(act: DyReLU, x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    channels = x.shape[1]
    for b in range(x.shape[0]):
        pooled = x[b].mean(dim=(1, 2))
        hidden = (act.conv1.weight[:, :, 0, 0] @ pooled + act.conv1.bias).clamp(min=0)
        coeffs = [hard_sigmoid(float(v)) - 0.5 for v in act.conv2.weight[:, :, 0, 0] @ hidden + act.conv2.bias]
        for c in range(channels):
            a1, b1 = 2 * coeffs[c] + 1, coeffs[channels + c]
            a2, b2 = 2 * coeffs[2 * channels + c], coeffs[3 * channels + c]
            out[b, c] = torch.maximum(a1 * x[b, c] + b1, a2 * x[b, c] + b2)
    return out


def randomize(module: torch.nn.Module, seed: int = 3) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.5, 0.5)


def test_scale_attention_and_dyrelu_match_hand_computation_float64() -> None:
    scale, dyrelu = ScaleAttention(8).double(), DyReLU(8).double()
    randomize(scale), randomize(dyrelu)
    x = torch.randn(2, 8, 5, 6, dtype=F64)
    with torch.no_grad():
        d_scale = (scale(x) - reference_scale_attention(scale, x)).abs().max().item()
        d_dyrelu = (dyrelu(x) - reference_dyrelu(dyrelu, x)).abs().max().item()
    print(f"scale attention: {d_scale:.3g}, DyReLU: {d_dyrelu:.3g} (float64 max abs diff)")
    assert d_scale <= 1e-10 and d_dyrelu <= 1e-10


def reference_block(block, levels: List[torch.Tensor]) -> List[torch.Tensor]:
    """mmdet's DyHeadBlock with mmcv's DCN reads: the coarser level's DCN reads the middle level's offset/mask
    buffers at flat index ``(channel * h + y) * w + x`` of the coarser size ``h x w``."""
    def dcn(dy, x, offset, mask, size, flat):
        if flat:
            o, m = offset.reshape(offset.shape[0], -1), mask.reshape(mask.shape[0], -1)
            h, w = size
            read_o = lambda b, t, a, y, xx: float(o[b, ((2 * t + a) * h + y) * w + xx])  # noqa: E731
            read_m = lambda b, t, y, xx: float(m[b, (t * h + y) * w + xx])  # noqa: E731
        else:
            read_o = lambda b, t, a, y, xx: float(offset[b, 2 * t + a, y, xx])  # noqa: E731
            read_m = lambda b, t, y, xx: float(mask[b, t, y, xx])  # noqa: E731
        return dy.norm(reference_dcn(dy.conv, x, read_o, read_m, size))

    outs = []
    for i, x in enumerate(levels):
        predicted = F.conv2d(x, block.spatial_conv_offset.weight, block.spatial_conv_offset.bias, padding=1)
        offset, mask = predicted[:, :18], torch.sigmoid(predicted[:, 18:])
        size = tuple(x.shape[-2:])
        terms = [reference_scale_attention(block.scale_attn, dcn(block.spatial_conv_mid, x, offset, mask, size, False))]
        if i > 0:
            low = dcn(block.spatial_conv_low, levels[i - 1], offset, mask, size, False)
            terms.append(reference_scale_attention(block.scale_attn, low))
        if i < len(levels) - 1:
            coarse = tuple(levels[i + 1].shape[-2:])
            high = dcn(block.spatial_conv_high, levels[i + 1], offset, mask, coarse, True)
            high = F.interpolate(high, size=size, mode="bilinear", align_corners=True)
            terms.append(reference_scale_attention(block.scale_attn, high))
        outs.append(reference_dyrelu(block.task_attn, sum(terms) / len(terms)))
    return outs


@pytest.mark.parametrize("sizes", [[(7, 9), (4, 5), (2, 3)], [(6, 9), (3, 4), (1, 2)]], ids=["ceil", "floor"])
def test_block_matches_loop_reference_float64(sizes) -> None:
    spec = FeatureSpec((4, 4, 4), (8, 16, 32))
    neck = fpn_zoo.create_neck("fpn_dyhead", spec, before=None, num_blocks=1, norm_kwargs={"num_groups": 2})
    neck = neck.double().eval()
    randomize(neck)
    with torch.no_grad():
        for block in neck.dyhead_blocks:  # large offsets: taps land between pixels and off the map
            block.spatial_conv_offset.weight.mul_(4)
    torch.manual_seed(1)
    xs = [torch.randn(2, 4, *s, dtype=F64) for s in sizes]
    with torch.no_grad():
        got, ref = neck(xs), reference_block(neck.dyhead_blocks[0], xs)
    diff = max((a - b).abs().max().item() for a, b in zip(got, ref))
    print(f"DyHead block ({sizes}): float64 max abs diff {diff:.3g}")
    assert diff <= 1e-10


@pytest.mark.parametrize("fmt", ["NCHW", "NHWC"])
def test_outputs_match_feature_info_on_odd_sizes(fmt) -> None:
    spec = FeatureSpec((8, 16, 32), (8, 16, 32), fmt)
    neck = fpn_zoo.create_neck("fpn_dyhead", spec, num_blocks=1, before_args={"out_channels": 16, "extra_levels": 1},
                               norm_kwargs={"num_groups": 4})
    xs = [torch.randn(1, c, *s) for c, s in zip(spec.channels, ODD_SIZES)]
    if fmt == "NHWC":
        xs = [x.permute(0, 2, 3, 1) for x in xs]
    outs = neck(xs)
    assert [o.shape[1] for o in outs] == neck.feature_info.channels() == [16] * 4
    assert neck.feature_info.reduction() == [8, 16, 32, 64]
    for out, reduction in zip(outs, neck.feature_info.reduction()):
        assert tuple(out.shape[-2:]) == (math.ceil(225 / reduction), math.ceil(333 / reduction))


def test_every_parameter_gets_a_gradient() -> None:
    neck = fpn_zoo.create_neck("fpn_dyhead", [8, 16, 32], num_blocks=2, out_channels=16,
                               before_args={"out_channels": 8, "extra_levels": 0}, norm_kwargs={"num_groups": 4})
    randomize(neck)  # the default init zeroes the offsets and can leave the scale attention's ReLU off
    with torch.no_grad():
        for block in neck.second.dyhead_blocks:
            block.scale_attn.conv.bias.fill_(1.0)  # its ReLU on: no gradient passes a ReLU at zero
    neck.train()
    loss = sum(o.square().mean() for o in neck([torch.randn(2, c, *s) for c, s in zip([8, 16, 32], ODD_SIZES)]))
    loss.backward()
    missing = [name for name, p in neck.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert [n.split(".")[0] for n, _ in neck.named_parameters()][-1] == "second"


@pytest.mark.parametrize("overrides, error, message", [
    (dict(num_blocks=0), ValueError, "num_blocks must be >= 1"),
    (dict(out_channels=24), ValueError, "out_channels=24 must be a multiple of GroupNorm's num_groups=16"),
    (dict(zero_init_offset="yes"), TypeError, "zero_init_offset must be a bool"),
    (dict(before="fpm"), ValueError, "dyhead: before='fpm': unknown neck 'fpm'; did you mean 'fpn'"),
    (dict(before=3), TypeError, "before must be a registered neck name"),
    (dict(before=None, before_args={"out_channels": 8}), ValueError, "before_args=.* is set but before is None"),
    (dict(before=None), fpn_zoo.BackboneMismatch, "use fpn_dyhead"),
])
def test_bad_knobs_raise_clear_errors(overrides, error, message) -> None:
    with pytest.raises(error, match=message):
        fpn_zoo.create_neck("fpn_dyhead", [8, 16, 32], **overrides)


def test_out_channels_also_sets_the_first_necks_width() -> None:
    neck = fpn_zoo.create_neck("fpn_dyhead", [8, 16, 32], out_channels=32, num_blocks=1)
    assert neck.first.feature_info.channels() == neck.feature_info.channels() == [32] * 5


def test_single_stride_backbone_is_declined_with_a_variant_that_fits() -> None:
    with pytest.raises(fpn_zoo.BackboneMismatch, match="simple_pyramid_fpn"):
        fpn_zoo.create_neck("fpn_dyhead", FeatureSpec((64, 64, 64), (16, 16, 16)))


def test_torch_export_with_dynamic_sizes() -> None:
    """In float64: the exported graph reads the deformable taps through ``grid_sample``, eager through
    ``embedding_bag`` (the same math, summed in another order)."""
    neck = fpn_zoo.create_neck("fpn_dyhead", FeatureSpec((16, 16), (8, 16)), before=None, num_blocks=1).eval()
    randomize(neck)
    neck.double()
    xs = [torch.randn(1, 16, 17, 23, dtype=F64), torch.randn(1, 16, 9, 12, dtype=F64)]
    dims = [{2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}] * 2
    program = torch.export.export(neck, (xs,), dynamic_shapes=(dims,))
    other = [torch.randn(1, 16, 21, 30, dtype=F64), torch.randn(1, 16, 10, 15, dtype=F64)]  # rounds down, not up
    with torch.no_grad():
        for got, expected in zip(program.module()(other), neck(other)):
            assert (got - expected).abs().max().item() <= 1e-10 * expected.abs().max().item()
