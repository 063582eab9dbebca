"""The executor: per-node work planned at construction, typed descriptions, BatchNorm folding by name."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fpn_zoo
from fpn_zoo.graph import GraphDescription, GraphNeck, Node
from fpn_zoo.layers import fold

CHANNELS = [16, 32, 64]


def maps(batch=1, size=16):
    torch.manual_seed(0)
    return [torch.randn(batch, c, size >> i, size >> i) for i, c in enumerate(CHANNELS)]


def test_fold_is_the_name_and_fuse_batchnorm_an_alias():
    assert fold.fuse_batchnorm is fold.fold_batchnorm
    neck = fpn_zoo.create_neck("fpn_bn_lrelu_64", CHANNELS).eval()
    with torch.no_grad():
        expected = neck(maps())
        folded = copy.deepcopy(neck).fold_batchnorm()
        got = folded(maps())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not hasattr(GraphNeck, "fuse")


def test_state_dict_keys_keep_their_names():
    """The fusion op stays the child 'fuse' (checkpoints hold nodes.<n>.fuse.weight)."""
    keys = fpn_zoo.create_neck("bifpn", CHANNELS, num_repeats=1).state_dict().keys()
    assert "nodes.c0_td0.fuse.weight" in keys
    assert "nodes.td0.edges.0.proj.conv.weight" in fpn_zoo.create_neck("fpn", CHANNELS).state_dict()


def test_describe_is_a_frozen_dataclass():
    neck = fpn_zoo.create_neck("fpn_p6p7", CHANNELS, out_channels=8)
    desc = neck.describe()
    assert isinstance(desc, GraphDescription) and isinstance(desc.nodes[0], Node)
    assert (desc.topology, desc.input_levels, desc.extra_levels, desc.extra_op) == ("fpn3", 3, 2, "conv")
    with pytest.raises(AttributeError):
        desc.out_channels = 3  # frozen


def test_the_forward_calls_no_routing_or_identity_module():
    """Only modules with work to do are called; the count is what the math needs (plus the blocks)."""
    neck = fpn_zoo.create_neck("fpn", CHANNELS, out_channels=8).eval()
    called = []
    handles = [m.register_forward_pre_hook(lambda m, a: called.append(type(m).__name__)) for m in neck.modules()]
    neck(maps())
    for h in handles:
        h.remove()
    assert set(called) == {"GraphNeck", "ConvNormAct", "Conv2d"}
    assert called.count("Conv2d") == 6  # 3 laterals + 3 output convs
    assert len(called) == 1 + 2 * 6  # the neck, and each conv block with its conv: as torchvision's FPN


def test_hooks_on_conv_blocks_still_fire():
    neck = fpn_zoo.create_neck("pan", CHANNELS, out_channels=8).eval()
    seen = []
    neck.nodes["bu1"].edges[1].down.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    neck.nodes["out2"].smooth[0].conv.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    neck(maps())
    assert seen == [torch.Size([1, 8, 8, 8]), torch.Size([1, 8, 4, 4])]


def test_assigned_blocks_are_used():
    """Replacing a node's smooth/fuse or an edge's proj/down by assignment changes what runs."""
    neck = fpn_zoo.create_neck("fpn", CHANNELS, out_channels=8).eval()
    with torch.no_grad():
        before = neck(maps())
        neck.nodes["out0"].smooth = nn.Identity()
        neck.nodes["td2"].edges[0].proj = nn.Conv2d(64, 8, 1)
        after = neck(maps())
    assert not torch.equal(before[0], after[0]) and not torch.equal(before[2], after[2])


def test_sync_batchnorm_conversion_is_seen_by_the_plan():
    neck = fpn_zoo.create_neck("pan_bn_lrelu_64", CHANNELS).eval()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(neck))
    hits = []
    for m in synced.modules():
        if isinstance(m, nn.SyncBatchNorm):
            m.register_forward_pre_hook(lambda m, a: hits.append(1))
    with torch.no_grad():
        for a, b in zip(neck(maps()), synced(maps())):
            torch.testing.assert_close(a, b)
    assert len(hits) == sum(isinstance(m, nn.BatchNorm2d) for m in neck.modules())
