"""Plugins: a real distribution on sys.path (``*.dist-info`` with ``entry_points.txt``), found through
importlib.metadata in a fresh interpreter — the registry is not patched."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN_MODULE = '''
import fpn_zoo

@fpn_zoo.register_neck("plugin_family")
def plugin_family(spec, *, out_channels: int = 16, smooth_depth: int = 1):
    return fpn_zoo.create_neck("fpn", spec, out_channels=out_channels, smooth_depth=smooth_depth)

NECK_VARIANTS = {
    "necks": {
        "plugin_fpn_wide": {"family": "plugin_family", "args": {"out_channels": 48},
                            "summary": "from a plugin", "paper": "https://example.org", "tags": ["plugin"]},
    },
    "topologies": {
        "plugin_two_level": {"num_levels": 2, "outputs": ["out0", "out1"], "nodes": [
            {"name": "td1", "level": 1, "inputs": ["in1"], "smooth": False},
            {"name": "td0", "level": 0, "inputs": ["in0", "td1"], "smooth": False},
            {"name": "out0", "level": 0, "inputs": ["td0"]},
            {"name": "out1", "level": 1, "inputs": ["td1"]},
        ]},
    },
}
'''

HALF_PLUGIN_MODULE = '''
import fpn_zoo

@fpn_zoo.register_neck("half_plugin_family")
def half_plugin_family(spec, *, out_channels: int = 16):
    return fpn_zoo.create_neck("fpn", spec, out_channels=out_channels)

NECK_VARIANTS = {"necks": {
    "half_first": {"family": "half_plugin_family"},
    "half_second": {"family": "half_plugin_family", "tags": "not-a-list"},
}}
'''


def make_distribution(root: Path, name: str, entry_points: str, files: dict) -> None:
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for filename, text in files.items():
        (root / filename).write_text(text)


def run_python(code: str, path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path)] + sys.path))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300)


def test_plugin_adds_families_and_variants_and_a_broken_one_only_warns(tmp_path):
    make_distribution(tmp_path, "fpn_zoo_good_plugin", """
        [fpn_zoo.necks]
        good = good_plugin
        """, {"good_plugin.py": PLUGIN_MODULE})
    make_distribution(tmp_path, "fpn_zoo_broken_plugin", """
        [fpn_zoo.necks]
        broken = broken_plugin
        """, {"broken_plugin.py": "raise ImportError('this plugin is broken on purpose')\n"})
    make_distribution(tmp_path, "fpn_zoo_half_plugin", """
        [fpn_zoo.necks]
        half = half_plugin
        """, {"half_plugin.py": HALF_PLUGIN_MODULE})
    make_distribution(tmp_path, "fpn_zoo_yaml_plugin", """
        [fpn_zoo.necks]
        yaml_only = yaml_plugin:variants_file
        """, {
        "yaml_plugin.py": "from pathlib import Path\n\ndef variants_file():\n    return Path(__file__).with_name('yaml_plugin.yaml')\n",
        "yaml_plugin.yaml": "necks:\n  pan_from_yaml_plugin:\n    family: pan\n    args: {out_channels: 8}\n"
                            "    summary: a YAML-only plugin\n    paper: https://example.org\n    tags: [plugin]\n",
    })
    result = run_python("""
        import json, warnings, torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fpn_zoo
            names = fpn_zoo.list_necks()
        neck = fpn_zoo.create_neck("plugin_fpn_wide", [8, 16])
        try:
            fpn_zoo.create_neck("half_first", [8, 16])
        except ValueError as e:
            half_error = str(e)
        outs = neck([torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4)])
        print(json.dumps({
            "names": names, "warnings": [str(w.message) for w in caught], "half_error": half_error,
            "warning_files": [w.filename for w in caught], "families": fpn_zoo.list_families(),
            "channels": [o.shape[1] for o in outs], "yaml_args": fpn_zoo.neck_cfg("pan_from_yaml_plugin").args["out_channels"],
            "source": fpn_zoo.neck_cfg("plugin_fpn_wide").source, "topologies": fpn_zoo.list_topologies(),
        }))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "plugin_fpn_wide" in report["names"] and "pan_from_yaml_plugin" in report["names"]
    assert "fpn" in report["names"] and "pan" in report["names"]  # the rest keeps working
    assert report["channels"] == [48, 48]
    assert report["yaml_args"] == 8
    assert "fpn_zoo_good_plugin" in report["source"]
    assert "plugin_two_level" in report["topologies"]
    broken = [w for w in report["warnings"] if "broken" in w]
    assert broken and "fpn_zoo_broken_plugin" in broken[0] and "broken on purpose" in broken[0]
    # all or nothing: the half-valid plugin leaves neither its first variant nor its family behind
    assert "half_first" not in report["names"] and "half_plugin_family" not in report["families"]
    assert "plugin 'half'" in report["half_error"] and "fpn_zoo_half_plugin" in report["half_error"]
    assert "failed to load" in report["half_error"] and "did you mean" not in report["half_error"]
    # the warnings point at the plugins' own files, not at fpn_zoo's registry
    assert sorted(Path(f).name for f in report["warning_files"]) == ["broken_plugin.py", "half_plugin.py"]


def test_plugin_redefining_a_builtin_name_is_reported_with_both_sources(tmp_path):
    make_distribution(tmp_path, "fpn_zoo_clash_plugin", """
        [fpn_zoo.necks]
        clash = clash_plugin
        """, {"clash_plugin.py": "NECK_VARIANTS = {'necks': {'fpn': {'family': 'fpn', 'args': {'out_channels': 8}}}}\n"})
    result = run_python("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fpn_zoo
            print(fpn_zoo.neck_cfg("fpn").args["out_channels"])
        for w in caught:
            print(w.message)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "256"  # the built-in variant stands
    assert any("defined twice" in line and "registry.yaml" in line and "fpn_zoo_clash_plugin" in line for line in lines)
