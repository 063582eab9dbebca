"""torch.compile: every variant compiles as ONE graph (``fullgraph=True`` raises on any graph break) and the
compiled neck computes what the eager one does.

Both training (with a backward through the compiled graph) and eval mode are checked. The every-variant
check uses the ``eager`` backend: Dynamo's tracing is what finds graph breaks, and skipping code generation
keeps it affordable on 2 cores. One real inductor compile (the default backend) of ``fpn`` shows that code
generation works too. Input validation (``check_features``) stays out of the graph: it is
skipped while compiling.
"""
from __future__ import annotations

import pytest
import torch

from _every_variant import build, variant_params
from conftest import features


def assert_all_close(got, expected, atol: float) -> None:
    assert len(got) == len(expected)
    for level, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape, f"level {level}: compiled shape {tuple(g.shape)}, eager {tuple(e.shape)}"
        err = (g - e).abs().max().item()
        assert err <= atol, f"level {level}: compiled differs from eager by {err:.3g} (> {atol})"


@pytest.mark.parametrize("name, overrides", variant_params(pytest.mark.compile))
def test_fullgraph_without_graph_breaks(name: str, overrides: dict) -> None:
    neck, kind = build(name, overrides)
    neck.train()  # training: norms use batch statistics, autograd records the graph
    torch._dynamo.reset()
    compiled = torch.compile(neck, fullgraph=True, backend="eager")

    xs = features(kind)
    torch.manual_seed(0)  # the same random draws for both calls: training-mode DropBlock is random
    expected = neck(features(kind))
    torch.manual_seed(0)
    got = compiled(xs)
    assert_all_close(got, expected, atol=1e-5)
    sum(o.mean() for o in got).backward()  # the compiled graph is differentiable end to end
    assert all(p.grad is not None for p in neck.parameters())

    neck.eval()  # inference: running statistics (Dynamo retraces once for the mode)
    with torch.no_grad():
        assert_all_close(compiled(xs), neck(xs), atol=1e-5)


@pytest.mark.compile
def test_inductor_compiles_fpn() -> None:
    neck, kind = build("fpn")
    neck.eval()
    torch._dynamo.reset()
    compiled = torch.compile(neck, fullgraph=True)  # the default backend: inductor generates C++ on CPU
    with torch.no_grad():
        expected = neck(features(kind))
        got = compiled(features(kind))
    assert_all_close(got, expected, atol=1e-5)

