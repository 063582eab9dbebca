"""Tags: one vocabulary (``tools/docs_gen/tags.py``) for the built-in variants, browsable with
``fpn_zoo.list_necks(tag=...)``, ``fpn-zoo list --tag`` (a tags column) and the docs index."""
from __future__ import annotations

import pytest

import fpn_zoo
from fpn_zoo._registry import BUILTIN
from fpn_zoo.cli import main
from tools import docs_gen
from tools.docs_gen.tags import GROUPS, TAGS, tags_of_group, unknown_tags


def builtin_tags():
    cfgs = [fpn_zoo.neck_cfg(n) for n in fpn_zoo.list_necks()]
    return {c.name: list(c.tags) for c in cfgs if c.source == BUILTIN}


def test_every_builtin_tag_is_in_the_vocabulary():
    bad = unknown_tags(builtin_tags())
    assert not bad, f"tags outside tools/docs_gen/tags.py's vocabulary (add them there, with a group): {bad}"


def test_tags_are_not_repeated_and_converting_families_name_their_reference():
    for name, tags in builtin_tags().items():
        assert len(tags) == len(set(tags)), name
    assert "torchvision" in fpn_zoo.neck_cfg("fpn").tags and "effdet" in fpn_zoo.neck_cfg("bifpn").tags
    assert all(g in GROUPS for g, _ in TAGS.values())
    assert "yolo" in tags_of_group("purpose") and "mmdet" in tags_of_group("reference")
    with pytest.raises(ValueError, match="unknown tag group"):
        tags_of_group("purposes")


def test_list_necks_filters_by_tag():
    yolo = fpn_zoo.list_necks(tag="yolo")
    assert "csp_pan_s" in yolo and "fpn" not in yolo
    assert all("yolo" in fpn_zoo.neck_cfg(n).tags for n in yolo)
    assert fpn_zoo.list_necks("csp*", tag="yolo") == [n for n in yolo if n.startswith("csp")]
    assert fpn_zoo.list_necks(tag="no-such-tag") == []


def test_cli_list_shows_tags_and_filters_by_tag(capsys):
    assert main(["list", "--tag", "two-stage"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["variant", "family", "tags"]
    assert [line.split()[0] for line in lines[1:]] == fpn_zoo.list_necks(tag="two-stage")
    assert "two-stage" in lines[1]
    assert main(["list", "--tag", "yol"]) == 2
    assert "did you mean 'yolo'" in capsys.readouterr().err


def test_docs_index_lists_variants_by_tag_and_the_variants_table_has_tags():
    files = docs_gen.generate(["fpn", "csp_pan_s"], reference=docs_gen.Reference(size=(64, 64)), latency_reps=0,
                              questions=False)
    index = files["index.md"]
    assert "## Variants by tag" in index
    yolo_row = next(line for line in index.splitlines() if line.startswith("| `yolo`"))
    assert "csp_pan_s" in yolo_row and "[fpn]" not in yolo_row
    header = files["variants.md"].split("| variant |", 1)[1].splitlines()[0]
    assert "tags" in header


def test_parity_table_names_a_reference_for_every_family_and_writes_stable_diffs():
    from tools.docs_gen.parity import PARITY, diff_cell

    families = set(fpn_zoo.list_families())
    listed = {case.family for case in PARITY}
    assert listed <= families, f"parity cases for unregistered families: {listed - families}"
    missing = families - listed
    assert not missing, f"families without a row in tools/docs_gen/parity.py: {missing}"
    assert all(case.build is not None or case.note for case in PARITY)  # unmeasured rows say why
    assert [diff_cell(d) for d in (0.0, 3e-16, 1e-15, 2e-7, 5.0)] == ["0", "<= 1e-15", "<= 1e-15", "<= 1e-6", "<= 1e1"]


def test_docs_check_compares_parity_rows_but_not_their_measured_diffs():
    from tools.docs_gen.files import _mask

    on_one_cpu = "| `bfp` | mmdet 3.3 BFP | `from_module(bfp)` | 0 | 0 |  |"
    on_another = "| `bfp` | mmdet 3.3 BFP | `from_module(bfp)` | <= 1e-15 | <= 1e-7 |  |"
    assert _mask(on_one_cpu) == _mask(on_another)
    assert _mask(on_one_cpu) != _mask(on_one_cpu.replace("from_module(bfp)", "from_module(x)"))
    assert _mask("| `fpn` | 64 | 0 | 12 |") == "| `fpn` | 64 | 0 | 12 |"  # other tables are compared as they are


def test_every_mmdet_neck_is_a_parity_row_or_listed_as_not_covered():
    """mmdet's necks (its ``necks/__init__.py`` ``__all__``, read as text: importing mmdet.models needs compiled
    mmcv ops) each have a parity row or a reason in NOT_COVERED (RFP: it re-runs a backbone)."""
    import ast
    import importlib.util
    import re
    from pathlib import Path

    from tools.docs_gen.parity import NOT_COVERED, PARITY

    spec = importlib.util.find_spec("mmdet")
    if spec is None:
        pytest.skip("mmdet not installed")
    init = Path(spec.origin).parent / "models" / "necks" / "__init__.py"
    tree = ast.parse(init.read_text())
    exported = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and any(getattr(t, "id", None) == "__all__" for t in node.targets))
    named = {word for ref in [c.reference for c in PARITY] + [n.reference for n in NOT_COVERED]
             if ref.startswith("mmdet") for word in re.findall(r"\w+", ref)}
    assert "RFP" in exported and len(exported) >= 19
    missing = sorted(set(exported) - named)
    assert not missing, f"mmdet necks in neither PARITY nor NOT_COVERED (tools/docs_gen/parity.py): {missing}"
    assert all(n.reason for n in NOT_COVERED)


def test_parity_page_lists_what_is_not_covered(monkeypatch):
    from tools.docs_gen import parity

    monkeypatch.setattr(parity, "PARITY", ())  # the rows' measurements are not under test here
    page = parity.render_parity()
    section = page.split("## Not covered", 1)[1]
    assert "| mmdet 3.3 RFP (DetectoRS' Recursive Feature Pyramid) |" in section
    assert "second DetectoRS_ResNet" in section
