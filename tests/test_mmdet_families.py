"""mmdetection 3.3's neck families (issue 15): each reproduces its mmdet peer weight for weight, and behaves
like every fpn_zoo neck (feature_info true to its outputs, gradients everywhere, clear errors).

Parity runs in float64 (max abs diff <= 1e-10: the same math, not merely close) on odd map sizes where the
peer accepts them, and once per family in float32 (<= 1e-5 relative to the output's scale).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpn_zoo
from _mmdet_peers import mmdet_csp_neck_class, mmdet_layer_class, mmdet_neck_class
from fpn_zoo import FeatureSpec
from fpn_zoo.convert.mmdet_families import from_mmdet_module
from fpn_zoo.necks.fpn_dropblock import fpn_dropblock
from fpn_zoo.necks.ssd_neck import ssd_neck

ODD_SIZES = [(29, 42), (15, 21), (8, 11)]  # strides 8/16/32 of a 225 x 333 image
X2_SIZES = [(32, 44), (16, 22), (8, 11)]  # for peers that upsample by a fixed factor (HRFPN, YOLOV3Neck)
SSD_SIZES = [(76, 89), (38, 45)]  # SSD300's unpadded convs need 3x3 maps at stride 64
FPG_SIZES = [(32, 48), (16, 24), (8, 12)]  # mmdet's FPG upsamples x2 down to P7
_BN = dict(type="BN")
FPG_PAPER = dict(  # mmdet configs/fpg: pre-activated transitions, BN everywhere but the outputs
    inter_channels=8, same_down_trans=None,
    same_up_trans=dict(type="conv", kernel_size=3, stride=2, padding=1, norm_cfg=_BN, inplace=False,
                       order=("act", "conv", "norm")),
    across_lateral_trans=dict(type="conv", kernel_size=1, norm_cfg=_BN, inplace=False, order=("act", "conv", "norm")),
    across_down_trans=dict(type="interpolation_conv", mode="nearest", kernel_size=3, norm_cfg=_BN,
                           order=("act", "conv", "norm"), inplace=False),
    across_up_trans=None,
    across_skip_trans=dict(type="conv", kernel_size=1, norm_cfg=_BN, inplace=False, order=("act", "conv", "norm")),
    output_trans=dict(type="last_conv", kernel_size=3, order=("act", "conv", "norm"), inplace=False),
    norm_cfg=_BN,
)
FPG_SKIPS = [(0, 1, 2), (0, 1), (0,), (), ()]  # the paper's triangle, cut at 3 stages


def randomize_norms(module: nn.Module) -> None:
    """Non-trivial norm weights and running stats, so eval-mode norms are really compared."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.weight is not None:
            m.weight.data.uniform_(0.5, 2), m.bias.data.uniform_(-1, 1)


def inputs(channels: Sequence[int], sizes: Sequence[Tuple[int, int]], dtype=torch.float64) -> List[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(2, c, h, w, dtype=dtype) for c, (h, w) in zip(channels, sizes)]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_peer(module: str, class_name: str, args: tuple, kwargs: Dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    dropblock = kwargs.pop("dropblock", None)
    if dropblock is not None:  # FPN_DropBlock builds its plugin through the registry, which needs mmcv._ext
        kwargs["plugin"] = None
    load = mmdet_csp_neck_class if module in ("yolox_pafpn", "cspnext_pafpn") else mmdet_neck_class
    peer = load(module, class_name)(*args, **kwargs)  # torch's default init (no mmengine logs)
    if dropblock is not None:
        peer.plugin = mmdet_layer_class("dropblock", "DropBlock")(**dropblock)
    with torch.no_grad():
        for p in peer.parameters():  # mmcv zero-inits some layers (non-local out): make every weight count
            if (p == 0).all():
                p.uniform_(-0.2, 0.2)
        if hasattr(peer, "l2_norm"):  # SSD's L2Norm weight is allocated uninitialised
            peer.l2_norm.weight.uniform_(10, 30)
        randomize_norms(peer)
    return peer.eval()


# case: (mmdet file, class, positional args, kwargs, input channels, sizes)
PARITY_CASES: Dict[str, tuple] = {
    "channel_mapper": ("channel_mapper", "ChannelMapper", ([8, 16, 32], 16), {}, [8, 16, 32], ODD_SIZES),
    "channel_mapper_gn_extra2": ("channel_mapper", "ChannelMapper", ([8, 16, 32], 16),
                                 dict(kernel_size=1, norm_cfg=dict(type="GN", num_groups=4), act_cfg=None, num_outs=5),
                                 [8, 16, 32], ODD_SIZES),
    "channel_mapper_bn_lrelu": ("channel_mapper", "ChannelMapper", ([8, 16], 16),
                                dict(norm_cfg=dict(type="BN"), act_cfg=dict(type="LeakyReLU", negative_slope=0.2)),
                                [8, 16], ODD_SIZES[:2]),
    "hrfpn": ("hrfpn", "HRFPN", ([8, 16, 32], 16), dict(num_outs=4), [8, 16, 32], X2_SIZES),
    "hrfpn_max_stride2": ("hrfpn", "HRFPN", ([8, 16, 32], 16), dict(num_outs=3, pooling_type="MAX", stride=2),
                          [8, 16, 32], X2_SIZES),
    "bfp": ("bfp", "BFP", (16, 3), dict(refine_level=1), [16] * 3, ODD_SIZES),
    "bfp_conv_bn": ("bfp", "BFP", (16, 3), dict(refine_level=2, refine_type="conv", norm_cfg=dict(type="BN")),
                    [16] * 3, ODD_SIZES),
    "bfp_non_local": ("bfp", "BFP", (16, 3), dict(refine_level=1, refine_type="non_local"), [16] * 3, ODD_SIZES),
    "bfp_non_local_gn": ("bfp", "BFP", (16, 3),
                         dict(refine_level=0, refine_type="non_local", norm_cfg=dict(type="GN", num_groups=4)),
                         [16] * 3, ODD_SIZES),
    "ssh": ("ssh", "SSH", (3, [8, 16, 32], [16, 16, 32]), {}, [8, 16, 32], ODD_SIZES),
    "ssh_no_norm": ("ssh", "SSH", (2, [8, 16], [8, 16]), dict(norm_cfg=None), [8, 16], ODD_SIZES[:2]),
    "dilated_encoder": ("dilated_encoder", "DilatedEncoder", (32, 16, 8, 2, [2, 4]), {}, [32], ODD_SIZES[1:2]),
    "dilated_encoder_yolof_depth": ("dilated_encoder", "DilatedEncoder", (16, 16, 8, 4, [2, 4, 6, 8]), {}, [8, 16],
                                    ODD_SIZES[:2]),  # a finer map beside it, ignored like mmdet's feature[-1]
    "yolov3_neck": ("yolo_neck", "YOLOV3Neck", (3, [32, 16, 8], [16, 8, 4]), {}, [8, 16, 32], X2_SIZES),
    "yolov3_neck_relu_no_norm": ("yolo_neck", "YOLOV3Neck", (2, [16, 8], [8, 8]),
                                 dict(norm_cfg=None, act_cfg=dict(type="ReLU")), [8, 16], X2_SIZES[:2]),
    "ssd300": ("ssd_neck", "SSDNeck", ([8, 16], [8, 16, 16, 8, 8, 8], [2, 2, 1, 1], [1, 1, 0, 0]), {}, [8, 16],
               SSD_SIZES),
    "ssd512": ("ssd_neck", "SSDNeck", ([8, 16], [8, 16, 16, 8, 8, 8, 8], [2, 2, 2, 2, 1], [1, 1, 1, 1, 1]),
               dict(last_kernel_size=4), [8, 16], SSD_SIZES),
    "ssdlite": ("ssd_neck", "SSDNeck", ([8, 16], [8, 16, 16, 8, 8, 8], [2, 2, 2, 2], [1, 1, 1, 1]),
                dict(l2_norm_scale=None, use_depthwise=True, norm_cfg=dict(type="BN", eps=0.001, momentum=0.03),
                     act_cfg=dict(type="ReLU6")), [8, 16], SSD_SIZES),
    "centernet": ("ct_resnet_neck", "CTResNetNeck", (32, (16, 8, 8), (4, 4, 4)), dict(use_dcn=False), [32],
                  ODD_SIZES[2:]),
    "fpn_dropblock": ("fpn_dropblock", "FPN_DropBlock", ([8, 16, 32], 16, 4),
                      dict(dropblock=dict(drop_prob=0.3, block_size=3, warmup_iters=0)), [8, 16, 32], ODD_SIZES),
    "fpn_dropblock_glip": ("fpn_dropblock", "FPN_DropBlock", ([8, 16, 32], 16, 5),
                           dict(dropblock=dict(drop_prob=0.3, block_size=3, warmup_iters=0),
                                add_extra_convs="on_output", relu_before_extra_convs=True), [8, 16, 32], ODD_SIZES),
    "fpn_dropblock_on_input_bn": ("fpn_dropblock", "FPN_DropBlock", ([8, 16, 32], 16, 4),
                                  dict(add_extra_convs="on_input", norm_cfg=dict(type="BN"), act_cfg=dict(type="ReLU"),
                                       dropblock=dict(drop_prob=0.1, block_size=5, warmup_iters=100)),
                                  [8, 16, 32], ODD_SIZES),
    "yolox_pafpn": ("yolox_pafpn", "YOLOXPAFPN", ([8, 16, 32], 16), dict(num_csp_blocks=2), [8, 16, 32], X2_SIZES),
    "yolox_pafpn_nano": ("yolox_pafpn", "YOLOXPAFPN", ([8, 16, 32], 8), dict(num_csp_blocks=1, use_depthwise=True),
                         [8, 16, 32], X2_SIZES),
    "rtmdet_pafpn": ("cspnext_pafpn", "CSPNeXtPAFPN", ([8, 16, 32], 16),
                     dict(num_csp_blocks=1, act_cfg=dict(type="SiLU")), [8, 16, 32], X2_SIZES),
    "rtmdet_pafpn_depthwise_2_levels": ("cspnext_pafpn", "CSPNeXtPAFPN", ([16, 32], 8),
                                        dict(num_csp_blocks=2, use_depthwise=True, expand_ratio=0.25,
                                             norm_cfg=dict(type="GN", num_groups=2), act_cfg=dict(type="ReLU")),
                                        [16, 32], X2_SIZES[1:]),
    "fpg": ("fpg", "FPG", ([8, 16, 32], 8, 5, 3, ["bu"] * 3), dict(FPG_PAPER, skip_inds=FPG_SKIPS),
            [8, 16, 32], FPG_SIZES),
    "fpg_full_grid_conv_extras": ("fpg", "FPG", ([8, 16], 8, 3, 2, ["bu"] * 2),
                                  dict(FPG_PAPER, skip_inds=[(), (), ()], add_extra_convs=True), [8, 16],
                                  FPG_SIZES[:2]),
}
FLOAT32_CASES = ["channel_mapper_gn_extra2", "hrfpn", "bfp_non_local", "ssh", "dilated_encoder", "yolov3_neck",
                 "ssd300", "centernet", "fpg", "fpn_dropblock_glip", "yolox_pafpn", "rtmdet_pafpn"]
# mmdet modules do not record their inputs' strides (nor SSDNeck its input levels): the backbone levels
FEATURES = {case: FeatureSpec((8, 16), (8, 16)) for case in ("ssd300", "ssd512", "ssdlite")}
# mmdet's L2Norm computes in float32 whatever the input dtype; fpn_zoo's in float64 for float64 maps
FLOAT32_LEVELS = {"ssd300": [0], "ssd512": [0]}
COARSEST_FIRST_PEERS = ("YOLOV3Neck",)  # fpn_zoo returns these finest first
READS_LAST_ONLY = {"dilated_encoder_yolof_depth"}  # the peer takes finer maps and ignores them; ours takes one


def peer_outputs(peer: nn.Module, xs: List[torch.Tensor]) -> List[torch.Tensor]:
    outs = list(peer(xs))
    return outs[::-1] if type(peer).__name__ in COARSEST_FIRST_PEERS else outs


def max_diff(ref: Sequence[torch.Tensor], got: Sequence[torch.Tensor], relative: bool = False) -> float:
    assert len(ref) == len(got)
    worst = 0.0
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        diff = (a - b).abs().max().item()
        worst = max(worst, diff / max(a.abs().max().item(), 1e-12) if relative else diff)
    return worst


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_reproduces_mmdet_in_float64(case, record_property) -> None:
    module, class_name, args, kwargs, channels, sizes = PARITY_CASES[case]
    peer = build_peer(module, class_name, args, kwargs).double()
    neck = from_mmdet_module(peer, FEATURES.get(case))
    assert not neck.training
    assert n_params(neck) == n_params(peer)
    xs = inputs(channels, sizes)
    with torch.no_grad():
        ref, got = peer_outputs(peer, xs), neck(xs[-1:] if case in READS_LAST_ONLY else xs)
    for level in FLOAT32_LEVELS.get(case, []):
        assert max_diff(ref[level:level + 1], got[level:level + 1], relative=True) <= 1e-6
        ref[level] = got[level]
    diff = max_diff(ref, got)
    record_property("max_abs_diff_float64", diff)
    print(f"{case}: float64 max abs diff {diff:.3g}")
    assert diff <= 1e-10


@pytest.mark.parametrize("case", FLOAT32_CASES)
def test_reproduces_mmdet_in_float32(case, record_property) -> None:
    module, class_name, args, kwargs, channels, sizes = PARITY_CASES[case]
    peer = build_peer(module, class_name, args, kwargs)
    neck = from_mmdet_module(peer, FEATURES.get(case))
    xs = inputs(channels, sizes, torch.float32)
    with torch.no_grad():
        diff = max_diff(peer_outputs(peer, xs), neck(xs), relative=True)
    record_property("max_rel_diff_float32", diff)
    print(f"{case}: float32 max relative diff {diff:.3g}")
    assert diff <= 1e-5


# peers whose configuration fpn_zoo does not reproduce: (file, class, args, kwargs, change after build, message)
UNSUPPORTED = {
    "channel_mapper_bias_with_norm": ("channel_mapper", "ChannelMapper", ([8, 16], 16),
                                      dict(norm_cfg=dict(type="BN"), bias=True), None, r"convs\.0\.conv\.bias"),
    "channel_mapper_prelu": ("channel_mapper", "ChannelMapper", ([8, 16], 16), dict(act_cfg=dict(type="PReLU")),
                             None, r"convs\.0\.activate: activation PReLU"),
    "channel_mapper_order": ("channel_mapper", "ChannelMapper", ([8, 16], 16), dict(norm_cfg=dict(type="BN")),
                             lambda peer: setattr(peer.convs[0], "order", ("norm", "conv", "act")), r"convs\.0\.order"),
    "bfp_scaled_attention": ("bfp", "BFP", (16, 3), dict(refine_level=1, refine_type="non_local"),
                             lambda peer: setattr(peer.refine, "use_scale", True), r"BFP\.refine\.use_scale"),
    "ssh_mixed_norms": ("ssh", "SSH", (2, [8, 16], [16, 16]), {},
                        lambda peer: setattr(peer.ssh_module1.context_module.conv5x5_1.bn, "eps", 1e-3),
                        r"SSH\.ssh_module1\.context_module\.conv5x5_1: norm/act .* differ"),
    "dilated_encoder_norm_eps": ("dilated_encoder", "DilatedEncoder", (16, 16, 8, 1, [2]), {},
                                 lambda peer: setattr(peer.lateral_norm, "eps", 1e-3), r"DilatedEncoder\.lateral_norm"),
    "yolov3_neck_mixed_acts": ("yolo_neck", "YOLOV3Neck", (2, [16, 8], [8, 8]), {},
                               lambda peer: setattr(peer.conv1, "activate", nn.ReLU()), r"YOLOV3Neck\.conv1: norm/act"),
    "centernet_dcn": ("ct_resnet_neck", "CTResNetNeck", (32, (16,), (4,)), dict(use_dcn=False),
                      lambda peer: setattr(peer, "use_dcn", True), "CTResNetNeck.use_dcn"),
    "centernet_kernel3": ("ct_resnet_neck", "CTResNetNeck", (32, (16,), (3,)), dict(use_dcn=False), None,
                          r"deconv_layers\.1\.conv: only 4x4 stride-2"),
    "fpn_dropblock_start_level": ("fpn_dropblock", "FPN_DropBlock", ([8, 16, 32], 16, 2),
                                  dict(start_level=1, plugin=None), None,
                                  r"FPN_DropBlock\.start_level/end_level"),
    "yolox_channel_attention": ("yolox_pafpn", "YOLOXPAFPN", ([8, 16], 8), dict(num_csp_blocks=1),
                                lambda peer: setattr(peer.top_down_blocks[0], "channel_attention", True),
                                r"YOLOXPAFPN\.top_down_blocks: channel_attention"),
    "rtmdet_bilinear_x2": ("cspnext_pafpn", "CSPNeXtPAFPN", ([8, 16], 8),
                           dict(num_csp_blocks=1,
                                upsample_cfg=dict(scale_factor=2, mode="bilinear", align_corners=True)),
                           None, r"CSPNeXtPAFPN\.upsample: only x2 upsampling without align_corners"),
    "fpg_top_down": ("fpg", "FPG", ([8, 16], 8, 3, 2, ["bu", "td"]), dict(FPG_PAPER, skip_inds=[(), (), ()]),
                     None, r"FPG\.paths: only bottom-up"),
    "fpg_post_activation": ("fpg", "FPG", ([8, 16], 8, 3, 1, ["bu"]),
                            dict(FPG_PAPER, skip_inds=[(), (), ()],
                                 across_skip_trans=dict(type="conv", kernel_size=1, norm_cfg=_BN)),
                            None, r"FPG\.fpn_transitions\.0\.0\.across_skip\.order"),
    "ssd_without_features": ("ssd_neck", "SSDNeck", ([8, 16], [8, 16, 8], [2], [1]), {}, None,
                             "SSDNeck does not record its input levels: pass features="),
}


@pytest.mark.filterwarnings("ignore:Unnecessary conv bias")
@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_peer_config_is_a_clear_error(case) -> None:
    module, class_name, args, kwargs, change, message = UNSUPPORTED[case]
    peer = build_peer(module, class_name, args, kwargs)
    if change is not None:
        change(peer)
    with pytest.raises(ValueError, match=message):
        from_mmdet_module(peer)


def test_unknown_peer_class_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no fpn_zoo converter for mmdet Linear; supported: .*ChannelMapper"):
        from_mmdet_module(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="takes an mmdet neck module"):
        from_mmdet_module({"convs.0.conv.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------- fpn_zoo-side behaviour

IMAGE = (128, 192)
PYRAMID = FeatureSpec((8, 16, 32), (8, 16, 32))

# variant -> (spec, overrides)
VARIANTS: Dict[str, Tuple[FeatureSpec, Dict[str, Any]]] = {
    "channel_mapper": (PYRAMID, dict(out_channels=16)),
    "deformable_detr_mapper": (PYRAMID, dict(out_channels=16, norm_kwargs={"num_groups": 4})),
    "detr_input_proj": (FeatureSpec((32,), (32,)), dict(out_channels=16)),
    "hrfpn": (PYRAMID, dict(out_channels=16)),
    "hrfpn-floor": (PYRAMID, dict(out_channels=16, ceil_mode=False)),
    "bfp": (FeatureSpec((16, 16, 16), (8, 16, 32)), dict(refine_level=1)),
    "bfp_conv": (FeatureSpec((16, 16, 16), (8, 16, 32)), dict(norm="batchnorm")),
    "ssh": (PYRAMID, dict(out_channels=[16, 16, 32])),
    "yolof_dilated_encoder": (FeatureSpec((32,), (32,)), dict(out_channels=16, block_mid_channels=8)),
    "yolov3_neck": (PYRAMID, {}),
    "yolox_pafpn_s": (PYRAMID, dict(out_channels=16)),
    "rtmdet_pafpn_s": (FeatureSpec((8, 16, 32), (8, 16, 32), "NHWC"), dict(out_channels=16)),
    "fpg": (PYRAMID, dict(out_channels=16, stack_times=3)),
    "centernet_neck": (FeatureSpec((32,), (32,)), dict(widths=(16, 8, 8))),
    "ssdlite_neck": (FeatureSpec((16, 32), (16, 32)), dict(extra_channels=[16, 8, 8, 8])),
}


def spec_inputs(spec: FeatureSpec) -> List[torch.Tensor]:
    torch.manual_seed(0)
    maps = [torch.randn(2, c, math.ceil(IMAGE[0] / r), math.ceil(IMAGE[1] / r))
            for c, r in zip(spec.channels, spec.reductions)]
    return [m.permute(0, 2, 3, 1) for m in maps] if spec.input_fmt == "NHWC" else maps


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_outputs_match_feature_info_and_train(variant) -> None:
    spec, overrides = VARIANTS[variant]
    neck = fpn_zoo.create_neck(variant.split("-")[0], spec, **overrides).train()
    outs = neck(spec_inputs(spec))
    info = neck.feature_info
    assert len(outs) == len(info)
    for out, channels, reduction in zip(outs, info.channels(), info.reduction()):
        assert out.shape[1] == channels
        for size, image in zip(out.shape[-2:], IMAGE):  # a true stride: the map covers the image at it
            assert abs(size * reduction - image) < reduction, (out.shape, reduction)
        assert torch.isfinite(out).all()
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("variant", sorted(v for v, (spec, _) in VARIANTS.items() if spec.input_fmt == "NCHW"))
def test_nhwc_input_gives_the_nchw_result(variant) -> None:
    spec, overrides = VARIANTS[variant]
    variant = variant.split("-")[0]
    neck = fpn_zoo.create_neck(variant, spec, **overrides).eval()
    nhwc = fpn_zoo.create_neck(variant, FeatureSpec(spec.channels, spec.reductions, "NHWC"), **overrides).eval()
    nhwc.load_state_dict(neck.state_dict())
    xs = spec_inputs(spec)
    with torch.no_grad():
        for a, b in zip(neck(xs), nhwc([x.permute(0, 2, 3, 1) for x in xs])):
            assert torch.allclose(a, b, atol=1e-6)


BAD_KNOBS = {
    "channel_mapper_even_kernel": ("channel_mapper", PYRAMID, dict(kernel_size=2),
                                   "kernel_size must be a positive odd"),
    "channel_mapper_bad_norm": ("channel_mapper", PYRAMID, dict(norm="batchnrom"), "unknown norm 'batchnrom'"),
    "hrfpn_pooling": ("hrfpn", PYRAMID, dict(pooling="MAX"), "pooling must be one of"),
    "hrfpn_outputs": ("hrfpn", PYRAMID, dict(num_outputs=0), "num_outputs must be >= 1"),
    "hrfpn_vit": ("hrfpn", FeatureSpec((8, 8), (16, 16)), {}, "simple_pyramid"),
    "bfp_unequal_channels": ("bfp", PYRAMID, {}, r"one channel count, got \[8, 16, 32\]: put it after"),
    "bfp_refine_level": ("bfp", FeatureSpec((8, 8), (8, 16)), dict(refine_level=2),
                         r"refine_level must be an int in \[0, 2\)"),
    "bfp_refine_type": ("bfp", FeatureSpec((8, 8), (8, 16)), dict(refine_level=0, refine_type="nonlocal"),
                        "refine_type must be one of"),
    "ssh_width": ("ssh", PYRAMID, dict(out_channels=10), "multiples of 4"),
    "ssh_widths_length": ("ssh", PYRAMID, dict(out_channels=[8, 8]), "2 entries for 3 levels"),
    "dilated_encoder_pyramid": ("yolof_dilated_encoder", PYRAMID, {}, r"out_indices=\(-1,\)"),
    "dilated_encoder_dilations": ("yolof_dilated_encoder", FeatureSpec((8,), (32,)), dict(dilations=[2, 0]),
                                  "dilations must be a list of positive ints"),
    "yolov3_widths_length": ("yolov3_neck", PYRAMID, dict(out_channels=[8, 8]), "2 entries for 3 levels"),
    "yolov3_vit": ("yolov3_neck", FeatureSpec((8, 8), (16, 16)), {}, "simple_pyramid"),
    "centernet_pyramid": ("centernet_neck", PYRAMID, {}, r"out_indices=\(-1,\)"),
    "centernet_widths": ("centernet_neck", FeatureSpec((8,), (32,)), dict(widths=[]), "non-empty list"),
    "csp_pafpn_block": ("yolox_pafpn", PYRAMID, dict(block="c2f"), "block must be one of"),
    "csp_pafpn_ratio": ("yolox_pafpn", PYRAMID, dict(expand_ratio=0.01), "leaves a CSP branch .* without channels"),
    "csp_pafpn_vit": ("rtmdet_pafpn", FeatureSpec((8, 8), (16, 16)), {}, "simple_pyramid"),
    "fpg_skip_length": ("fpg", PYRAMID, dict(skip_inds=[[0]] * 3), "3 entries for 5 levels"),
    "fpg_skip_stage": ("fpg", PYRAMID, dict(stack_times=2, skip_inds=[[2]] * 5), r"stages \[2, 2, 2, 2, 2\] outside"),
    "fpg_vit": ("fpg", FeatureSpec((8, 8), (16, 16)), {}, "simple_pyramid"),
    "ssd_lengths": ("ssdlite_neck", PYRAMID, dict(strides=[2, 2]), "one entry per extra level, got 4, 2 and 4"),
    "ssd_odd_channels": ("ssdlite_neck", PYRAMID, dict(extra_channels=[8, 7, 8, 8]), "must be even"),
    "ssd_l2_scale": ("ssdlite_neck", PYRAMID, dict(l2_norm_scale=-1.0), "l2_norm_scale must be a non-negative"),
    "ssd_paddings": ("ssdlite_neck", PYRAMID, dict(paddings=[1, 1, -1, 0]), "paddings must be a list of ints >= 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_KNOBS))
def test_bad_knobs_are_clear_errors(case) -> None:
    variant, spec, overrides, message = BAD_KNOBS[case]
    with pytest.raises(ValueError, match=message):
        fpn_zoo.create_neck(variant, spec, **overrides)


def test_dilated_encoder_takes_the_last_map_of_a_single_stride_backbone() -> None:
    vit = FeatureSpec((16, 16), (16, 16))
    neck = fpn_zoo.create_neck("yolof_dilated_encoder", vit, out_channels=16, block_mid_channels=8).eval()
    xs = spec_inputs(vit)
    with torch.no_grad():
        first, = neck(xs)
        again, = neck([torch.zeros_like(xs[0]), xs[1]])
    assert neck.feature_info.reduction() == [16] and first.shape[-2:] == xs[1].shape[-2:]
    assert torch.equal(first, again)  # the finer-block map is not read


def test_yolov3_neck_widths_default_to_half_the_inputs() -> None:
    neck = fpn_zoo.create_neck("yolov3_neck", FeatureSpec((64, 128, 256), (8, 16, 32)))
    assert neck.feature_info.channels() == [32, 64, 128]
    assert neck.detect[0][0].act.negative_slope == 0.1  # YOLOv3's slope, not timm's 0.01


def test_ssd300_unpadded_levels_keep_the_stride_and_trim_the_border() -> None:
    vgg = FeatureSpec((16, 32), (8, 16))  # conv4_3 and fc7 of a 300 px image: 38 and 19
    neck = ssd_neck(vgg, extra_channels=(32, 16, 16, 16)).train()  # the family's defaults are SSD300's
    assert neck.feature_info.reduction() == [8, 16, 32, 64, 64, 64]
    assert neck.feature_info.channels() == [16, 32, 32, 16, 16, 16]
    torch.manual_seed(0)
    outs = neck([torch.randn(2, 16, 38, 38), torch.randn(2, 32, 19, 19)])
    assert [o.shape[-1] for o in outs] == [38, 19, 10, 5, 3, 1]  # SSD300's map sizes
    assert [o.shape[1] for o in outs] == neck.feature_info.channels()
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None for p in neck.parameters())
    l2 = neck([torch.randn(2, 16, 38, 38) * 100, torch.randn(2, 32, 19, 19)])[0]
    assert torch.allclose(l2.norm(dim=1), torch.full_like(l2[:, 0], 20.0), rtol=1e-4)  # scale-free, x20


def test_ssd512_levels() -> None:
    vgg = FeatureSpec((16, 32), (8, 16))  # 512 px: 64 and 32
    neck = ssd_neck(vgg, extra_channels=(32, 16, 16, 16, 16), strides=(2, 2, 2, 2, 1), paddings=(1, 1, 1, 1, 1),
                    last_kernel_size=4).eval()
    assert neck.feature_info.reduction() == [8, 16, 32, 64, 128, 256, 256]
    with torch.no_grad():
        outs = neck([torch.randn(1, 16, 64, 64), torch.randn(1, 32, 32, 32)])
    assert [o.shape[-1] for o in outs] == [64, 32, 16, 8, 4, 2, 1]  # SSD512's map sizes


GLIP = dict(extra_levels=2, extra_op="conv", relu_between_extras=True)  # GLIP's P6/P7


@pytest.mark.parametrize("args", [{}, GLIP], ids=["fpn_dropblock", "glip_fpn_dropblock"])
def test_fpn_dropblock_outputs_match_feature_info_and_train(args) -> None:
    neck = fpn_dropblock(PYRAMID, out_channels=16, **args).train()  # not a registered variant yet: see registry
    outs = neck(spec_inputs(PYRAMID))
    assert [o.shape[1] for o in outs] == neck.feature_info.channels()
    for out, reduction in zip(outs, neck.feature_info.reduction()):
        assert all(abs(size * reduction - image) < reduction for size, image in zip(out.shape[-2:], IMAGE))
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None for p in neck.parameters())


@pytest.mark.parametrize("args, message", [
    (dict(drop_prob=1.5), r"drop_prob must be a number in \[0, 1\]"),
    (dict(block_size=4), "block_size must be odd"),
    (dict(extra_source="on_output"), "extra_source must be one of"),
    (dict(extra_op="maxpool"), "extra_op must be one of"),
])
def test_fpn_dropblock_bad_knobs(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        fpn_dropblock(PYRAMID, **args)


def test_dropblock_drops_blocks_in_training_only() -> None:
    neck = fpn_dropblock(PYRAMID, out_channels=16, drop_prob=0.5)
    xs = spec_inputs(PYRAMID)
    neck.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(neck(xs), neck(xs)))  # deterministic: DropBlock is off
    block = neck.dropblock.train()
    torch.manual_seed(0)
    dropped = block(torch.ones(2, 4, 29, 42, dtype=torch.float64))
    zero = dropped == 0
    assert 0.3 < zero.double().mean() < 0.7  # about drop_prob of the map
    assert torch.allclose(dropped[~zero], torch.full_like(dropped[~zero], dropped.numel() / (~zero).sum().item()))


def test_fpn_dropblock_matches_mmdet_while_training_too() -> None:
    module, class_name, args, kwargs, channels, sizes = PARITY_CASES["fpn_dropblock_glip"]
    peer = build_peer(module, class_name, args, kwargs).train()
    neck = from_mmdet_module(peer)
    assert neck.training
    xs = inputs(channels, sizes, torch.float32)
    outs = []
    for module in (peer, neck):
        torch.manual_seed(3)  # the same blocks drawn on both sides
        with torch.no_grad():
            outs.append(list(module(xs)))
    assert max_diff(*outs, relative=True) <= 1e-6
    with torch.no_grad():
        assert max_diff(outs[1], neck.eval()(xs), relative=True) > 1e-2  # blocks really were dropped


def test_hrfpn_ceil_mode_keeps_every_level_of_a_small_map() -> None:
    spec = FeatureSpec((8, 16, 32), (8, 16, 32))
    small = [torch.randn(1, c, s, s) for c, s in ((8, 9), (16, 5), (32, 3))]  # a 65 px image
    assert [o.shape[-1] for o in fpn_zoo.create_neck("hrfpn", spec, out_channels=8).eval()(small)] == [9, 5, 3, 2, 1]
    with pytest.raises(RuntimeError):  # mmdet's rounding down leaves the 16x pooled level nothing
        fpn_zoo.create_neck("hrfpn", spec, out_channels=8, ceil_mode=False).eval()(small)


@pytest.mark.parametrize("levels, middle", [(1, 0), (3, 1), (5, 2)])
def test_bfp_gathers_at_the_middle_level_by_default(levels, middle) -> None:
    spec = FeatureSpec((8,) * levels, tuple(4 * 2 ** i for i in range(levels)))
    assert fpn_zoo.create_neck("bfp", spec).refine_level == middle  # 2 on P2-P6, as in Libra R-CNN


@pytest.mark.parametrize("size, out", [((29, 42), (15, 21)), ((29, 42), (8, 11)), ((15, 21), (15, 21)),
                                       ((8, 11), (9, 12)), ((16, 20), (8, 10))])
def test_bfp_export_pooling_is_adaptive_max_pooling(size, out) -> None:
    from fpn_zoo.necks.bfp import _max_pool_axis

    x = torch.randn(2, 3, *size, dtype=torch.float64)
    assert torch.equal(_max_pool_axis(_max_pool_axis(x, 2, out[0]), 3, out[1]), F.adaptive_max_pool2d(x, out))


def test_fpg_triangle_grid_joins_levels_late() -> None:
    from fpn_zoo.necks.fpg import triangle_skips

    assert triangle_skips(5, 9) == [[0, 1, 2, 3], [0, 1, 2], [0, 1], [0], []]  # the paper's (mmdet's skip_inds)
    neck = fpn_zoo.create_neck("fpg", PYRAMID, out_channels=8, stack_times=2)
    parts = [[len(neck.stages[stage][level]) for level in range(5)] for stage in range(2)]
    assert parts == [[0, 0, 0, 0, 3], [0, 0, 0, 4, 3]]  # P7 joins at stage 0 (no coarser map), P6 at stage 1
