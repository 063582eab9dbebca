"""State-dict names are stable: checkpoints saved by earlier versions load and give the same outputs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fpn_zoo
from fpn_zoo.graph import GraphNeck

CHECKPOINTS = sorted((Path(__file__).parent / "data").glob("*.pt"))


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_saved_checkpoint_loads_and_reproduces_its_outputs(path):
    saved = torch.load(path, weights_only=True)
    neck = fpn_zoo.create_neck(saved["name"], saved["channels"], **saved["overrides"]).eval()
    neck.load_state_dict(saved["state_dict"])  # strict: every name must still exist
    with torch.no_grad():
        outputs = neck(saved["inputs"])
    for got, expected in zip(outputs, saved["outputs"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_state_dicts_record_their_version():
    neck = fpn_zoo.create_neck("fpn", [4, 8], out_channels=8)
    assert neck.state_dict()._metadata[""]["version"] == GraphNeck._version


def test_the_same_seed_builds_the_same_weights():
    def build():
        torch.manual_seed(123)
        return fpn_zoo.create_neck("pan_bn_lrelu_64", [4, 8, 16]).state_dict()

    a, b = build(), build()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
