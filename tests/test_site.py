"""The docs site works offline: its pages load no remote script, stylesheet or font, and Mermaid is shipped."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REMOTE = re.compile(r"""<(?:script|link|img)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("material", reason="mkdocs-material (the docs extra) is not installed")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    yield out
    shutil.rmtree(out, ignore_errors=True)


def test_no_page_loads_anything_remote(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        text = page.read_text(encoding="utf-8")
        remote = [m.group(0) for m in REMOTE.finditer(text)
                  if "rel=\"canonical\"" not in m.group(0)]
        assert not remote, f"{page.relative_to(site)} loads {remote[:3]}"
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, page


def test_mermaid_is_shipped_and_loaded_before_the_theme(site):
    page = (site / "necks" / "fpn" / "index.html").read_text(encoding="utf-8")
    assert 'class="mermaid"' in page, "the variant page has a diagram"
    scripts = re.findall(r"<script[^>]*src=\"([^\"]+)\"", page)
    assert any(s.endswith("assets/javascripts/mermaid.min.js") for s in scripts), scripts
    assert (site / "assets" / "javascripts" / "mermaid.min.js").stat().st_size > 1_000_000
