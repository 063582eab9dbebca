"""``docs/parity.md``: family -> reference implementation -> converter call -> max abs diff, measured.

:data:`PARITY` is the source of truth: one :class:`ParityCase` per (family, reference). A case with a
``build`` is measured when the page is generated: the peer is built small with random weights (and random
norm statistics), converted with :func:`fpn_zoo.convert.from_module` (or the case's ``convert``), and both run
on the same random maps of odd sizes where the peer accepts them, in float64 and in float32. A case without
``build`` is a family whose reference cannot run here; its ``note`` says why. :data:`NOT_COVERED` lists the
peers' necks that are no family here, and why (a second table on the page).

The diffs are written as powers of ten (``<= 1e-15``), so ``--check`` compares stable text across machines
whose float32 rounding differs in the last bits; ``0`` is an exact match. A peer that is not installed
shows as ``not measured``.

Adding a row for a new converter: append a ``ParityCase`` whose ``build`` returns a :class:`Peer`.
"""
from __future__ import annotations

import importlib
import math
import sys
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from fpn_zoo import FeatureSpec, list_families

from .markdown import GENERATED_NOTE, md_table

__all__ = ["Peer", "ParityCase", "PARITY", "NotCovered", "NOT_COVERED", "measure_case", "render_parity", "diff_cell"]

ODD = [(29, 42), (15, 21), (8, 11)]  # strides 8/16/32 of a 225 x 333 image
X2 = [(32, 44), (16, 22), (8, 11)]  # for peers that upsample by a fixed factor


@dataclass
class Peer:
    """A built peer neck and how to run it."""

    module: nn.Module
    channels: Sequence[int]
    sizes: Sequence[Tuple[int, int]]
    run: Callable[[nn.Module, List[torch.Tensor]], List[torch.Tensor]] = lambda m, xs: list(m(xs))
    hints: Dict[str, Any] = field(default_factory=dict)
    neck_inputs: Callable[[List[torch.Tensor]], List[torch.Tensor]] = lambda xs: xs


@dataclass(frozen=True)
class ParityCase:
    """One row of the table."""

    family: str
    reference: str
    call: str
    build: Optional[Callable[[], Peer]] = None
    note: str = ""
    convert: Optional[Callable[[nn.Module], nn.Module]] = None


@dataclass(frozen=True)
class NotCovered:
    """A peer's neck that is no family here, and why."""

    reference: str
    reason: str


# ------------------------------------------------------------------------------------------ the peers

_NECKS, _MODELS = "_fpn_zoo_mmdet_necks", "_fpn_zoo_mmdet_models"  # the stand-ins tests/_mmdet_peers.py uses


def _stand_in(name: str, folder: Path) -> None:
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package


def _mmdet_class(module: str, class_name: str) -> type:
    """mmdet 3.3's neck class, its file loaded alone (``mmdet.models`` needs compiled mmcv ops)."""
    models = Path(importlib.import_module("mmdet").__file__).parent / "models"
    if module in ("yolox_pafpn", "cspnext_pafpn"):  # they import ..layers.CSPLayer
        _stand_in(_MODELS, models)
        _stand_in(f"{_MODELS}.layers", models / "layers")
        layers = sys.modules[f"{_MODELS}.layers"]
        layers.CSPLayer = importlib.import_module(f"{_MODELS}.layers.csp_layer").CSPLayer  # type: ignore[attr-defined]
        _stand_in(f"{_MODELS}.necks", models / "necks")
        return getattr(importlib.import_module(f"{_MODELS}.necks.{module}"), class_name)
    _stand_in(_NECKS, models / "necks")
    return getattr(importlib.import_module(f"{_NECKS}.{module}"), class_name)


def _randomized(module: nn.Module) -> nn.Module:
    """Random weights and norm statistics, so every tensor counts."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.3, 0.3)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 2)
            if isinstance(m, nn.GroupNorm) and m.weight is not None:
                m.weight.uniform_(0.5, 2)
            if hasattr(m, "l2_norm"):  # SSD's L2Norm weight
                m.l2_norm.weight.uniform_(10, 30)
    return module.eval()


def _mmdet(module: str, class_name: str, args: tuple, kwargs: Dict[str, Any], channels: Sequence[int],
           sizes: Sequence[Tuple[int, int]], **peer: Any) -> Callable[[], Peer]:
    def build() -> Peer:
        return Peer(_randomized(_mmdet_class(module, class_name)(*args, **kwargs)), channels, sizes, **peer)

    return build


def _torchvision() -> Peer:
    import torchvision

    def run(m: nn.Module, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        return list(m(OrderedDict((str(i), x) for i, x in enumerate(xs))).values())

    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    fpn = torchvision.ops.FeaturePyramidNetwork([16, 32, 64], 16, extra_blocks=LastLevelP6P7(64, 16))
    return Peer(_randomized(fpn), [16, 32, 64], ODD, run=run)


def _effdet(fpn_name: str) -> Callable[[], Peer]:
    def build() -> Peer:
        from effdet import get_efficientdet_config
        from effdet.config import set_config_writeable
        from effdet.efficientdet import BiFpn

        config = get_efficientdet_config("efficientdet_d0")
        set_config_writeable(config)
        config.image_size, config.fpn_cell_repeats, config.fpn_channels = (128, 128), 2, 16
        config.fpn_name = fpn_name
        info = [dict(num_chs=c, reduction=r) for c, r in ((8, 8), (16, 16), (24, 32))]
        return Peer(_randomized(BiFpn(config, info)), [8, 16, 24], [(16, 16), (8, 8), (4, 4)],
                    run=lambda m, xs: list(m(list(xs))))  # effdet appends to the list it is given

    return build


def _qufpn_convert(peer: nn.Module) -> nn.Module:
    import fpn_zoo
    from fpn_zoo.convert import from_effdet_bifpn

    neck = fpn_zoo.create_neck("qufpn", FeatureSpec((8, 16, 24), (8, 16, 32)), out_channels=16, num_repeats=2)
    neck.load_state_dict(from_effdet_bifpn(peer, neck))
    return neck


_BN = dict(type="BN")
_FPG_PRE = dict(order=("act", "conv", "norm"), inplace=False)
_FPG = dict(
    inter_channels=8, same_down_trans=None, across_up_trans=None, norm_cfg=_BN,
    same_up_trans=dict(type="conv", kernel_size=3, stride=2, padding=1, norm_cfg=_BN, **_FPG_PRE),
    across_lateral_trans=dict(type="conv", kernel_size=1, norm_cfg=_BN, **_FPG_PRE),
    across_down_trans=dict(type="interpolation_conv", mode="nearest", kernel_size=3, norm_cfg=_BN, **_FPG_PRE),
    across_skip_trans=dict(type="conv", kernel_size=1, norm_cfg=_BN, **_FPG_PRE),
    output_trans=dict(type="last_conv", kernel_size=3, **_FPG_PRE), skip_inds=[(0, 1, 2), (0, 1), (0,), (), ()],
)
_SSD_FEATURES = {"features": FeatureSpec((8, 16), (8, 16))}
_MMCV_OPS = "paper only: mmdet's {} needs compiled mmcv ops (mmcv._ext), not available with mmcv-lite"

PARITY: Tuple[ParityCase, ...] = (
    ParityCase("fpn", "torchvision FeaturePyramidNetwork", "from_module(fpn)", _torchvision),
    ParityCase("fpn", "mmdet 3.3 FPN", "from_module(fpn)",
               _mmdet("fpn", "FPN", ([16, 32, 64], 16), dict(num_outs=5, add_extra_convs="on_output",
                                                             relu_before_extra_convs=True), [16, 32, 64], ODD)),
    ParityCase("pan", "mmdet 3.3 PAFPN", "from_module(pafpn)",
               _mmdet("pafpn", "PAFPN", ([16, 32, 64], 16), dict(num_outs=5, norm_cfg=_BN), [16, 32, 64], ODD)),
    ParityCase("bifpn", "effdet 0.4 BiFpn", "from_module(bifpn)", _effdet("bifpn_fa")),
    ParityCase("graph", "effdet 0.4 BiFpn (qufpn_fa)", "from_effdet_bifpn(bifpn, create_neck('qufpn', ...))",
               _effdet("qufpn_fa"), convert=_qufpn_convert),
    ParityCase("graph", "mmdet 3.3 NASFPN", "-", note=_MMCV_OPS.format("NASFPN") + "; nasfpn is the paper's cell"),
    ParityCase("channel_mapper", "mmdet 3.3 ChannelMapper", "from_module(mapper)",
               _mmdet("channel_mapper", "ChannelMapper", ([8, 16, 32], 16),
                      dict(norm_cfg=dict(type="GN", num_groups=4), num_outs=4), [8, 16, 32], ODD)),
    ParityCase("hrfpn", "mmdet 3.3 HRFPN", "from_module(hrfpn)",
               _mmdet("hrfpn", "HRFPN", ([8, 16, 32], 16), dict(num_outs=4), [8, 16, 32], X2)),
    ParityCase("bfp", "mmdet 3.3 BFP", "from_module(bfp)",
               _mmdet("bfp", "BFP", (16, 3), dict(refine_level=1, refine_type="non_local"), [16] * 3, ODD)),
    ParityCase("fpg", "mmdet 3.3 FPG", "from_module(fpg)",
               _mmdet("fpg", "FPG", ([8, 16, 32], 8, 5, 3, ["bu"] * 3), _FPG, [8, 16, 32],
                      [(32, 48), (16, 24), (8, 12)])),
    ParityCase("yolov3_neck", "mmdet 3.3 YOLOV3Neck", "from_module(neck)",
               _mmdet("yolo_neck", "YOLOV3Neck", (3, [32, 16, 8], [16, 8, 4]), {}, [8, 16, 32], X2,
                      run=lambda m, xs: list(m(xs))[::-1])),  # mmdet: coarsest first; fpn_zoo: finest first
    ParityCase("csp_pafpn", "mmdet 3.3 YOLOXPAFPN / CSPNeXtPAFPN", "from_module(neck)",
               _mmdet("cspnext_pafpn", "CSPNeXtPAFPN", ([8, 16, 32], 16), dict(num_csp_blocks=1), [8, 16, 32], X2)),
    ParityCase("ssd_neck", "mmdet 3.3 SSDNeck", "from_module(neck, features=backbone)",
               _mmdet("ssd_neck", "SSDNeck", ([8, 16], [8, 16, 16, 8, 8, 8], [2, 2, 1, 1], [1, 1, 0, 0]), {},
                      [8, 16], [(76, 89), (38, 45)], hints=_SSD_FEATURES),
               note="float64: mmdet's L2Norm computes in float32 whatever the input dtype (level 0 only)"),
    ParityCase("ssh", "mmdet 3.3 SSH", "from_module(ssh)",
               _mmdet("ssh", "SSH", (3, [8, 16, 32], [16, 16, 32]), {}, [8, 16, 32], ODD)),
    ParityCase("dilated_encoder", "mmdet 3.3 DilatedEncoder", "from_module(encoder)",
               _mmdet("dilated_encoder", "DilatedEncoder", (32, 16, 8, 2, [2, 4]), {}, [32], ODD[1:2])),
    ParityCase("centernet_neck", "mmdet 3.3 CTResNetNeck (use_dcn=False)", "from_module(neck)",
               _mmdet("ct_resnet_neck", "CTResNetNeck", (32, (16, 8, 8), (4, 4, 4)), dict(use_dcn=False), [32],
                      ODD[2:])),
    ParityCase("fpn_dropblock", "mmdet 3.3 FPN_DropBlock", "from_module(neck)",
               _mmdet("fpn_dropblock", "FPN_DropBlock", ([8, 16, 32], 16, 5),
                      dict(plugin=None, add_extra_convs="on_output", relu_before_extra_convs=True), [8, 16, 32], ODD),
               note="eval mode (DropBlock is the identity); with plugin=None, as mmdet builds DropBlock through a "
                    "registry that needs compiled ops"),
    ParityCase("csp_pan", "ultralytics YOLOv8 neck", "-", note="no converter, by design: ultralytics' neck, weight "
               "for weight, is the yolo_pan family (its row below); csp_pan is the same concat PAN at one uniform width "
               "(PP-PicoDet's layout), with a 1x1 projection on every input, no SPPF / C2PSA, BatchNorm eps 1e-5 "
               "(ultralytics: 1e-3) and no residual bottlenecks or C3k, kept so that its checkpoints load"),
    ParityCase("simple_pyramid", "ViTDet (detectron2)", "-", note="paper only: detectron2 is not a peer here"),
    ParityCase("single_level", "-", "-", note="an ablation baseline (the fpn family's blocks on one level), "
               "no published module to match"),
    ParityCase("fpn_carafe", "mmdet 3.3 FPN_CARAFE", "-", note=_MMCV_OPS.format("FPN_CARAFE") + "; tested against a "
               "float64 loop reference of CARAFE's reassembly (tests/test_fpn_carafe.py: <= 1e-15)"),
    ParityCase("dyhead", "mmdet 3.3 DyHead", "-", note=_MMCV_OPS.format("DyHead") + "; tested against float64 "
               "references of DCNv2 sampling, scale attention and DyReLU (tests/test_dyhead.py: <= 1e-15)"),
    ParityCase("nasfcos_fpn", "mmdet 3.3 NASFCOS_FPN", "-", note=_MMCV_OPS.format("NASFCOS_FPN") + "; tested against "
               "a float64 reference with a loop DCNv2 (tests/test_nasfcos_fpn.py: <= 1e-15)"),
    ParityCase("yolo_pan", "ultralytics 8.4 YOLOv8 / YOLO11 neck (DetectionModel)", "from_module(model)",
               note="measured in tests/test_yolo_pan.py, which captures the maps the neck reads and the maps Detect "
                    "reads with hooks on a whole model: float64 0, float32 0"),
    ParityCase("rtdetr_encoder", "transformers 5.24 RTDetrHybridEncoder (with RTDetrModel's input projections)",
               "from_module(model)", note="measured in tests/test_rtdetr_encoder.py: float64 <= 1e-15 "
               "(scaled_dot_product_attention vs plain matmuls), float32 0"),
    ParityCase("deformable_detr_encoder", "transformers 5.25 DeformableDetrModel (input_proj, sine position and level "
               "embeddings, DeformableDetrEncoder)", "from_module(model)",
               note="measured in tests/test_deformable_detr_encoder.py on the model's own forward (its backbone "
                    "stubbed, encoder_last_hidden_state split per level), odd sizes: float64 0, float32 <= 2e-5 on "
                    "outputs up to 6.5 (the position embedding is computed in float64 here, in float32 there)"),
    ParityCase("upernet", "transformers 5.24 UperNetHead (before its classifier)", "from_module(head)",
               note="measured in tests/test_upernet.py (the head's fused map and its pyramid levels): float64 0, "
                    "float32 0"),
)


# The peers' necks with no family here. mmdet 3.3 exports 19 necks (mmdet.models.necks.__all__): 18 are rows of
# PARITY; tests/test_tags.py checks that each of the 19 is in one of the two tables.
NOT_COVERED: Tuple[NotCovered, ...] = (
    NotCovered("mmdet 3.3 RFP (DetectoRS' Recursive Feature Pyramid)",
               "not a neck on features alone: it takes the backbone's maps and the input image (its backbone is "
               "built with output_img=True), and for each of its rfp_steps - 1 extra steps runs a whole second "
               "DetectoRS_ResNet (rfp_backbone, built inside the neck with its own weights) on the image again, "
               "adding a 1x1 conv of the ASPP of the FPN's outputs 2..n into the first block of stages 2-4 (after the "
               "residual sum, before its ReLU), then the same FPN again, mixing the two pyramids by a sigmoid gate "
               "(a zero-initialised 1x1 conv). That needs a backbone whose residual blocks take a feedback input, "
               "which a timm features_only model does not have; its FPN part is the fpn family"),
)


# ------------------------------------------------------------------------------------------ measuring


def measure_case(case: ParityCase, dtype: torch.dtype) -> float:
    """Max abs diff between the peer and its conversion on random maps of ``dtype``.

    Raises:
        ImportError: the peer's package is not installed.
    """
    from fpn_zoo.convert import from_module

    peer = case.build()  # type: ignore[misc]
    module = peer.module.to(dtype)
    neck = case.convert(module) if case.convert else from_module(module, **peer.hints)
    neck = neck.to(dtype).eval()
    torch.manual_seed(1)
    xs = [torch.randn(2, c, h, w, dtype=dtype) for c, (h, w) in zip(peer.channels, peer.sizes)]
    with torch.no_grad():
        ref, got = peer.run(module, xs), neck(peer.neck_inputs(xs))
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        raise ValueError(f"{case.reference}: output shapes differ")
    return max((a - b).abs().max().item() for a, b in zip(ref, got))


def diff_cell(diff: float) -> str:
    """``0``, or the smallest power of ten at least ``diff`` (``<= 1e-15``): text stable across machines."""
    if diff == 0:
        return "0"
    return f"<= 1e{math.ceil(math.log10(diff))}"


def _measured(case: ParityCase) -> Tuple[str, str]:
    if case.build is None:
        return "-", "-"
    try:
        return diff_cell(measure_case(case, torch.float64)), diff_cell(measure_case(case, torch.float32))
    except ImportError as e:
        return f"not measured ({e.name} not installed)", "-"


def render_parity(threads: int = 1) -> str:
    """The page: one row per case, every registered family present (a family without a case says so)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = []
        covered = set()
        for case in PARITY:
            covered.add(case.family)
            f64, f32 = _measured(case)
            rows.append([f"`{case.family}`", case.reference, f"`{case.call}`" if case.call != "-" else "-", f64, f32,
                         case.note])
    finally:
        torch.set_num_threads(old)
    rows += [[f"`{f}`", "-", "-", "-", "-", "no reference listed in tools/docs_gen/parity.py"]
             for f in list_families() if f not in covered]
    return "\n".join([
        "# Parity with the reference implementations\n", GENERATED_NOTE + "\n",
        "Each family against the implementation people use today: the peer is built small with random weights "
        "and norm statistics, adopted with `fpn_zoo.convert.from_module(peer)` (its configuration read from the "
        "module, its weights loaded), and both run on the same random maps (odd sizes where the peer accepts "
        "them). The max abs diff over all output levels is shown as a power of ten (`0`: identical). float64 "
        "shows whether the math is the same; float32 adds rounding (our convs may run channels-last). Measured "
        "each time the docs are generated (`tools/docs_gen/parity.py`); the tests assert float64 <= 1e-10.\n",
        md_table(["family", "reference", "converter call", "max abs diff float64", "max abs diff float32", "note"],
                 rows, "lllrrl"),
        "\n## Not covered\n",
        "The reference implementations' necks that are no family here, and why.\n",
        md_table(["reference", "why not"], [[n.reference, n.reason] for n in NOT_COVERED]),
        "",
    ])
