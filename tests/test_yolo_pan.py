"""The ultralytics YOLOv8 / YOLO11 neck (issue 15): ``yolo_pan`` reproduces the neck of a ``DetectionModel`` built
from ultralytics' own yamls weight for weight, and behaves like every fpn_zoo neck.

Parity feeds both sides the same backbone maps: the ultralytics model runs on an image and hooks capture the maps
its neck reads and the maps its ``Detect`` reads; the converted neck runs on the former and must give the latter.
"""
from __future__ import annotations

import pytest
import torch

import fpn_zoo
from _outside_peers import max_abs, run_capturing, ultralytics_model
from fpn_zoo import FeatureSpec
from fpn_zoo.convert.ultralytics_yolo import from_ultralytics, ultralytics_neck_layers

IMAGE = (64, 96)  # ultralytics upsamples by 2: its maps need x2 sizes (P3-P5: 8x12, 4x6, 2x3)


def image(dtype=torch.float64) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, *IMAGE, dtype=dtype)


def converted_and_expected(yaml_name: str, dtype=torch.float64, coarse_blocks: bool = True):
    model = ultralytics_model(yaml_name, dtype)
    found = ultralytics_neck_layers(model, coarse_blocks)
    seen = run_capturing(model, found["inputs"] + found["outputs"], image(dtype))
    neck = from_ultralytics(model, coarse_blocks=coarse_blocks)
    with torch.no_grad():
        outs = neck([seen[i] for i in found["inputs"]])
    return neck, outs, [seen[i] for i in found["outputs"]]


@pytest.mark.parametrize("yaml_name, variant", [("yolov8n.yaml", "yolov8n_neck"), ("yolo11n.yaml", "yolo11n_neck")])
def test_float64_parity_with_the_ultralytics_neck(yaml_name, variant):
    neck, outs, expected = converted_and_expected(yaml_name)
    assert max(max_abs(outs, expected)) <= 1e-10
    assert [o.shape[1] for o in outs] == neck.feature_info.channels() == [64, 128, 256]
    assert not neck.training and next(neck.parameters()).dtype == torch.float64
    # the registered variant is the same configuration: same tensors, same shapes
    ours = fpn_zoo.create_neck(variant, FeatureSpec(neck.spec.channels, (8, 16, 32))).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in neck.state_dict().items()}


def test_float32_parity_and_the_head_section_alone():
    neck, outs, expected = converted_and_expected("yolo11n.yaml", torch.float32, coarse_blocks=False)
    assert not hasattr(neck.coarse, "sppf") and not hasattr(neck.coarse, "c2psa")
    for out, ref in zip(outs, expected):
        assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_yolov8s_converts_to_the_registered_variant():
    model = ultralytics_model("yolov8s.yaml", torch.float32)
    neck = from_ultralytics(model, features=FeatureSpec((128, 256, 512), (8, 16, 32)))
    ours = fpn_zoo.create_neck("yolov8s_neck", [128, 256, 512])
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in neck.state_dict().items()}
    assert neck.feature_info.channels() == [128, 256, 512]


def test_unsupported_peer_configurations_name_the_attribute():
    model = ultralytics_model("yolov8n.yaml", torch.float32)
    model.model[12].m[0].cv1.act = torch.nn.ReLU()
    with pytest.raises(ValueError, match=r"model\.12\.m\.0\.cv1\.act: ReLU"):
        from_ultralytics(model)
    model = ultralytics_model("yolov8n.yaml", torch.float32)
    model.model[17].f = [-1, 9]
    with pytest.raises(ValueError, match=r"model\.17\.f"):
        from_ultralytics(model)
    with pytest.raises(ValueError, match="features have channels"):
        from_ultralytics(ultralytics_model("yolov8n.yaml", torch.float32), features=[8, 16, 32])
    with pytest.raises(TypeError, match="ultralytics"):
        from_ultralytics(torch.nn.Conv2d(1, 1, 1))


def test_outputs_match_feature_info_on_odd_sizes_and_every_parameter_learns():
    spec = FeatureSpec((8, 16, 24, 32), (4, 8, 16, 32))
    neck = fpn_zoo.create_neck("yolo11n_neck", spec, out_channels=[8, 16, 16, 32])
    torch.manual_seed(0)
    outs = neck([torch.randn(2, c, 57 // s * 2 + 1, 83 // s * 2 + 1) for c, s in zip(spec.channels, (1, 2, 4, 8))])
    assert [o.shape[1] for o in outs] == neck.feature_info.channels() == [8, 16, 16, 32]
    assert [tuple(o.shape[-2:]) for o in outs] == [(115, 167), (57, 83), (29, 41), (15, 21)]
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in neck.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(block="c3"), "block must be one of"),
    (dict(c3k="last"), "only block='c3k2'"),
    (dict(sppf_kernel=4), "sppf_kernel must be odd"),
    (dict(widen_factor=0), "widen_factor"),
    (dict(out_channels=[64, 64]), "2 entries for 3 levels"),
    (dict(c2psa_blocks=1, out_channels=[16, 16, 400]), "C2PSA"),
    (dict(upsample_mode="nerest"), "did you mean"),
])
def test_bad_knobs_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fpn_zoo.create_neck("yolov8n_neck", [8, 16, 32], **kwargs)


def test_single_stride_backbones_are_declined_with_a_variant_that_fits():
    with pytest.raises(fpn_zoo.BackboneMismatch, match="simple_pyramid"):
        fpn_zoo.create_neck("yolov8n_neck", FeatureSpec((8, 8), (16, 16)))
