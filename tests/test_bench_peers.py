"""Every case of benchmarks/bench_peers.py races the same math: equal parameter counts and equal outputs
(the script's own check, which refuses to time anything else), at a small image so the suite stays quick."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_peers  # noqa: E402


@pytest.mark.parametrize("key", sorted(bench_peers.CASES))
def test_case_is_the_same_math_as_its_peer(key):
    builder, _ = bench_peers.CASES[key]
    try:
        case = builder(128)
    except ImportError as e:
        pytest.skip(str(e))
    diff = bench_peers.check_same_math(case)
    assert diff <= 1e-4
    outs = case.ours(case.inputs)
    assert len(outs) == len(case.run_peer(case.inputs)) >= len(case.inputs)
