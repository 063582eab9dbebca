"""The YOLO-style CSP-PAN: topology, CSP blocks, width/depth scaling, variants on timm backbones."""
from __future__ import annotations

import math

import pytest
import torch

import fpn_zoo
from conftest import backbone, features
from fpn_zoo import FeatureSpec
from fpn_zoo.layers.fusion import ConcatFusion
from fpn_zoo.necks.csp_pan import CSPBlock, csp_pan_topology

VARIANTS = ["csp_pan_n", "csp_pan_s", "csp_pan_m", "csp_pan_l"]
REFERENCE = [64, 128, 256]  # a CNN's C3-C5


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("num_levels", [2, 3, 5])
def test_topology_is_top_down_then_bottom_up_with_concat(num_levels: int) -> None:
    topo = csp_pan_topology(num_levels)
    topo.validate()
    assert [topo.level_of(i) for i in topo.outputs] == list(range(num_levels))
    names = [topo.nodes[i - num_levels].name for i in topo.outputs]
    assert names == ["td0"] + [f"bu{l}" for l in range(1, num_levels)]
    assert all(n.fusion == "concat" and n.smooth for n in topo.nodes if n.name[:2] in ("td", "bu"))
    assert all(n.downsample == "conv" for n in topo.nodes if n.name.startswith("bu"))


@pytest.mark.parametrize("kind", ["cnn", "nhwc"])
@pytest.mark.parametrize("size", [(64, 96), (65, 97)])
def test_shapes_strides_and_gradients(kind: str, size) -> None:
    model = backbone(kind)
    neck = fpn_zoo.create_neck("csp_pan_n", model)
    assert neck.feature_info.reduction() == model.feature_info.reduction()
    neck.train()
    outs = neck(features(kind, *size))
    for out, channels, reduction in zip(outs, neck.feature_info.channels(), neck.feature_info.reduction()):
        assert out.shape[1] == channels == 64
        for got, full in zip(out.shape[-2:], size):
            assert math.floor(full / reduction) <= got <= math.ceil(full / reduction)
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


def test_nodes_concat_and_smooth_with_csp_blocks() -> None:
    neck = fpn_zoo.create_neck("csp_pan_s", REFERENCE)
    for name in ("td0", "td1", "bu1", "bu2"):
        node = neck.nodes[name]
        assert isinstance(node.fuse, ConcatFusion)
        assert isinstance(node.smooth, CSPBlock)
        assert node.smooth.split.conv.in_channels == 2 * 128
    assert isinstance(neck.nodes["bu1"].edges[0].down.conv, torch.nn.Conv2d)
    assert neck.nodes["bu1"].edges[0].down.conv.stride == (2, 2)
    assert type(neck.nodes["td0"].smooth.split.act).__name__ == "SiLU"
    assert neck.nodes["td0"].smooth.split.norm.eps == pytest.approx(1e-3)


def test_variants_grow_in_width_and_depth() -> None:
    necks = [fpn_zoo.create_neck(name, REFERENCE) for name in VARIANTS]
    widths = [n.feature_info.channels()[0] for n in necks]
    depths = [len(n.nodes["td0"].smooth.blocks) for n in necks]
    params = [n_params(n) for n in necks]
    assert widths == [fpn_zoo.neck_cfg(name).args["out_channels"] for name in VARIANTS]
    assert depths == [fpn_zoo.neck_cfg(name).args["num_blocks"] for name in VARIANTS]
    assert widths == sorted(set(widths)) and depths == sorted(depths)
    assert params == sorted(set(params))


@pytest.mark.parametrize("out_channels, widen, num_blocks, deepen", [(256, 0.25, 3, 0.33), (128, 0.3, 3, 0.67)])
def test_widen_and_deepen_factors(out_channels, widen, num_blocks, deepen) -> None:
    neck = fpn_zoo.create_neck("csp_pan_l", REFERENCE, out_channels=out_channels, widen_factor=widen,
                               num_blocks=num_blocks, deepen_factor=deepen)
    width = neck.feature_info.channels()[0]
    assert width % 8 == 0 and out_channels * widen <= width < out_channels * widen + 8
    assert len(neck.nodes["bu2"].smooth.blocks) == max(1, round(num_blocks * deepen))


@pytest.mark.parametrize("style, merged", [("c2f", lambda n: 2 + n), ("c3", lambda n: 2)])
def test_csp_block_styles(style, merged) -> None:
    block = CSPBlock(32, 16, 2, style=style)
    hidden = 8
    assert block.merge.conv.in_channels == merged(2) * hidden
    out = block(torch.randn(2, 32, 5, 7, requires_grad=True))
    assert out.shape == (2, 16, 5, 7)
    out.mean().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_separable_is_lighter() -> None:
    dense = fpn_zoo.create_neck("csp_pan_s", REFERENCE)
    light = fpn_zoo.create_neck("csp_pan_s", REFERENCE, separable=True)
    assert n_params(light) < n_params(dense)


def test_extra_levels() -> None:
    neck = fpn_zoo.create_neck("csp_pan_n", backbone("cnn"), extra_levels=2, extra_op="conv")
    assert neck.feature_info.reduction() == [8, 16, 32, 64, 128]
    outs = neck.eval()(features("cnn"))
    assert [tuple(o.shape[-2:]) for o in outs][-2:] == [(1, 2), (1, 1)]


def test_single_level_backbone_is_declined_naming_a_fitting_variant() -> None:
    with pytest.raises(fpn_zoo.BackboneMismatch, match="simple_pyramid_fpn") as err:
        fpn_zoo.create_neck("csp_pan_s", [64], reductions=[16])
    assert fpn_zoo.is_neck("simple_pyramid_fpn"), str(err.value)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(csp_block="c4"), ValueError, "csp_block"),
    (dict(widen_factor=0), ValueError, "widen_factor"),
    (dict(deepen_factor=-1.0), ValueError, "deepen_factor"),
    (dict(num_blocks=0), ValueError, "num_blocks"),
    (dict(upsample_mode="linear"), ValueError, "upsample_mode"),
    (dict(smooth_depth=2), ValueError, "takes no argument 'smooth_depth'"),
    (dict(norm="batchnrom"), ValueError, "did you mean"),
])
def test_bad_knobs_are_clear(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        fpn_zoo.create_neck("csp_pan_s", REFERENCE, **kwargs)


def test_a_vit_gets_a_csp_pan_through_the_simple_pyramid() -> None:
    neck = fpn_zoo.create_neck("simple_pyramid", FeatureSpec((32,), (16,)), out_channels=16, then="csp_pan_n",
                               then_args={"out_channels": 24})
    assert neck.feature_info.channels() == [24] * 4
    outs = neck.train()([torch.randn(2, 32, 5, 7)])
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in neck.parameters())
