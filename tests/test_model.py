"""create_model: backbone + neck as one module that looks like a timm features_only model."""
from __future__ import annotations

import pytest
import timm
import torch

import fpn_zoo


def test_create_model_looks_like_timm_features():
    model = fpn_zoo.create_model("test_convnext", neck="pan", out_indices=(1, 2, 3), neck_args={"out_channels": 24})
    outs = model(torch.randn(2, 3, 64, 96))
    assert isinstance(outs, list) and len(outs) == 3
    assert model.feature_info.channels() == [24, 24, 24]
    assert model.feature_info.reduction() == [8, 16, 32]
    assert [tuple(o.shape[-2:]) for o in outs] == [(8, 12), (4, 6), (2, 3)]
    assert model.output_fmt == "NCHW"


def test_a_second_neck_chains_on_feature_info_alone():
    model = fpn_zoo.create_model("test_efficientnet", neck="fpn", out_indices=(2, 3, 4), neck_args={"out_channels": 16})
    second = fpn_zoo.create_neck("pan", model, out_channels=8)
    outs = second(model(torch.randn(1, 3, 64, 64)))
    assert [o.shape[1] for o in outs] == [8, 8, 8]


def test_create_model_on_an_nhwc_backbone():
    model = fpn_zoo.create_model("test_mambaout", neck="fpn", neck_args={"out_channels": 16})
    outs = model(torch.randn(1, 3, 65, 97))
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [o.shape[1] for o in outs] == [16] * 4


def test_create_model_accepts_a_built_backbone():
    backbone = timm.create_model("test_convnext", features_only=True, pretrained=False)
    model = fpn_zoo.create_model(backbone, neck="fpn")
    assert model.backbone is backbone
    with pytest.raises(TypeError, match="only apply when backbone is a name"):
        fpn_zoo.create_model(backbone, neck="fpn", out_indices=(1, 2))


def test_create_model_rejects_an_unknown_neck_before_building_anything_wrong():
    with pytest.raises(ValueError, match="unknown neck 'fnp'"):
        fpn_zoo.create_model("test_convnext", neck="fnp")


def test_three_lines_from_the_readme():
    backbone = timm.create_model("test_resnet", features_only=True, out_indices=(2, 3, 4), pretrained=False)
    neck = fpn_zoo.create_neck("fpn", backbone.feature_info, out_channels=128)
    feats = neck(backbone(torch.randn(1, 3, 64, 64)))
    assert neck.feature_info.channels() == [128] * 3 and [f.shape[1] for f in feats] == [128] * 3


def test_a_fixed_size_backbone_by_name_takes_any_image_size():
    """timm builds ViT / swin for one size; create_model builds them with dynamic_img_size where they take it."""
    model = fpn_zoo.create_model("test_vit3", neck="simple_pyramid_fpn", neck_args={"out_channels": 16})
    outs = model(torch.rand(1, 3, 96, 128))  # timm builds test_vit3 for 160 x 160 only
    assert [tuple(o.shape[-2:]) for o in outs][:3] == [(24, 32), (12, 16), (6, 8)]
