"""The ``fpn-zoo`` command line: list, info, bench run; mistakes are one line on stderr and a non-zero exit."""
from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

import fpn_zoo
from fpn_zoo.cli import main
from fpn_zoo.measure import count_params, load_backbone


def run(capsys, *argv: str):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_variant_with_its_family(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert rows == {name: fpn_zoo.neck_cfg(name).family for name in fpn_zoo.list_necks()}


def test_list_filter_matches_substrings_and_wildcards(capsys):
    _, out, _ = run(capsys, "list", "pan")
    assert [line.split()[0] for line in out.splitlines()[1:]] == fpn_zoo.list_necks("*pan*")
    _, out, _ = run(capsys, "list", "fpn_*")
    assert [line.split()[0] for line in out.splitlines()[1:]] == fpn_zoo.list_necks("fpn_*")


def test_info_reports_the_built_necks_levels_and_params(capsys):
    code, out, _ = run(capsys, "info", "fpn_p6p7", "--size", "64", "-a", "out_channels=32")
    assert code == 0
    neck = fpn_zoo.create_neck("fpn_p6p7", load_backbone("resnet18"), out_channels=32)
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["output", "channels", "stride"])
    rows = [line.split() for line in lines[start + 1:start + 1 + len(neck.feature_info.channels())]]
    assert [int(r[1]) for r in rows] == neck.feature_info.channels()
    assert [int(r[2]) for r in rows] == neck.feature_info.reduction()
    assert f"params  {count_params(neck):,}" in out
    assert "GFLOPs" in out


def test_bench_two_necks_prints_a_row_each_and_no_progress_bar_off_a_terminal(capsys):
    code, out, err = run(capsys, "bench", "--necks", "fpn,pan_bn*", "--size", "64", "--reps", "1", "--warmup", "0")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names == ["fpn", "pan_bn_lrelu_64"]
    for line in out.splitlines()[2:]:
        params, gflops, latency = (float(x) for x in line.split()[1:4])
        assert params > 0 and gflops > 0 and latency > 0
    assert err == ""  # stderr is no terminal here: no \r frames filling a log


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bench_decides_what_declines_the_backbone_before_timing_so_the_bar_total_holds(capsys, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code = main(["bench", "--necks", "fpn,simple_pyramid,pan", "--size", "64", "--reps", "2", "--warmup", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["fpn", "pan"]
    err = terminal.getvalue()
    frames = re.findall(r"\] (\d+)/(\d+) ", err)
    assert frames and {total for _, total in frames} == {"6"}  # 2 necks x (1 stats pass + 2 timed calls)
    assert [int(done) for done, _ in frames] == list(range(1, 7))
    assert "skipped 1 variant(s) that decline resnet18: simple_pyramid" in err


def test_bench_plot_is_written_or_explained_in_one_line(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plot.png"
    code, _, _ = run(capsys, "bench", "-n", "fpn", "--size", "64", "--reps", "1", "-q", "--plot", str(png))
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    missing = tmp_path / "none.png"
    code, out, err = run(capsys, "bench", "-n", "fpn", "--size", "64", "--reps", "1", "-q", "--plot", str(missing))
    assert code == 0 and "fpn" in out and not missing.exists()
    assert len(err.strip().splitlines()) == 1 and "matplotlib" in err


@pytest.mark.parametrize("argv, expected", [
    (["info", "fpnn"], "did you mean 'fpn'"),
    (["info", "fpn", "--backbone", "resnt18"], "did you mean 'resnet18'"),
    (["info", "fpn", "--size", "0"], "image size"),
    (["info", "fpn", "--size", "abc"], "image size"),
    (["info", "fpn", "--size", "16"], "coarsest stride 32"),
    (["info", "fpn", "--out-indices", "2,3,9"], "out_indices"),
    (["info", "fpn", "-a", "out_chanels=8"], "out_channels"),
    (["bench", "--necks", "zzz*"], "no neck matches"),
    (["bench", "--reps", "0"], "positive integer"),
    (["list", "--bogus"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
    (["docs", "--check"], "invalid choice"),  # the docs generator is repository tooling: python -m tools.docs_gen
])
def test_mistakes_are_one_line_and_a_nonzero_exit(capsys, argv, expected):
    code, out, err = run(capsys, *argv)
    assert code != 0
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("fpn-zoo: error: ") and expected in err and "Traceback" not in err


def test_the_installed_command_prints_no_traceback():
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "fpn_zoo.cli", "info", "fpnn"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fpn-zoo: error: unknown neck 'fpnn'"), proc.stderr
