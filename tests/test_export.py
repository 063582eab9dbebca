"""Export: every variant through ``torch.export`` with a dynamic batch and image size, and to ONNX through the
dynamo exporter; the exported programs (and onnxruntime) compute what the eager neck does on a batch and a
size other than the export ones, and on maps whose sizes relate differently from the export-time maps (a
backbone that rounds down where the export-time one rounded up).

Dynamic shapes: one named ``Dim`` for the batch, shared by every input (all maps come from one batch), and
``Dim.AUTO`` for each map's height and width: the coarser levels' sizes come from the backbone (``ceil`` or
``floor`` of the finest's / 2, or equal for a ViT), which no linear ``Dim`` expression captures.

ONNX translation is the slow part (seconds per family). The default run translates the families whose
exported programs (after decomposition) hold ops or op forms no other family's does — attention (RT-DETR),
adaptive pooling (UPerNet), non-local refinement (BFP), weighted fusion
(BiFPN), CARAFE's gathers, average pooling (HRFPN), ReLU6 (SSDLite), transposed convs (CenterNet, the simple
pyramid), LeakyReLU, and the plain FPN / PANet; the other families' programs use only those ops and are
translated with ``pytest -m sweep`` (``torch.export`` above still runs every family by default). DyHead (deformable
convs through ``grid_sample``, its gates) is the slowest to trace by far (45 s to export, 140 s to ONNX on a 2-core
VM): its default check is ``tests/test_dyhead.py``'s small ``torch.export``, and both runs here are sweep-only.
The Deformable DETR encoder (``grid_sample`` per level, with per-level position embeddings and reference points)
takes 15 s to export and 50 s to ONNX there with one layer on 4 levels: its default check is
``tests/test_deformable_detr_encoder.py``'s 2-level ``torch.export`` (7 s), and both runs here are sweep-only.

Export size: torch specializes dimensions of size 1, so every output map must be >= 2 px at the export size;
the program then accepts any size at which that holds. Inputs come from the CNN backbone (the single-stride
ViT for the necks that only take one).
"""
from __future__ import annotations

from typing import List, Tuple

import pytest
import torch
from torch.export import Dim

import fpn_zoo

from _every_variant import build, variant_params
from conftest import backbone, features

TOLERANCE = {"torch.export": 1e-5, "torch.export (float64)": 1e-10, "onnxruntime": 1e-4}

# Families whose eager forward reads deformable taps through ``embedding_bag`` and whose traced graphs read them
# through ``grid_sample``: the same math summed in another order, so their export is checked in float64.
EXPORT_IN_FLOAT64 = {"dyhead", "deformable_detr_encoder", "nasfcos_fpn"}


def sizes(neck: torch.nn.Module, kind: str) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``(export_size, check_size)`` images: every map >= 2 px, every input side >= 3 px (never the batch
    size, which torch would then tie to it), export and check sizes different in both sides."""
    coarsest_out = int(max(neck.feature_info.reduction()))
    coarsest_in = int(max(backbone(kind).feature_info.reduction()))
    height = max(2 * coarsest_out, 4 * coarsest_in)
    return (height, height * 5 // 4), (height * 3 // 2, height)


def spatial_dims(kind: str) -> Tuple[int, int]:
    return (1, 2) if kind == "nhwc" else (2, 3)


def dynamic_shapes(xs: List[torch.Tensor], kind: str):
    batch = Dim("batch", min=1, max=1024)
    h, w = spatial_dims(kind)
    return ([{0: batch, h: Dim.AUTO, w: Dim.AUTO} for _ in xs],)


def check_inputs(kind: str, size: Tuple[int, int]) -> List[List[torch.Tensor]]:
    """A batch of one at ``size``, and the same maps with every level but the finest one pixel shorter."""
    xs = [x[:1] for x in features(kind, *size)]
    h, w = spatial_dims(kind)
    cropped = [xs[0]] + [x.narrow(h, 0, x.shape[h] - 1).narrow(w, 0, x.shape[w] - 1).contiguous() for x in xs[1:]]
    return [xs, cropped]


def assert_matches(got, expected, what: str) -> None:
    assert len(got) == len(expected), f"{what}: {len(got)} outputs, eager gives {len(expected)}"
    for level, (g, e) in enumerate(zip(got, expected)):
        g = torch.as_tensor(g)
        assert tuple(g.shape) == tuple(e.shape), f"{what}, level {level}: shape {tuple(g.shape)}, eager {tuple(e.shape)}"
        err = (g - e).abs().max().item()
        assert err <= TOLERANCE[what], f"{what}, level {level}: differs from eager by {err:.3g}"


# Families exported by the sweep only (see the module docstring).
EXPORT_SWEEP_ONLY = {"dyhead", "deformable_detr_encoder"}


def sweep_only(families: set) -> List:
    """:func:`variant_params`, with the ``sweep`` marker on the variants of ``families``."""
    params = []
    for param in variant_params(pytest.mark.export):
        family = fpn_zoo.neck_cfg(param.values[0]).family
        marks = (*param.marks, pytest.mark.sweep) if family in families else param.marks
        params.append(pytest.param(*param.values, id=param.id, marks=marks))
    return params


@pytest.mark.parametrize("name, overrides", sweep_only(EXPORT_SWEEP_ONLY))
def test_torch_export_dynamic_batch_and_size(name: str, overrides: dict) -> None:
    neck, kind = build(name, overrides)
    neck.eval()
    float64 = fpn_zoo.neck_cfg(name).family in EXPORT_IN_FLOAT64
    dtype, what = (torch.float64, "torch.export (float64)") if float64 else (torch.float32, "torch.export")
    neck.to(dtype)
    export_size, check_size = sizes(neck, kind)
    xs = [x.to(dtype) for x in features(kind, *export_size)]
    program = torch.export.export(neck, (xs,), dynamic_shapes=dynamic_shapes(xs, kind))
    exported = program.module()
    for inputs in check_inputs(kind, check_size):
        inputs = [x.to(dtype) for x in inputs]
        with torch.no_grad():
            assert_matches(exported(inputs), neck(inputs), what)


# Families whose exported ops the default ONNX families already cover, and DyHead (see the module docstring).
ONNX_SWEEP_ONLY = EXPORT_SWEEP_ONLY | {"csp_pan", "channel_mapper", "fpg", "fpn_dropblock", "graph", "nasfcos_fpn",
                                       "single_level", "ssh", "dilated_encoder", "yolov3_neck", "yolo_pan", "csp_pafpn"}


@pytest.mark.parametrize("name, overrides", sweep_only(ONNX_SWEEP_ONLY))
def test_onnx_dynamic_batch_and_size(name: str, overrides: dict, tmp_path) -> None:
    pytest.importorskip("onnxscript", reason="ONNX export needs the export extra: pip install fpn-zoo[export]")
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the export extra: pip install fpn-zoo[export]")
    ort = pytest.importorskip("onnxruntime", reason="ONNX export needs the export extra: pip install fpn-zoo[export]")
    neck, kind = build(name, overrides)
    neck.eval()
    export_size, check_size = sizes(neck, kind)
    xs = features(kind, *export_size)
    program = torch.onnx.export(neck, (xs,), dynamo=True, dynamic_shapes=dynamic_shapes(xs, kind), verbose=False)
    path = tmp_path / f"{name}.onnx"
    program.save(str(path))
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    assert len(input_names) == len(xs)
    for inputs in check_inputs(kind, check_size):
        got = session.run(None, {n: x.numpy() for n, x in zip(input_names, inputs)})
        with torch.no_grad():
            assert_matches([torch.from_numpy(g) for g in got], neck(inputs), "onnxruntime")
