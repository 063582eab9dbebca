"""Generated docs: diagrams drawn from the built graphs, pages from the registry, ``--check`` catching changes."""
from __future__ import annotations

import functools
import re
from dataclasses import replace

import pytest
import torch

import fpn_zoo
from fpn_zoo import _registry
from fpn_zoo.diagram import NODE_PREFIX, mermaid
from fpn_zoo.graph import GraphNeck
from fpn_zoo.measure import Reference
from tools import docs_gen
from tools.docs_gen.__main__ import main

SMALL = Reference(size=(64, 64))  # resnet18 (2, 3, 4) at 64 px: the docs machinery without the cost
PYRAMID = fpn_zoo.FeatureSpec((16, 24, 32), (8, 16, 32))
SINGLE_STRIDE = fpn_zoo.FeatureSpec((32,), (16,))

NODE_DEF = re.compile(r"^\s*(\w+)(?:\[|\(\[|\{\{)", re.M)
EDGE = re.compile(r"^\s*(\w+) -->(?:\|\"[^\"]*\"\|)? (\w+)$", re.M)


def build_small(name: str):
    """The variant on a tiny pyramid, or on one single-stride map when it declines pyramids."""
    try:
        return fpn_zoo.create_neck(name, PYRAMID)
    except ValueError:
        return fpn_zoo.create_neck(name, SINGLE_STRIDE)


def generate(names=("fpn", "pan"), **kwargs):
    kwargs.setdefault("reference", SMALL)
    kwargs.setdefault("latency_reps", 0)
    kwargs.setdefault("questions", False)
    kwargs.setdefault("accuracy", False)  # the accuracy pages: tests/test_docs_accuracy.py
    kwargs.setdefault("results", {"results": []})  # whatever docs/accuracy.json holds
    return docs_gen.generate(list(names), **kwargs)


def test_fpn_diagram_has_one_node_per_topology_node_and_every_edge():
    neck = fpn_zoo.create_neck("fpn", PYRAMID, out_channels=8)
    text = mermaid(neck)
    nodes = [n for n in NODE_DEF.findall(text) if n.startswith(NODE_PREFIX)]
    assert sorted(nodes) == sorted(NODE_PREFIX + n.name for n in neck.topology.nodes)
    edges = set(EDGE.findall(text))
    ids = {i: f"in{i}" for i in range(neck.topology.num_levels)}
    ids.update({neck.topology.num_levels + k: NODE_PREFIX + n.name for k, n in enumerate(neck.topology.nodes)})
    for k, node in enumerate(neck.topology.nodes):
        for src in node.inputs:
            assert (ids[src], NODE_PREFIX + node.name) in edges
    outputs = [(ids[o], f"out{k}") for k, o in enumerate(neck.topology.outputs)]
    assert set(outputs) <= edges


@pytest.mark.parametrize("name", fpn_zoo.list_necks())
def test_every_variant_gets_a_well_formed_diagram(name):
    neck = build_small(name)
    text = mermaid(neck)
    assert text.startswith("flowchart LR\n")
    defined = NODE_DEF.findall(text)
    assert len(defined) == len(set(defined)), "node ids must be unique"
    edges = EDGE.findall(text)
    assert edges and all(a in defined and b in defined for a, b in edges)
    outputs = [n for n in defined if re.fullmatch(r"(\w+_)?out\d+", n)]
    assert len(outputs) >= len(neck.feature_info.channels())
    if isinstance(neck, GraphNeck):
        nodes = [n for n in defined if n.startswith(NODE_PREFIX)]
        assert len(nodes) == len(neck.topology.nodes)


def test_pages_come_from_the_registry_and_the_built_module():
    files = generate(["fpn_p6p7"])
    assert sorted(files) == ["index.md", "necks/fpn_p6p7.md", "variants.md"]
    page = files["necks/fpn_p6p7.md"]
    cfg = fpn_zoo.neck_cfg("fpn_p6p7")
    assert cfg.summary in page and cfg.paper in page
    for key in cfg.args:
        assert f"| `{key}` |" in page
    assert "**`2`**" in page  # extra_levels differs from the family default: shown in bold
    neck = fpn_zoo.create_neck("fpn_p6p7", docs_gen.Bench().get(SMALL)[0])
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \| \d+x\d+ \|$", page, re.M)
    assert [(int(c), int(s)) for _, c, s in rows] == list(zip(neck.feature_info.channels(), neck.feature_info.reduction()))
    assert "```mermaid\n" + mermaid(neck) in page
    assert 'fpn_zoo.create_neck("fpn_p6p7", backbone)' in page
    assert "(necks/fpn_p6p7.md)" in files["variants.md"]


def test_check_passes_on_fresh_docs_whatever_the_latency(tmp_path):
    docs_gen.write(tmp_path, generate(latency_reps=1))
    variants = (tmp_path / "variants.md").read_text()
    cells = re.findall(r"\d+\.\d+ ms", variants)
    assert len(cells) == 2  # fpn and pan were timed
    (tmp_path / "variants.md").write_text(variants.replace(cells[0], "9999.99 ms"))
    assert docs_gen.check(tmp_path, generate()) == []


def test_check_lists_an_edited_page(tmp_path):
    docs_gen.write(tmp_path, generate())
    page = tmp_path / "necks" / "pan.md"
    page.write_text(page.read_text().replace("parameters**", "parameters (edited)**"))
    stale = docs_gen.check(tmp_path, generate())
    assert len(stale) == 1 and "pan.md" in stale[0]


def test_check_lists_pages_of_a_changed_new_or_removed_variant(tmp_path, monkeypatch):
    docs_gen.write(tmp_path, generate())
    fpn_zoo.list_necks()  # the registry is loaded before its state is patched
    raw = _registry._state.variants["fpn"]
    monkeypatch.setitem(_registry._state.variants, "fpn", replace(raw, args={**raw.args, "out_channels": 32}))
    stale = docs_gen.check(tmp_path, generate())
    assert {s.split(":")[0].rsplit("/", 1)[-1] for s in stale} == {"variants.md", "fpn.md"}
    monkeypatch.setitem(_registry._state.variants, "fpn_docs_probe", replace(raw, name="fpn_docs_probe"))
    stale = docs_gen.check(tmp_path, generate(["fpn", "pan", "fpn_docs_probe"]))
    assert any("fpn_docs_probe.md: missing" in s for s in stale)
    (tmp_path / "necks" / "gone.md").write_text("# gone\n")
    assert any("gone.md: no such variant" in s for s in docs_gen.check(tmp_path, generate()))


def test_questions_page_measures_channels_depth_direction_and_the_baselines():
    text = generate(["fpn"], questions=True)["questions.md"]
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert len(sections) == 4
    for label in ("64 channels", "128 channels", "256 channels", "smooth_depth=3", "pan, 64 ch", "one level",
                  "levels, no top-down"):
        assert re.search(rf"^\| {re.escape(label)}[^|]* \| \d+\.\d+ \| \d+\.\d+ \| n/a ms \|", text, re.M), label
    assert "| 64 channels: [fpn_bn_lrelu_64](necks/fpn_bn_lrelu_64.md) | " in text
    assert "cannot measure" not in text and "not measured yet" in text  # no results given


def test_docs_command_writes_then_checks(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--necks", "fpn_bn*", "--check", "-q"]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--necks", "fpn_bn*", "--reps", "1", "-q"]) == 0
    assert main(["--out", str(tmp_path), "--necks", "fpn_bn*", "--check", "-q"]) == 0
    pages = sorted(p.name for p in (tmp_path / "necks").iterdir())
    assert pages == [f"{n}.md" for n in sorted(fpn_zoo.list_necks("fpn_bn*"))]


def test_the_example_on_a_page_runs_and_prints_what_it_says(capsys):
    page = generate(["pan_bn_lrelu_64"])["necks/pan_bn_lrelu_64.md"]
    code = re.search(r"## Example\n\n```python\n(.*?)```", page, re.S).group(1)
    expected = code.strip().splitlines()[-1].lstrip("# ")
    exec(compile(code, "example", "exec"), {})
    assert capsys.readouterr().out.strip() == expected


def test_readme_variant_table_lists_every_variant_and_check_catches_a_stale_one(tmp_path):
    table = docs_gen.readme_table()
    for name in fpn_zoo.list_necks():
        assert f"[`{name}`](docs/necks/{name}.md)" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{docs_gen.README_START}\nold table\n{docs_gen.README_END}\nrest\n")
    assert docs_gen.sync_readme(readme, check=True) is False
    assert docs_gen.sync_readme(readme, check=False) is True
    assert docs_gen.sync_readme(readme, check=True) is True
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old table" not in text


# The variant pages' detector lines, run as written on tiny stand-ins for the backbones they name.
TINY_BACKBONES = {docs_gen.pages.DETECTOR_CNN: "test_resnet", docs_gen.pages.DETECTOR_VIT: "test_vit"}
TINY_IMAGES = dict(min_size=64, max_size=64)


@functools.lru_cache(maxsize=None)
def every_page():
    """Every variant's page, generated on the small reference (a few seconds for the whole registry)."""
    return generate(fpn_zoo.list_necks())


def _tiny(backbone):
    if isinstance(backbone, str):
        assert backbone in TINY_BACKBONES, f"a detector line names {backbone!r}: give it a tiny stand-in here"
        return TINY_BACKBONES[backbone]
    return backbone


@pytest.mark.parametrize("name", fpn_zoo.list_necks())
def test_every_variant_pages_detector_line_runs_as_written(name, monkeypatch):
    """The page's ``create_detector`` lines build a detector that runs (one eval forward on one small image),
    with the timm names swapped for timm's test models and 64 px images: no extra argument needed."""
    page = every_page()[f"necks/{name}.md"]
    code = re.search(r"## In a detector\n.*?```python\n(.*?)```", page, re.S).group(1)
    *lines, last = code.strip().splitlines()
    assert last.startswith("losses = model(images, targets)")  # the training call: not run here
    create_detector, create_model = fpn_zoo.create_detector, fpn_zoo.create_model
    monkeypatch.setattr(fpn_zoo, "create_detector", lambda kind, backbone, *a, **kw: create_detector(
        kind, _tiny(backbone), *a, **{**kw, **TINY_IMAGES}))
    monkeypatch.setattr(fpn_zoo, "create_model", lambda backbone, *a, **kw: create_model(_tiny(backbone), *a, **kw))
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile("\n".join(lines), f"docs/necks/{name}.md", "exec"), namespace)
    model = namespace["model"].eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])
    assert len(out) == 1 and out[0]["boxes"].shape[-1] == 4


def test_detector_lines_add_what_the_built_neck_needs():
    def line(name):
        return re.search(r"## In a detector\n.*?```python\n(.*?)```", every_page()[f"necks/{name}.md"], re.S).group(1)

    assert "head_channels=256" in line("yolov8n_neck") and "head_channels" not in line("fpn")  # mixed widths
    assert "out_indices=(-1,)" in line("centernet_neck") and "out_indices" not in line("fpn")  # one map in
    assert 'body = fpn_zoo.create_model("resnet50", neck="fpn"' in line("bfp")  # refines one width: an FPN first
    assert 'create_detector("fasterrcnn", body, neck="bfp"' in line("bfp")
    assert '"vit_base_patch16_224", neck="simple_pyramid_fpn"' in line("simple_pyramid_fpn")  # one stride in
