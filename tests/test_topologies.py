"""Topologies written as data (NAS-FPN, QuFPN, YAML-defined) and the generic ``graph`` family."""
from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

import fpn_zoo
from fpn_zoo import _registry
from fpn_zoo.layers.fusion import GlobalAttnFusion

CHANNELS = [24, 40, 80]
ODD = [(9, 13), (5, 7), (3, 4)]  # a 65x97 image at strides 8, 16, 32



def maps(channels=CHANNELS, sizes=ODD, batch=2):
    torch.manual_seed(0)
    return [torch.randn(batch, c, h, w) for c, (h, w) in zip(channels, sizes)]


def expected_sizes(sizes, extra):
    out = [tuple(s) for s in sizes]
    for _ in range(extra):
        out.append(tuple((s + 1) // 2 for s in out[-1]))
    return out


@pytest.mark.parametrize("name", ["nasfpn", "qufpn"])
def test_builtin_topologies_are_repeatable_cells(name):
    topology = fpn_zoo.get_topology(name)
    topology.validate()
    assert topology.num_levels == 5
    assert [topology.level_of(i) for i in topology.outputs] == list(range(5))
    assert all(i >= topology.num_levels for i in topology.outputs)


def test_qufpn_is_effdets_graph():
    pytest.importorskip("effdet")
    from effdet.config.fpn_config import qufpn_config

    ours = fpn_zoo.get_topology("qufpn")
    theirs = qufpn_config(3, 7).nodes
    assert [(n.level, list(n.inputs)) for n in ours.nodes] == \
        [(n["feat_level"] - 3, list(n["inputs_offsets"])) for n in theirs]
    assert list(ours.outputs) == list(range(5 + len(theirs) - 5, 5 + len(theirs)))  # effdet: the last 5 nodes


@pytest.mark.parametrize("variant", ["nasfpn", "qufpn"])
def test_variants_shapes_gradients_odd_sizes(variant):
    neck = fpn_zoo.create_neck(variant, CHANNELS, out_channels=16, num_repeats=2).train()
    outs = neck(maps())
    assert [tuple(o.shape[-2:]) for o in outs] == expected_sizes(ODD, 2)
    assert neck.feature_info.reduction() == [8, 16, 32, 64, 128]
    assert neck.feature_info.channels() == [o.shape[1] for o in outs] == [16] * 5
    sum(o.mean() for o in outs).backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in neck.parameters())


@pytest.mark.parametrize("variant", ["nasfpn", "qufpn"])
def test_bf16_autocast(variant):
    neck = fpn_zoo.create_neck(variant, CHANNELS, out_channels=16, num_repeats=2).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs = neck(maps())
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o).all() for o in outs)


def test_nasfpn_blocks_and_merges():
    neck = fpn_zoo.create_neck("nasfpn", CHANNELS, out_channels=16, num_repeats=2)
    assert len(neck.nodes) == 2 * len(fpn_zoo.get_topology("nasfpn").nodes)
    block = neck.nodes["c1_p3_out"].smooth[0]
    assert [n for n, _ in block.named_children()] == ["act", "conv", "norm"]  # ReLU-conv-BN, as in the paper
    assert isinstance(neck.nodes["c0_p4_1"].fuse, GlobalAttnFusion)
    assert isinstance(neck.nodes["c0_p5_gp"].smooth, nn.Identity)
    assert fpn_zoo.neck_cfg("nasfpn").args["num_repeats"] == 7


def test_global_attn_fusion_is_nasfpn_global_pooling():
    torch.manual_seed(0)
    x, gate = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    expected = gate + torch.sigmoid(gate.mean(dim=(2, 3), keepdim=True)) * x
    assert torch.allclose(GlobalAttnFusion()([x, gate]), expected)
    assert GlobalAttnFusion()([gate]) is gate


def test_graph_family_knobs():
    fused = fpn_zoo.create_neck("qufpn", CHANNELS, out_channels=16, num_repeats=1, fusion="sum")
    assert not any(n.endswith("fuse.weight") for n, _ in fused.named_parameters())
    post = fpn_zoo.create_neck("nasfpn", CHANNELS, out_channels=16, num_repeats=1, pre_act=False)
    assert [n for n, _ in post.nodes["p3_out"].smooth[0].named_children()] == ["conv", "norm", "act"]
    always = fpn_zoo.create_neck("nasfpn", [16, 16, 16], out_channels=16, num_repeats=1)
    if_needed = fpn_zoo.create_neck("nasfpn", [16, 16, 16], out_channels=16, num_repeats=1, lateral="if_needed")
    assert sum(p.numel() for p in always.parameters()) > sum(p.numel() for p in if_needed.parameters())
    # a Topology object works as well as a registered name
    direct = fpn_zoo.create_neck("nasfpn", CHANNELS, topology=fpn_zoo.get_topology("qufpn"), out_channels=16)
    assert direct.topology.name == "qufpnx7"
    with pytest.raises(ValueError, match="lateral must be one of"):
        fpn_zoo.create_neck("nasfpn", CHANNELS, lateral="sometimes")
    with pytest.raises(ValueError, match="fusion must be one of"):
        fpn_zoo.create_neck("nasfpn", CHANNELS, fusion="max")
    with pytest.raises(ValueError, match="unknown topology 'nasfpm'; did you mean 'nasfpn'"):
        fpn_zoo.create_neck("nasfpn", CHANNELS, topology="nasfpm")


def test_level_count_mismatch_names_topology_and_counts():
    with pytest.raises(ValueError, match=r"topology 'nasfpn' is written for 5 levels, but this neck has "
                                         r"4 backbone level\(s\) \+ 2 extra level\(s\) = 6; set extra_levels=1"):
        fpn_zoo.create_neck("nasfpn", [8, 16, 32, 64])
    with pytest.raises(ValueError, match=r"'qufpn' is written for 5 levels, but this neck has 3 backbone level\(s\)"):
        fpn_zoo.create_neck("qufpn", CHANNELS, extra_in_graph=False, extra_levels=0)
    four_levels = fpn_zoo.create_neck("nasfpn", [8, 16, 32, 64], extra_levels=1, out_channels=8, num_repeats=1)
    assert len(four_levels.feature_info) == 5


# ------------------------------------------------------------------------------------------ YAML path

TINY = """
topologies:
  tiny_cell:
    num_levels: 3
    nodes:
      - {name: down1, level: 1, inputs: [in1, in2], fusion: fast_attn}
      - {name: down0, level: 0, inputs: [in0, down1], fusion: fast_attn}
      - {name: up1, level: 1, inputs: [in1, down1, down0], fusion: attn}
      - {name: up2, level: 2, inputs: [in2, up1], fusion: concat}
    outputs: [down0, up1, up2]
necks:
  tiny_yaml_neck:
    family: graph
    summary: a neck defined in YAML only
    paper: https://arxiv.org/abs/1904.07392
    tags: [test]
    args: {topology: tiny_cell, num_repeats: 2, out_channels: 8, act: silu, extra_levels: 1}
"""


@pytest.fixture
def yaml_neck():
    _registry._add_document(yaml.safe_load(TINY), "test_topologies.py")
    yield "tiny_yaml_neck"
    _registry._state.variants.pop("tiny_yaml_neck", None)
    _registry._state.topologies.pop("tiny_cell", None)


def test_yaml_defined_topology_end_to_end(yaml_neck):
    assert "tiny_cell" in fpn_zoo.list_topologies()
    neck = fpn_zoo.create_neck(yaml_neck, CHANNELS[:2], reductions=[8, 16]).train()
    outs = neck(maps(CHANNELS[:2], ODD[:2]))
    assert [tuple(o.shape[-2:]) for o in outs] == expected_sizes(ODD[:2], 1)
    assert neck.feature_info.reduction() == [8, 16, 32]
    assert list(neck.nodes) == [f"c{r}_{n}" for r in range(2) for n in ("down1", "down0", "up1", "up2")]
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in neck.parameters())
    with pytest.raises(ValueError, match="'tiny_cell' is written for 3 levels"):
        fpn_zoo.create_neck(yaml_neck, CHANNELS)


MALFORMED = {
    "forward_reference": ("- {name: early, level: 0, inputs: [in0, late]}\n      - {name: late, level: 1, inputs: [in1, early]}",
                          "[early, late]", r"node 'early': inputs names 'late', which is neither an input level"),
    "missing_level": ("- {name: nowhere, level: 3, inputs: [in0, in1]}", "[nowhere]",
                      r"node 'nowhere' \(id 2\): level 3 does not exist"),
    "unused_node": ("- {name: used, level: 0, inputs: [in0, in1]}\n      - {name: orphan, level: 1, inputs: [in1, used]}",
                    "[used, in1]", "node 'orphan' is computed but never used"),
    "unknown_fusion": ("- {name: odd, level: 0, inputs: [in0, in1], fusion: max}", "[odd]",
                       r"node 'odd' \(id 2\): unknown fusion 'max'"),
    "concat_unsmoothed": ("- {name: wide, level: 0, inputs: [in0, in1], fusion: concat, smooth: false}", "[wide]",
                          "node 'wide' .* needs smooth=True"),
    # types are strict: what YAML gives is not coerced
    "inputs_a_string": ("- {name: s, level: 0, inputs: \"in0\"}", "[s]",
                        r"topology 'broken_inputs_a_string', node 's': inputs must be a list of map names .*, got str 'in0'"),
    "integer_ids": ("- {name: ids, level: 0, inputs: [0, 1]}", "[ids]", r"node 'ids': inputs must be a list of map names"),
    "smooth_a_string": ("- {name: s, level: 0, inputs: [in0, in1], smooth: \"false\"}", "[s]",
                        r"node 's': smooth must be true or false, got str 'false'"),
    "fractional_level": ("- {name: f, level: 0.9, inputs: [in0, in1]}", "[f]", r"node 'f': level must be an int, got float 0.9"),
    "boolean_level": ("- {name: b, level: true, inputs: [in0, in1]}", "[b]", r"node 'b': level must be an int, got bool"),
    "misspelt_input": ("- {name: m, level: 0, inputs: [in0, inl]}", "[m]", r"names 'inl'.*did you mean 'in1'"),
    "misspelt_output": ("- {name: node_a, level: 0, inputs: [in0, in1]}", "[node_b]",
                        r"outputs names 'node_b'.*did you mean 'node_a'"),
    "misspelt_key": ("- {name: k, level: 0, inputs: [in0, in1], fusoin: sum}", "[k]",
                     r"node 'k': unknown keys \['fusoin'\]; did you mean 'fusion'"),
    "name_taken": ("- {name: in1, level: 0, inputs: [in0, in1]}", "[in1]", r"the name 'in1' is taken"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_yaml_topology_names_the_node(case):
    nodes, outputs, message = MALFORMED[case]
    doc = f"topologies:\n  broken_{case}:\n    num_levels: 2\n    nodes:\n      {nodes}\n    outputs: {outputs}\n"
    with pytest.raises(ValueError, match=message):
        _registry._add_document(yaml.safe_load(doc), "test_topologies.py")
    assert f"broken_{case}" not in fpn_zoo.list_topologies()


@pytest.mark.parametrize("name", ["nasfpn", "qufpn"])
def test_builtin_topologies_round_trip_through_the_named_form(name):
    topology = fpn_zoo.get_topology(name)
    named = topology.to_dict()
    assert all(isinstance(i, str) for node in named["nodes"] for i in node["inputs"])
    assert type(topology).from_dict(name, named) == topology
