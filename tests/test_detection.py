"""torchvision detectors from timm backbones and fpn_zoo necks (``fpn_zoo.create_detector``).

Tiny sizes throughout: timm's ``test_*`` backbones, images 301 x 419 resized to 151 x 210 with
``size_divisible=1`` so odd map sizes reach the neck, and every neck's ``out_channels`` overridden to 32
(the registry's widths, up to 384, would only make the run slower: the wiring under test is the same).
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

import fpn_zoo
from fpn_zoo import BackboneMismatch
from fpn_zoo._features import make_feature_info
from fpn_zoo.detection import (
    TorchvisionBackbone, create_detector, fcos_size_ranges, level_names, rcnn_anchor_sizes, retinanet_anchor_sizes,
    torchvision_backbone,
)

H, W = 301, 419
SMALL = dict(min_size=151, max_size=210, size_divisible=1)
# Fewer proposals / RoIs for the R-CNNs: the defaults (2000 proposals, 512 RoIs) cost seconds per step.
FAST_RCNN = dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100,
                 rpn_post_nms_top_n_test=50, box_batch_size_per_image=32, box_detections_per_img=10)
BACKBONES = {"cnn": "test_resnet", "nhwc": "test_mambaout", "vit": "test_vit"}
WIDTH = 32


def _images_targets(masks: bool = False, keypoints: bool = False):
    """Two images (a batch of one would leave a stride-256 level at 1 x 1, which BatchNorm refuses to train)."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for h, w in ((H, W), (W, H)):
        images.append(torch.rand(3, h, w, generator=g))
        boxes = torch.tensor([[12.0, 20.0, 80.0, 90.0], [150.0, 100.0, 290.0, 280.0]])
        target = {"boxes": boxes, "labels": torch.tensor([1, 2])}
        if masks:
            m = torch.zeros(2, h, w, dtype=torch.uint8)
            m[0, 20:90, 12:80] = 1
            m[1, 100:280, 150:290] = 1
            target["masks"] = m
        if keypoints:
            kp = torch.rand(2, 17, 3, generator=g)
            kp[..., 0] = boxes[:, None, 0] + kp[..., 0] * (boxes[:, None, 2] - boxes[:, None, 0])
            kp[..., 1] = boxes[:, None, 1] + kp[..., 1] * (boxes[:, None, 3] - boxes[:, None, 1])
            kp[..., 2] = 1
            target["keypoints"] = kp
        targets.append(target)
    return images, targets


def _train_and_eval(model: nn.Module, kind: str) -> None:
    images, targets = _images_targets(masks=kind == "maskrcnn", keypoints=kind == "keypointrcnn")
    model.train()
    losses = model(images, targets)
    assert losses, "a training step returned no losses"
    for name, value in losses.items():
        assert torch.isfinite(value).all(), f"loss {name} is {value}"
    sum(losses.values()).backward()
    neck = model.backbone.body.neck
    grads = [p.grad for p in neck.parameters() if p.requires_grad]
    assert grads, "the neck has no trainable parameters"
    assert all(g is not None for g in grads), "some neck parameters got no gradient"
    assert any(g.abs().sum() > 0 for g in grads), "the neck's gradients are all zero"
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and {"boxes", "scores", "labels"} <= set(detections[0])
    assert detections[0]["boxes"].shape[-1] == 4


VARIANTS = fpn_zoo.list_necks()


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains_in_a_detector(name):
    """Every variant, on a CNN, an NHWC model and a plain ViT; RetinaNet and FCOS take turns."""
    kind = ("retinanet", "fcos")[VARIANTS.index(name) % 2]
    # a family without one output width (ssd, centernet, bfp keeps its input's) is projected by the head instead
    width = ({"neck_args": {"out_channels": WIDTH}} if "out_channels" in fpn_zoo.neck_cfg(name).args
             else {"head_channels": WIDTH})
    built = []
    for shape, backbone in BACKBONES.items():
        torch.manual_seed(0)
        try:
            model = create_detector(kind, backbone, neck=name, num_classes=3, **width, **SMALL)
        except BackboneMismatch:
            continue  # the variant declines this backbone (e.g. a simple pyramid on a CNN) and says so
        except ValueError as e:
            # a multi-scale neck on a plain ViT builds no pyramid: create_detector refuses and names the fix
            assert shape == "vit" and "simple_pyramid_fpn" in str(e), e
            continue
        assert model.backbone.out_channels == WIDTH
        _train_and_eval(model, kind)
        built.append(shape)
    if not built:  # a neck that refines a pyramid of one width (BFP) goes after an FPN, as Libra R-CNN does
        body = fpn_zoo.create_model("test_resnet", neck="fpn", neck_args={"out_channels": WIDTH})
        _train_and_eval(create_detector(kind, body, neck=name, num_classes=3, **width, **SMALL), kind)
        built.append("cnn + fpn")


@pytest.mark.parametrize("kind", ["fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos"])
def test_every_detector_kind(kind):
    torch.manual_seed(0)
    extra = FAST_RCNN if kind.endswith("rcnn") else {}
    model = create_detector(kind, "test_resnet", neck="fpn_maxpool_p6", num_classes=3,
                            neck_args={"out_channels": WIDTH}, **SMALL, **extra)
    if kind.endswith("rcnn"):  # C2-C5 + the max-pool P6; RoIs pooled from all but P6 (torchvision's recipe)
        assert model.backbone.level_names == ["p2", "p3", "p4", "p5", "p6"]
        assert model.roi_heads.box_roi_pool.featmap_names == ["p2", "p3", "p4", "p5"]
        assert [s[0] for s in model.rpn.anchor_generator.sizes] == [32, 64, 128, 256, 512]
    else:  # C3-C5 + P6
        assert model.backbone.level_names == ["p3", "p4", "p5", "p6"]
    _train_and_eval(model, kind)


def test_anchor_sizes_follow_the_strides_as_the_papers():
    # torchvision's own defaults are the special case of five levels at 4..64 / 8..128
    assert rcnn_anchor_sizes([4, 8, 16, 32, 64]) == [(32,), (64,), (128,), (256,), (512,)]
    tv_retina = [(x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)) for x in (32, 64, 128, 256, 512)]
    for ours, theirs in zip(retinanet_anchor_sizes([8, 16, 32, 64, 128]), tv_retina):
        assert ours == pytest.approx(theirs)
    assert retinanet_anchor_sizes([3.5, 7])[0][0] == 14.0  # a stride-14 ViT through the simple pyramid
    model = create_detector("retinanet", "test_resnet", neck="fpn", num_classes=2, neck_args={"out_channels": 16},
                            **SMALL)
    assert len(model.anchor_generator.sizes) == 3 and model.anchor_generator.sizes[0][0] == 32


def test_fcos_ranges_scale_with_the_strides():
    assert fcos_size_ranges([8, 16, 32, 64, 128]) == [(0, 64), (64, 128), (128, 256), (256, 512), (512, math.inf)]
    assert fcos_size_ranges([4, 8, 16]) == [(0, 32), (32, 64), (64, math.inf)]
    assert fcos_size_ranges([8, 16, 32], scale=0.25) == [(0, 16), (16, 32), (32, math.inf)]
    with pytest.raises(ValueError, match="scale"):
        fcos_size_ranges([8, 16], scale=0)


def _assigned_levels(model, size: int, boxes):
    """The pyramid levels (indices) on which each box gets positive locations."""
    images = [torch.zeros(3, size, size)]
    targets = [{"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.ones(len(boxes), dtype=torch.int64)}]
    model.eval()
    with torch.no_grad():
        images, targets = model.transform(images, targets)
        feats = list(model.backbone(images.tensors).values())
        anchors = model.anchor_generator(images, feats)
    counts = [f.shape[-2] * f.shape[-1] for f in feats]
    matched = model.match(targets, anchors, counts)[0]
    level_of = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return [sorted(set(level_of[matched == i].tolist())) for i in range(len(boxes))]


def test_fcos_assigns_boxes_of_different_sizes_to_different_levels():
    model = create_detector("fcos", "test_resnet", neck="fpn_p6p7", num_classes=2, neck_args={"out_channels": 16},
                            min_size=512, max_size=512)
    assert model.backbone.strides == [8, 16, 32, 64, 128]
    small, medium, large = _assigned_levels(model, 512, [[20, 20, 60, 60], [100, 100, 300, 300], [10, 10, 500, 500]])
    assert small == [0]  # max(l, t, r, b) <= 20 < 64: P3
    assert medium == [1, 2] or medium == [2]  # ~100 px from the centre: 64-128 (P4) or 128-256 (P5)
    assert large and min(large) >= 2  # ~245 px: P5/P6
    # On a small canvas the paper's ranges put every box on P3; a scale spreads them over the pyramid
    model = create_detector("fcos", "test_resnet", neck="fpn", num_classes=2, neck_args={"out_channels": 16},
                            min_size=128, max_size=128, size_range_scale=0.25)
    tiny, big = _assigned_levels(model, 128, [[10, 10, 30, 30], [20, 20, 100, 100]])
    assert tiny == [0] and big and min(big) >= 1


def test_head_channels_decouple_the_head_from_the_neck():
    model = create_detector("fcos", "test_resnet", neck="fpn", num_classes=3, neck_args={"out_channels": 48},
                            head_channels=24, **SMALL)
    assert model.backbone.out_channels == 24
    assert model.head.classification_head.cls_logits.in_channels == 24
    assert model.backbone.body.neck.feature_info.channels() == [48, 48, 48]
    _train_and_eval(model, "fcos")


class _MixedWidths(nn.Module):
    """A stand-in neck output with two widths (16 and 32)."""

    def __init__(self):
        super().__init__()
        self.feature_info = make_feature_info([16, 32], [8, 16])

    def forward(self, x):
        return [torch.zeros(x.shape[0], 16, 4, 4), torch.zeros(x.shape[0], 32, 2, 2)]


def test_mixed_widths_refused_with_the_widths_named():
    with pytest.raises(ValueError, match=r"\[16, 32\].*head_channels"):
        torchvision_backbone(_MixedWidths())
    tvb = TorchvisionBackbone(_MixedWidths(), head_channels=8)
    out = tvb(torch.zeros(1, 3, 32, 32))
    assert list(out) == ["p3", "p4"] and all(t.shape[1] == 8 for t in out.values())


def test_torchvision_backbone_of_a_body():
    body = fpn_zoo.create_model("test_resnet", neck="fpn_maxpool_p6", out_indices=(1, 2, 3, 4),
                                neck_args={"out_channels": 16})
    tvb = fpn_zoo.detection.torchvision_backbone(body)
    out = tvb(torch.rand(1, 3, 65, 97))
    assert tvb.out_channels == 16 and isinstance(tvb.out_channels, int)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"] and tvb.roi_level_names == ["p2", "p3", "p4", "p5"]
    assert level_names([3.5, 7, 14, 28]) == ["p2", "p3", "p4", "p5"]
    assert level_names([7, 14, 14]) == ["p3", "p4", "p4_1"]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="did you mean 'retinanet'"):
        create_detector("retinanett", "test_resnet")
    with pytest.raises(ValueError, match="did you mean 'fasterrcnn'"):
        create_detector("faster-rcn", "test_resnet")
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_classes"):
            create_detector("fcos", "test_resnet", num_classes=bad)
    with pytest.raises(ValueError, match="simple_pyramid_fpn"):
        create_detector("retinanet", "test_vit", neck="fpn", neck_args={"out_channels": 16})
    with pytest.raises(ValueError, match="only apply to kind='fcos'"):
        create_detector("retinanet", "test_resnet", size_range_scale=0.5)
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        create_detector("retinanet", "test_resnet", trainable_backbone_layers=9)
    with pytest.raises(TypeError, match="features_only"):
        create_detector("retinanet", timm.create_model("test_resnet"))


def test_fixed_size_backbones_are_built_for_any_size_or_named():
    # a ViT / swin / EVA name is built with dynamic_img_size (and dynamic_img_pad: EVA's patch 14)
    model = create_detector("retinanet", "test_vit", neck="simple_pyramid_fpn", num_classes=3,
                            neck_args={"out_channels": 16}, min_size=150, max_size=211, size_divisible=1)
    _train_and_eval(model, "retinanet")
    # a model built for one size is refused with the keyword to use
    strict = timm.create_model("test_vit", features_only=True, dynamic_img_size=False)
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        create_detector("retinanet", strict, neck="simple_pyramid_fpn")
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        create_detector("retinanet", "test_vit", neck="simple_pyramid_fpn", backbone_args={"dynamic_img_size": False})
    body = fpn_zoo.create_model(strict, neck="simple_pyramid_fpn", neck_args={"out_channels": 16})
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        torchvision_backbone(body)
    body = fpn_zoo.create_model("test_vit", neck="simple_pyramid_fpn", neck_args={"out_channels": 16},
                                dynamic_img_size=True, dynamic_img_pad=True)  # pad: 75 px is no multiple of 16
    assert list(torchvision_backbone(body)(torch.rand(1, 3, 75, 130))) == ["p2", "p3", "p4", "p5"]


def test_trainable_backbone_layers_freeze_the_first_stages_with_frozen_bn():
    model = create_detector("retinanet", "test_resnet", neck="fpn", num_classes=3, neck_args={"out_channels": 16},
                            trainable_backbone_layers=2, **SMALL)
    timm_model = model.backbone.body.backbone
    trainable = {n.split(".")[0] for n, p in timm_model.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[0] for n, p in timm_model.named_parameters() if not p.requires_grad}
    assert trainable == {"layer3", "layer4"} and {"conv1", "layer1", "layer2"} <= frozen
    assert not any(isinstance(m, nn.BatchNorm2d) for m in timm_model.modules())
    assert all(p.requires_grad for p in model.backbone.body.neck.parameters())
    _train_and_eval(model, "retinanet")
    model = create_detector("retinanet", "test_resnet", neck="fpn", num_classes=2, neck_args={"out_channels": 16},
                            trainable_backbone_layers=0)
    assert not any(p.requires_grad for p in model.backbone.body.backbone.parameters())


def test_import_fpn_zoo_stays_free_of_mmdet():
    code = "import sys, fpn_zoo; print(any(m.split('.')[0] in ('mmdet', 'mmengine', 'mmcv') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_detection_docs_page_runs_as_written():
    """Every Python block of docs/detection.md, in order, in one namespace (but the marked mmdet one)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "detection.md").read_text()
    blocks = re.findall(r"(<!-- not run[^>]*-->\n)?```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 8
    namespace: dict = {}
    for skip, code in blocks:
        if not skip:
            exec(compile(code, "docs/detection.md", "exec"), namespace)
    assert namespace["model"]["neck"]["type"] == "FpnZooNeck"  # the mmdet config is plain Python
    assert namespace["fcos"].size_ranges == [(0.0, 16.0), (16.0, 32.0), (32.0, math.inf)]
    assert namespace["frozen"] == ["conv1", "layer1", "layer2"]
