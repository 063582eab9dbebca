"""The backbone sweep (``tools/sweep.py``, imported as a module): every neck variant on timm model families.

The default suite runs every variant on a handful of families chosen for their shapes (a 5-level CNN
pyramid from stride 2, NHWC maps, single-stride ViTs, strides 7, 12/17, 7/14/14) at a small odd size
(33 x 49: odd map sizes at every level) on timm's default levels (two more shapes, a stride-4 CNN and a
stride-8 ViT, carry the ``sweep`` marker); ``pytest -m sweep`` runs every timm
family at the script's size (97 x 129) on both level sets, one test per family
(``pytest -m sweep -k swin`` for one). A failure names the backbone, the variant, the stage and
the error; ``python -m tools.sweep --families FAMILY --necks VARIANT`` reproduces it.
"""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import fpn_zoo
from tools import sweep  # the repository root is on sys.path (tests/conftest.py)

VARIANTS = fpn_zoo.list_necks()

# family -> pinned model (small, and the shape that makes the family interesting).
REPRESENTATIVE = {
    "resnet": "test_resnet",  # CNN, strides 2..32, 5 levels
    "convnext": "test_convnext",  # CNN, strides 4..32
    "swin_transformer": "swin_tiny_patch4_window7_224",  # NHWC, odd size through img_size
    "vision_transformer": "test_vit",  # single stride 16, odd size through a padded patch embed
    "xcit": "xcit_nano_12_p8_224",  # single stride 8
    "convmixer": "convmixer_768_32",  # single stride 7
    "crossvit": "crossvit_tiny_240",  # strides 12/17
    "sequencer": "sequencer2d_s",  # NHWC, strides 7/14/14
}
SMALL_ODD_SIZE = (33, 49)
# One torch thread while a family runs (restored after): these are many small ops, and on a busy machine a
# second thread that waits for a core made the same checks ~25x slower.


def _report(result) -> str:
    lines = [f"{result.family} ({result.model}, input {result.input_size}, strides {result.reductions}):"]
    lines += [f"  {c.variant} [{c.levels}] {c.stage}: {c.message}" for c in result.failures]
    return "\n".join(lines)


def _assert_family(result) -> None:
    assert result.backbone_ok, f"{result.family}: backbone {result.backbone_status}: {result.backbone_message}"
    assert not result.failures, _report(result)
    assert result.served, f"{result.family} ({result.model}) is served by no variant"


# Shapes the default families already cover, checked with ``pytest -m sweep``.
SWEEP_ONLY = {"convnext", "xcit"}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.sweep) if f in SWEEP_ONLY else f
                                    for f in sorted(REPRESENTATIVE)])
def test_every_variant_on_representative_family(family: str) -> None:
    result = sweep.sweep_family(
        family, VARIANTS, REPRESENTATIVE[family], threads=1, size=SMALL_ODD_SIZE, levels=("all",)
    )
    _assert_family(result)
    assert result.input_note.startswith("odd"), f"{family} ran at {result.input_size} ({result.input_note}), not an odd size"
    assert {c.variant for c in result.checks} == set(VARIANTS)


@pytest.mark.sweep
@pytest.mark.parametrize("family", timm.list_modules())
def test_every_variant_on_every_timm_family(family: str) -> None:
    result = sweep.sweep_family(family, VARIANTS, threads=1)
    if not result.backbone_ok:  # timm's limits, not the necks': recorded in docs/sweep.md
        pytest.skip(f"{result.family} ({result.model}): {result.backbone_status}: {result.backbone_message}")
    _assert_family(result)


# ------------------------------------------------ the sweep itself catches what it is meant to catch


class _FakeNeck(nn.Module):
    """Two outputs at strides 8 and 16; ``unused`` adds a parameter no output depends on."""

    def __init__(self, unused: bool = False, wrong_size: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(8, 4, 1)
        self.unused = nn.Conv2d(4, 4, 1) if unused else None
        self.wrong_size = wrong_size
        self.feature_info = fpn_zoo._features.make_feature_info([4, 4], [8, 16])

    def forward(self, feats):
        outs = [self.proj(f) for f in feats]
        if self.wrong_size:
            outs[1] = outs[1][..., :-1, :]
        return outs


def _raise(error: Exception):
    raise error


@pytest.mark.parametrize(
    "make, status, stage",
    [
        (lambda: _FakeNeck(), sweep.OK, ""),
        (lambda: _FakeNeck(unused=True), sweep.FAILED, "gradient"),
        (lambda: _FakeNeck(wrong_size=True), sweep.FAILED, "shape (train)"),
        (lambda: _raise(RuntimeError("not a ValueError")), sweep.FAILED, "build"),
        (lambda: _raise(ValueError("a plain ValueError is a bug, not a decline")), sweep.FAILED, "build"),
    ],
)
def test_check_variant_reports_failures(monkeypatch, make, status: str, stage: str) -> None:
    spec = fpn_zoo.FeatureSpec((8, 8), (8, 16))
    feats = [torch.randn(2, 8, 13, 17), torch.randn(2, 8, 7, 9)]
    monkeypatch.setattr(sweep.fpn_zoo, "create_neck", lambda name, features: make())
    check = sweep.check_variant("fake", spec, spec, feats, "all")
    assert (check.status, check.stage) == (status, stage), check


def test_check_variant_counts_a_backbone_mismatch_as_declined(monkeypatch) -> None:
    def decline(name, features):
        raise fpn_zoo.BackboneMismatch("fake needs two levels; use 'fpn'")

    spec = fpn_zoo.FeatureSpec((8,), (16,))
    monkeypatch.setattr(sweep.fpn_zoo, "create_neck", decline)
    check = sweep.check_variant("fake", spec, spec, [torch.randn(2, 8, 7, 9)], "all")
    assert check.status == sweep.DECLINED and "two levels" in check.message


def test_report_lists_failures_and_counts() -> None:
    result = sweep.FamilyResult("fam", model="m", input_size=(97, 129), channels=(8,), reductions=(16,))
    result.checks = [
        sweep.Check("fpn", "all", sweep.OK),
        sweep.Check("pan", "all", sweep.FAILED, "forward (train)", "RuntimeError: bad"),
    ]
    text = sweep.render_report(sweep.SweepResult([result], ["fpn", "pan"], 1.0), "python -m tools.sweep")
    assert "RuntimeError: bad" in text and "failed 1" in text
    assert f"timm {timm.__version__}" in text and f"torch {torch.__version__}" in text


def test_smallest_model_is_chosen_by_name() -> None:
    assert sweep.candidate_models("resnet")[0] == "test_resnet"
    names = ["vit_base_patch16_224", "vit_small_patch16_224", "vit_tiny_patch16_224", "vit_large_patch16_224"]
    assert sorted(names, key=sweep._name_key)[:2] == ["vit_tiny_patch16_224", "vit_small_patch16_224"]
