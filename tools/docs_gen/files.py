"""Writing the generated pages, checking them (latency and parity-diff cells masked), and the README's variant table."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Mapping, Optional, Union

from fpn_zoo import neck_cfg

from .accuracy import Accuracy, Png, ap_cell, load_accuracy
from .markdown import LATENCY_RE, NECK_DIR, md_table, paper_link
from .measuring import select_necks

__all__ = ["PAGES", "README_START", "README_END", "write", "check", "readme_table", "sync_readme", "default_docs_dir"]

PAGES = ("index.md", "variants.md", "questions.md", "parity.md", "accuracy.md")
README_START, README_END = "<!-- variants:start -->", "<!-- variants:end -->"


# parity.md's two measured diff cells (float64, float32): a float32 sum may round to exactly the peer's on one CPU
# and to 1 ulp off on another (oneDNN picks other kernels), so, like latency, they are measured, not compared;
# tests/test_from_module.py holds every converter to the bounds on every machine.
PARITY_DIFF_RE = re.compile(r"\| (?:0|<= 1e-?\d+) \| (?:0|<= 1e-?\d+) \|")


def _mask(text: str) -> str:
    return PARITY_DIFF_RE.sub("| <diff> | <diff> |", LATENCY_RE.sub("<latency>", text))


def _managed(out_dir: Path) -> List[str]:
    """Generated files present in ``out_dir`` (the top pages and every ``necks/*.md``)."""
    found = [p for p in PAGES if (out_dir / p).is_file()]
    neck_dir = out_dir / NECK_DIR
    if neck_dir.is_dir():
        found += [f"{NECK_DIR}/{p.name}" for p in sorted(neck_dir.glob("*.md"))]
    return found


def write(out_dir: Union[str, Path], files: Mapping[str, Any], *, prune: bool = True) -> List[str]:
    """Write ``files`` under ``out_dir``; with ``prune``, delete generated pages of variants that are gone.

    Values are Markdown text or :class:`~tools.docs_gen.accuracy.Png` images (rendered here).
    Returns the relative paths written or deleted.
    """
    out_dir = Path(out_dir)
    touched = []
    for rel, text in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, Png):
            data = text.render()
            if not path.is_file() or path.read_bytes() != data:
                path.write_bytes(data)
                touched.append(rel)
            continue
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            touched.append(rel)
    if prune:
        for rel in _managed(out_dir):
            if rel not in files and rel.startswith(f"{NECK_DIR}/"):
                (out_dir / rel).unlink()
                touched.append(rel)
    return touched


def check(out_dir: Union[str, Path], files: Mapping[str, Any], *, prune: bool = True) -> List[str]:
    """Compare ``out_dir`` with freshly generated ``files``, latency cells masked on both sides.

    Returns one ``"path: reason"`` per stale file (empty when the docs are current). Images
    (:class:`~tools.docs_gen.accuracy.Png`) are not rendered: only their presence is checked, since their bytes
    follow matplotlib's version and the measured latency. With ``prune``, a generated page whose variant no
    longer exists is stale too.
    """
    out_dir = Path(out_dir)
    stale = []
    for rel, text in sorted(files.items()):
        path = out_dir / rel
        if not path.is_file():
            stale.append(f"{out_dir / rel}: missing")
            continue
        if isinstance(text, Png):
            continue
        old, new = _mask(path.read_text(encoding="utf-8")).splitlines(), _mask(text).splitlines()
        if old != new:
            line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
            stale.append(f"{out_dir / rel}: differs from line {line + 1}")
    if prune:
        for rel in _managed(out_dir):
            if rel not in files and rel.startswith(f"{NECK_DIR}/"):
                stale.append(f"{out_dir / rel}: no such variant any more")
    return stale


def readme_table(docs_prefix: str = "docs", accuracy: Optional[Accuracy] = None) -> str:
    """The README's variant table: every built-in variant with family, summary, AP (``accuracy``, default the
    checkout's results file), tags and paper, linking its page."""
    acc = load_accuracy(accuracy)
    rows = []
    for name in select_necks(None):
        cfg = neck_cfg(name)
        rows.append([f"[`{name}`]({docs_prefix}/{NECK_DIR}/{name}.md)", f"`{cfg.family}`", cfg.summary or "-",
                     ap_cell(acc.get(name)), ", ".join(cfg.tags) or "-", paper_link(cfg.paper)])
    note = (f"{len(rows)} variants; params, GFLOPs and latency on a reference backbone are in "
            f"[{docs_prefix}/variants.md]({docs_prefix}/variants.md); AP (mean ± std over seeds) from the accuracy "
            f"benchmark in [{docs_prefix}/accuracy.md]({docs_prefix}/accuracy.md); variants by tag in "
            f"[{docs_prefix}/index.md]({docs_prefix}/index.md#variants-by-tag); parity with the reference "
            f"implementations in [{docs_prefix}/parity.md]({docs_prefix}/parity.md).")
    return "\n".join([note, "", md_table(["variant", "family", "summary", f"[AP]({docs_prefix}/accuracy.md)", "tags",
                                          "paper"], rows, "lllrll")])


def sync_readme(readme: Union[str, Path], *, check: bool, accuracy: Optional[Accuracy] = None) -> bool:
    """Put :func:`readme_table` between the README's markers; with ``check``, only say whether it is current.

    Returns True when the README is (now) current, False when ``check`` finds it stale.

    Raises:
        ValueError: the README lacks the markers.
    """
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} has no {README_START} ... {README_END} markers for the variant table")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{readme_table(accuracy=accuracy)}\n{README_END}{tail}"
    if new == text:
        return True
    if check:
        return False
    path.write_text(new, encoding="utf-8")
    return True


def default_docs_dir() -> Path:
    """``docs/`` of the source checkout this package runs from, else ``./docs``."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "registry.yaml").is_file():
        return root / "docs"
    return Path.cwd() / "docs"
