"""BiFPN: the cell topology, stacking, shapes and strides, gradients, autocast, knobs, and parity with effdet."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fpn_zoo
from conftest import backbone, features
from fpn_zoo.graph import Node, Topology
from fpn_zoo.graph import stack_cells
from fpn_zoo.layers.blocks import ActConvNorm
from fpn_zoo.layers.fusion import WeightedFusion, weighted_sum
from fpn_zoo.necks.bifpn import bifpn_cell, bifpn_topology

CHANNELS = [24, 40, 80]



def maps(channels, sizes, batch=2):
    torch.manual_seed(0)
    return [torch.randn(batch, c, h, w) for c, (h, w) in zip(channels, sizes)]


def test_cell_structure():
    for num_levels in (2, 3, 5):
        cell = bifpn_cell(num_levels)
        cell.validate()
        assert len(cell.nodes) == 2 * num_levels - 2
        assert [cell.level_of(i) for i in cell.outputs] == list(range(num_levels))
        for node in cell.nodes:
            # every node reads its own level's input first, and one neighbour level
            assert node.inputs[0] == node.level
            neighbours = {cell.level_of(i) for i in node.inputs} - {node.level}
            assert len(neighbours) == 1 and abs(neighbours.pop() - node.level) == 1
        middle = [n for n in cell.nodes if n.name.startswith("bu") and n.level < num_levels - 1]
        assert all(len(n.inputs) == 3 for n in middle)
    with pytest.raises(ValueError, match="at least 2 levels"):
        bifpn_cell(1)


def test_stack_cells_feeds_each_cell_the_previous_outputs():
    cell = bifpn_cell(3)
    stacked = bifpn_topology(3, num_repeats=3)
    k = len(cell.nodes)
    assert len(stacked.nodes) == 3 * k
    assert [n.name for n in stacked.nodes[k:2 * k]] == [f"c1_{n.name}" for n in cell.nodes]
    second_cell_reads = {i for n in stacked.nodes[k:2 * k] for i in n.inputs if i < 3 + k}
    assert second_cell_reads == set(cell.outputs)  # cell 0 keeps its ids; cell 1 reads only its outputs
    assert all(stacked.level_of(i) == level for level, i in enumerate(stacked.outputs))
    assert min(stacked.outputs) >= 3 + 2 * k


def test_stack_cells_rejects_cells_that_cannot_feed_themselves():
    one_output = Topology("one_output", 2, (Node("a", 0, (0, 1)), Node("b", 1, (1, 2))), outputs=(3,))
    with pytest.raises(ValueError, match=r"'one_output' cannot be repeated: its outputs are at levels \[1\]"):
        stack_cells(one_output, 2)
    deaf = Topology("deaf", 2, (Node("a", 0, (0,)), Node("b", 1, (2,))), outputs=(2, 3))
    with pytest.raises(ValueError, match=r"'deaf' cannot be repeated: it never reads level\(s\) \[1\]"):
        stack_cells(deaf, 2)
    assert len(stack_cells(deaf, 1).nodes) == 2


@pytest.mark.parametrize("kind", ["cnn", "nhwc", "vit"])
@pytest.mark.parametrize("size", [(64, 96), (65, 97)])
def test_shapes_and_strides_match_feature_info(kind, size):
    if kind == "vit" and size[0] % 16:
        pytest.skip("the ViT patch embedding needs multiples of 16")
    model = backbone(kind)
    neck = fpn_zoo.create_neck("bifpn", model, out_channels=16, num_repeats=2).eval()
    feats = features(kind, *size)
    with torch.no_grad():
        outs = neck(feats)
    reductions = list(model.feature_info.reduction())
    assert neck.feature_info.reduction() == reductions + [reductions[-1] * 2, reductions[-1] * 4]
    assert neck.feature_info.channels() == [16] * len(outs)
    nhwc = neck.spec.input_fmt == "NHWC"
    expected = [tuple(f.shape[1:3] if nhwc else f.shape[-2:]) for f in feats]
    for _ in range(2):
        expected.append(tuple(math.ceil(s / 2) for s in expected[-1]))  # 3x3 stride-2 pools, padding 1
    assert [tuple(o.shape[-2:]) for o in outs] == expected
    assert all(o.shape[:2] == (2, 16) and torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("fusion", ["fast_attn", "attn", "sum"])
def test_every_parameter_gets_a_finite_gradient(fusion):
    neck = fpn_zoo.create_neck("bifpn", CHANNELS, out_channels=16, num_repeats=2, fusion=fusion).train()
    outs = neck(maps(CHANNELS, [(9, 13), (5, 7), (3, 4)]))
    sum(o.mean() for o in outs).backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in neck.parameters())
    weighted = [n for n, _ in neck.named_parameters() if n.endswith("fuse.weight")]
    assert bool(weighted) == (fusion != "sum")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_weighted_sum_gradients_are_the_plain_expressions(layout):
    """The weighted sum against ``w0 * x0 + w1 * x1 + w2 * x2`` written out, in float64: the fused inference
    pass (in-place multiply-adds) and the gradients; gradcheck / gradgradcheck."""
    torch.manual_seed(0)
    xs = [torch.randn(2, 5, 6, 7, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
          for _ in range(3)]
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    fused = weighted_sum(xs, w)
    plain = xs[0] * w[0] + xs[1] * w[1] + xs[2] * w[2]
    with torch.no_grad():
        assert (weighted_sum(xs, w) - plain).abs().max() <= 1e-15 * (1 + plain.abs().max())
    grad = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad(fused, [w, *xs], grad), torch.autograd.grad(plain, [w, *xs], grad)):
        assert (a - b).abs().max() <= 1e-13 * (1 + b.abs().max())
    assert torch.autograd.gradcheck(lambda w, *xs: weighted_sum(xs, w), (w, *xs))
    assert torch.autograd.gradgradcheck(lambda w, *xs: weighted_sum(xs, w), (w, *xs))


def test_weighted_sum_with_frozen_weights_or_maps():
    xs = [torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True), torch.randn(1, 3, 4, 4, dtype=torch.float64)]
    w = torch.tensor([0.25, 0.75], dtype=torch.float64)
    out = weighted_sum(xs, w)
    (g,) = torch.autograd.grad(out.sum(), [xs[0]])
    assert torch.equal(g, torch.full_like(g, 0.25))
    with torch.no_grad():
        assert (weighted_sum(xs, w) - (xs[0] * 0.25 + xs[1] * 0.75)).abs().max() <= 1e-15  # a fused multiply-add may round once


@pytest.mark.parametrize("method", ["fast_attn", "attn"])
def test_cpu_inference_weights_are_the_tensor_path_in_float64(method):
    """Inference on the CPU normalises the weights as Python numbers: the same values as the tensor path (to
    float64 rounding), including negative weights that fast_attn's ReLU zeroes; outputs to float32 rounding."""
    fuse = WeightedFusion(3, method)
    with torch.no_grad():
        fuse.weight.copy_(torch.tensor([0.7, -0.2, 1.9]))
    ref = fuse.normalized_weights(torch.float64)
    assert max(abs(a - b) for a, b in zip(fuse.float_weights(), ref.tolist())) <= 1e-15
    xs = [torch.randn(2, 4, 5, 6) for _ in range(3)]
    with torch.no_grad():
        fast = fuse(xs)
    exact = sum(x.double() * w for x, w in zip(xs, ref.tolist()))
    # float32 rounding: the weights (sum, eps, divide: 4 roundings), each product (1), the running sum (2)
    bound = 8 * torch.finfo(torch.float32).eps * sum(x.double().abs() * abs(w) for x, w in zip(xs, ref.tolist()))
    assert ((fast.double() - exact).abs() <= bound).all()
    assert ((fuse(xs).double() - exact).abs() <= bound).all()  # with autograd: the tensor path


def test_bf16_autocast():
    neck = fpn_zoo.create_neck("bifpn", CHANNELS, out_channels=16, num_repeats=2).eval()
    feats = maps(CHANNELS, [(16, 16), (8, 8), (4, 4)])
    with torch.no_grad():
        ref = neck(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = neck(feats)
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o).all() for o in outs)
    assert all((o.float() - r).abs().max() < 0.1 * r.abs().max() + 0.1 for o, r in zip(outs, ref))


def test_blocks_follow_effdet_order_and_knobs():
    neck = fpn_zoo.create_neck("bifpn", CHANNELS, out_channels=16, num_repeats=1)
    block = neck.nodes["c0_bu1"].smooth[0]
    assert isinstance(block, ActConvNorm)
    assert [name for name, _ in block.named_children()] == ["act", "conv_dw", "conv_pw", "norm"]
    assert isinstance(block.act, nn.SiLU) and not block.act.inplace
    assert block.norm.eps == pytest.approx(1e-3) and block.norm.momentum == pytest.approx(0.01)
    # backbone maps are projected only where channels differ, once per edge, without activation
    lateral = fpn_zoo.create_neck("bifpn", [16, 40, 80], out_channels=16, num_repeats=1)
    assert isinstance(lateral.nodes["c0_td0"].edges[0].proj, nn.Identity)
    assert [n for n, _ in lateral.nodes["c0_td1"].edges[0].proj.named_children()] == ["conv", "norm"]

    plain = fpn_zoo.create_neck("bifpn", CHANNELS, out_channels=16, num_repeats=1, separable=False, norm=None,
                                act="relu", smooth_depth=2)
    blocks = plain.nodes["c0_bu1"].smooth
    assert len(blocks) == 2 and all(b.conv.bias is not None and not hasattr(b, "norm") for b in blocks)
    gn = fpn_zoo.create_neck("bifpn", CHANNELS, out_channels=16, num_repeats=1, norm="groupnorm",
                             norm_kwargs={"num_groups": 4})
    assert isinstance(gn.nodes["c0_bu1"].smooth[0].norm, nn.GroupNorm)


@pytest.mark.parametrize("extra_op", ["maxpool", "subsample", "conv"])
def test_extra_ops_keep_the_extra_levels_intact(extra_op):
    neck = fpn_zoo.create_neck("bifpn", CHANNELS, out_channels=16, num_repeats=1, extra_op=extra_op).eval()
    feats = maps(CHANNELS, [(16, 16), (8, 8), (4, 4)], batch=1)
    with torch.no_grad():
        extras = neck.extras(feats[-1])
        assert [tuple(e.shape[-2:]) for e in extras] == [(2, 2), (1, 1)]
        if extra_op == "conv":  # the activation between conv levels must not change the level it reads
            assert torch.equal(extras[0], neck.extras.convs[0](feats[-1]))


def test_knobs_that_cannot_apply_raise_clearly():
    with pytest.raises(ValueError, match="extra_source='output' cannot apply"):
        fpn_zoo.create_neck("bifpn", CHANNELS, extra_source="output")
    with pytest.raises(ValueError, match="fusion must be one of"):
        fpn_zoo.create_neck("bifpn", CHANNELS, fusion="concat")
    with pytest.raises(ValueError, match="num_repeats must be >= 1"):
        fpn_zoo.create_neck("bifpn", CHANNELS, num_repeats=0)
    with pytest.raises(ValueError, match="set extra_levels >= 1"):
        fpn_zoo.create_neck("bifpn", [64], extra_levels=0)
    with pytest.raises(ValueError, match="takes no argument 'topology'"):
        fpn_zoo.create_neck("bifpn", CHANNELS, topology="nasfpn")


def test_variants_scale_like_efficientdet():
    widths, repeats = [64, 88, 112, 160, 224, 288, 384, 384], [3, 4, 5, 6, 7, 7, 8, 8]
    names = ["bifpn"] + [f"bifpn_d{k}" for k in range(1, 8)]
    for name, width, rep in zip(names, widths, repeats):
        cfg = fpn_zoo.neck_cfg(name)
        assert (cfg.args["out_channels"], cfg.args["num_repeats"], cfg.args["extra_levels"]) == (width, rep, 2)
        assert cfg.summary and cfg.paper.startswith("https://") and cfg.tags
    small = fpn_zoo.create_neck("bifpn_d1", CHANNELS)
    assert len(small.nodes) == 4 * 8 and small.feature_info.channels() == [88] * 5


# ------------------------------------------------------------------------------------- parity with effdet

def _effdet_bifpn(fpn_name: str):
    pytest.importorskip("effdet")
    from effdet import get_efficientdet_config
    from effdet.config import set_config_writeable
    from effdet.efficientdet import BiFpn

    config = get_efficientdet_config("efficientdet_d0")  # pad_type '': PyTorch padding
    set_config_writeable(config)
    config.image_size = (128, 128)  # feature sizes are fixed from it: 16, 8, 4, 2, 1 px for P3-P7
    config.fpn_name = fpn_name
    info = [dict(num_chs=c, reduction=r) for c, r in ((40, 8), (112, 16), (320, 32))]
    torch.manual_seed(0)
    theirs = BiFpn(config, [dict(d) for d in info]).eval()
    for m in theirs.modules():  # non-trivial statistics and weights, so a mismapped tensor shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    for name, p in theirs.named_parameters():
        if name.endswith("edge_weights"):
            nn.init.normal_(p)
    return theirs, info


@pytest.mark.parametrize("fpn_name, variant, overrides", [
    ("bifpn_fa", "bifpn", {}),
    ("bifpn_attn", "bifpn", {"fusion": "attn"}),
    ("bifpn_sum", "bifpn", {"fusion": "sum"}),
    ("qufpn_fa", "qufpn", {}),
])
def test_effdet_parity(fpn_name, variant, overrides):
    from fpn_zoo.convert.effdet import from_effdet_bifpn

    theirs, info = _effdet_bifpn(fpn_name)
    ours = fpn_zoo.create_neck(variant, info, **overrides).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    ours.load_state_dict(from_effdet_bifpn(theirs, ours))
    feats = maps([40, 112, 320], [(16, 16), (8, 8), (4, 4)])
    with torch.no_grad():
        expected = theirs(list(feats))  # effdet appends to the list it is given
        outs = ours(feats)
    assert len(outs) == len(expected) == 5
    for level, (a, b) in enumerate(zip(outs, expected)):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5, f"level {level}"


def test_effdet_topology_is_effdets():
    pytest.importorskip("effdet")
    from effdet.config.fpn_config import bifpn_config

    for num_levels in (3, 5):
        effdet_nodes = bifpn_config(3, 3 + num_levels - 1).nodes
        ours = bifpn_cell(num_levels)
        assert [(n.level, list(n.inputs)) for n in ours.nodes] == \
            [(n["feat_level"] - 3, list(n["inputs_offsets"])) for n in effdet_nodes]


def test_effdet_converter_names_the_mismatch():
    from fpn_zoo.convert.effdet import from_effdet_bifpn

    theirs, info = _effdet_bifpn("bifpn_fa")
    with pytest.raises(ValueError, match="num_repeats=3"):
        from_effdet_bifpn(theirs, fpn_zoo.create_neck("bifpn", info, num_repeats=2))
    with pytest.raises(ValueError, match="shape"):
        from_effdet_bifpn(theirs, fpn_zoo.create_neck("bifpn", info, out_channels=32))
    with pytest.raises(ValueError, match="missing"):
        from_effdet_bifpn(theirs, fpn_zoo.create_neck("bifpn", info, separable=False))
    whole = {f"fpn.{k}": v for k, v in theirs.state_dict().items()}  # an EfficientDet's state dict
    ours = fpn_zoo.create_neck("bifpn", info)
    ours.load_state_dict(from_effdet_bifpn(whole, ours))
