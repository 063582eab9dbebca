"""The wheel: registry.yaml (kept at the repository root) and the `fpn-zoo` command inside, no repository tooling."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_registry_yaml_and_the_cli(tmp_path):
    pytest.importorskip("hatchling")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("fpn_zoo-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "fpn_zoo/registry.yaml" in names
        assert zf.read("fpn_zoo/registry.yaml") == (ROOT / "registry.yaml").read_bytes()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "fpn-zoo = fpn_zoo.cli:main" in zf.read(entry_points).decode()
    # the library and its command only: the docs generator and the sweep stay in the checkout (tools/)
    top_level = {n.split("/")[0] for n in names}
    assert top_level == {"fpn_zoo", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, top_level
    modules = [n for n in names if n.endswith(".py")]
    assert "fpn_zoo/cli.py" in modules and "fpn_zoo/_registry.py" in modules
    tooling = [n for n in modules if any(word in n for word in ("docs_gen", "sweep", "tools/", "scripts/"))]
    assert tooling == []
