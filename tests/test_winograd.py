"""The Winograd F(4x4, 3x3) conv: same function as the direct conv, its gradients, and when it is used."""
import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import fpn_zoo
from fpn_zoo.layers import winograd
from fpn_zoo.layers.winograd import MIN_CHANNELS, MIN_PIXELS, WinogradConv2d, winograd_conv3x3

# Sizes: odd, smaller than one tile, one row of tiles, and (with the small chunks below) images split into
# chunks of tile rows, and batches split into chunks of whole images.
SHAPES = [(2, 5, 9, 11), (1, 3, 1, 2), (1, 4, 3, 4), (2, 6, 37, 13), (5, 3, 8, 8)]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(winograd, "_TILES_PER_CHUNK", 8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_forward_equals_direct_conv_in_float64(shape, channels_last, with_bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(7, shape[1], 3, 3, dtype=torch.float64)
    bias = torch.randn(7, dtype=torch.float64) if with_bias else None
    torch.testing.assert_close(winograd_conv3x3(x, weight, bias), F.conv2d(x, weight, bias, padding=1), rtol=0, atol=1e-11)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_equal_the_direct_conv_gradients(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, shape[1], 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(shape[0], 7, *shape[2:], dtype=torch.float64)
    ours = torch.autograd.grad(winograd_conv3x3(x, weight, bias), (x, weight, bias), grad_out)
    direct = torch.autograd.grad(F.conv2d(x, weight, bias, padding=1), (x, weight, bias), grad_out)
    for got, expected, name in zip(ours, direct, ("input", "weight", "bias")):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10, msg=f"{name} gradient differs")


def test_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(winograd_conv3x3, (x, weight, bias))


def test_float32_error_is_a_few_times_the_direct_convs():
    torch.manual_seed(0)
    x = torch.randn(1, 64, 37, 45)
    weight = torch.randn(64, 64, 3, 3) * 0.05
    exact = F.conv2d(x.double(), weight.double(), padding=1)
    scale = exact.abs().max().item()
    winograd_error = (winograd_conv3x3(x, weight) - exact).abs().max().item() / scale
    direct_error = (F.conv2d(x, weight, padding=1) - exact).abs().max().item() / scale
    assert winograd_error < 2e-5
    assert winograd_error < 20 * max(direct_error, 1e-7)


def test_bad_shapes_are_a_value_error():
    with pytest.raises(ValueError, match=r"\(C_out, 4, 3, 3\) weights"):
        winograd_conv3x3(torch.randn(1, 4, 8, 8), torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="NCHW input"):
        winograd_conv3x3(torch.randn(4, 8, 8), torch.randn(2, 4, 3, 3))


def _big_conv(**kwargs) -> WinogradConv2d:
    torch.manual_seed(0)
    return WinogradConv2d(MIN_CHANNELS, MIN_CHANNELS, 3, padding=1, **kwargs)


def _big_input(dtype=torch.float32) -> torch.Tensor:
    side = int(MIN_PIXELS ** 0.5) + 1
    return torch.randn(1, MIN_CHANNELS, side, side, dtype=dtype)


def test_conv_takes_the_winograd_path_only_where_it_applies():
    conv, x = _big_conv(), _big_input()
    assert conv.winograd_applies(x)
    assert not conv.winograd_applies(x[..., :8, :8]), "small maps stay direct"
    assert not conv.winograd_applies(x.double()), "only float32"
    assert not _big_conv(stride=2).winograd_applies(x)
    assert not _big_conv(groups=2).winograd_applies(x)
    assert not _big_conv(dilation=2).winograd_applies(x)
    assert not _big_conv(padding_mode="reflect").winograd_applies(x)
    assert not WinogradConv2d(MIN_CHANNELS, 8, 3, padding=1).winograd_applies(x), "narrow outputs stay direct"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv.winograd_applies(x), "autocast picks its own kernels"
    with mock.patch.object(torch.compiler, "is_compiling", return_value=True):
        assert not conv.winograd_applies(x), "compilers and exporters see a plain conv"
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        assert not conv.winograd_applies(x), "FLOP counters see a plain conv"
        conv(x)
    assert counter.get_total_flops() == 2 * 9 * MIN_CHANNELS ** 2 * x.shape[-2] * x.shape[-1]
    seen_inside_vmap = []
    torch.func.vmap(lambda xi: seen_inside_vmap.append(conv.winograd_applies(xi[None])) or xi)(x)
    assert seen_inside_vmap == [False], "torch.func transforms see a plain conv"
    conv.use_winograd = False
    assert not conv.winograd_applies(x)


def test_conv_module_output_and_gradients_match_the_direct_conv():
    conv, x = _big_conv(), _big_input()
    direct = copy.deepcopy(conv)
    direct.use_winograd = False
    with mock.patch.object(winograd, "winograd_conv3x3", wraps=winograd.winograd_conv3x3) as spy:
        out = conv(x)
    assert spy.called
    expected = direct(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5 * expected.abs().max().item())
    out.square().mean().backward()
    expected.square().mean().backward()
    for ours, theirs in zip(conv.parameters(), direct.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-3, atol=1e-6)


def test_inference_cache_follows_weight_changes():
    conv, x = _big_conv(), _big_input()
    conv.eval()
    with torch.inference_mode():
        before = conv(x)  # fills the cache, in inference mode
    with torch.no_grad():
        conv.weight.mul_(-2.0)  # an in-place update (an optimizer step) bumps the version
    with torch.no_grad():
        after = conv(x)
    torch.testing.assert_close(after - conv.bias.view(1, -1, 1, 1), -2 * (before - conv.bias.view(1, -1, 1, 1)),
                               rtol=1e-4, atol=1e-4)
    conv.load_state_dict({"weight": torch.zeros_like(conv.weight), "bias": torch.ones_like(conv.bias)})
    with torch.no_grad():
        assert torch.equal(conv(x), torch.ones(1, MIN_CHANNELS, *x.shape[-2:]))
    # weights first seen in inference mode must still train
    conv(x).sum().backward()
    assert conv.weight.grad is not None


def test_inference_cache_never_serves_a_replaced_weight():
    conv, x = _big_conv().eval(), _big_input()
    for scale in (1.0, -1.0, 0.5, 2.0):  # replaced parameters: a freed weight's address may be reused
        conv.weight = torch.nn.Parameter(torch.ones_like(conv.weight) * scale * 1e-3)
        with torch.no_grad():
            expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
            torch.testing.assert_close(conv(x), expected, rtol=0, atol=2e-5 * expected.abs().max().item())
    with torch.no_grad():
        conv.weight.data = -conv.weight.data  # new storage, same parameter object
        expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
        torch.testing.assert_close(conv(x), expected, rtol=0, atol=2e-5 * expected.abs().max().item())


def test_module_with_a_filled_cache_pickles_and_copies(tmp_path):
    conv, x = _big_conv().eval(), _big_input()
    with torch.no_grad():
        expected = conv(x)  # fills the cache
    torch.save(conv, tmp_path / "conv.pt")
    for other in (torch.load(tmp_path / "conv.pt", weights_only=False), copy.deepcopy(conv)):
        assert other._cached_weight is None
        with torch.no_grad():
            torch.testing.assert_close(other(x), expected)


def test_state_dict_is_a_plain_conv2d_state_dict():
    conv = _big_conv()
    plain = torch.nn.Conv2d(MIN_CHANNELS, MIN_CHANNELS, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    assert conv.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("training", [False, True])
def test_neck_with_winograd_matches_the_neck_without(training):
    """An FPN whose stride-8 map is big enough: same outputs and gradients as with direct convs."""
    channels = [MIN_CHANNELS, MIN_CHANNELS * 2]
    torch.manual_seed(0)
    neck = fpn_zoo.create_neck("fpn", [dict(num_chs=c, reduction=s) for c, s in zip(channels, (8, 16))],
                               out_channels=MIN_CHANNELS)
    direct = copy.deepcopy(neck)
    for module in direct.modules():
        if isinstance(module, WinogradConv2d):
            module.use_winograd = False
    assert any(isinstance(m, WinogradConv2d) and m.winograd_applies(_big_input()) for m in neck.modules())
    neck.train(training)
    direct.train(training)
    feats = [torch.randn(2, c, 41 // (i + 1), 43 // (i + 1)) for i, c in enumerate(channels)]
    with torch.set_grad_enabled(training):
        ours, theirs = neck(feats), direct(feats)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5 * b.abs().max().item())
    if training:
        sum(o.square().mean() for o in ours).backward()
        sum(o.square().mean() for o in theirs).backward()
        for (name, a), b in zip(neck.named_parameters(), direct.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6, msg=name)


def test_compile_fullgraph_sees_the_direct_conv():
    conv, x = _big_conv().eval(), _big_input()
    compiled = torch.compile(conv, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)


def test_export_writes_a_plain_convolution():
    conv, x = _big_conv().eval(), _big_input()
    program = torch.export.export(conv, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("conv" in t for t in targets), targets
    assert not any("bmm" in t or "mm.default" in t for t in targets), targets


@pytest.mark.parametrize("batch, tiles_h, tiles_w", [(1, 1, 1), (3, 10, 4), (5, 2, 2), (2, 1, 30), (4, 3, 3)])
def test_chunks_cover_every_tile_once_within_the_budget(batch, tiles_h, tiles_w):
    chunks, most = winograd._chunks(batch, tiles_h, tiles_w)
    seen = [(n, row) for c in chunks for n in range(c.first_image, c.last_image) for row in range(c.top, c.bottom)]
    assert sorted(seen) == [(n, row) for n in range(batch) for row in range(tiles_h)]
    assert all(c.images * c.rows * tiles_w <= most for c in chunks)
    assert most <= max(winograd._TILES_PER_CHUNK, tiles_w)  # one tile row is the least a chunk holds
