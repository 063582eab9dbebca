"""Regenerate ``docs/`` (and the README's variant table) from the registry, or check they are current.

Run from the repository root with the package importable (the venv)::

    python -m tools.docs_gen                 # regenerate docs/ and the README table (measures latency)
    python -m tools.docs_gen --check         # exit 1 listing stale files; latency cells are not compared
    python -m tools.docs_gen -n 'fpn*' --out /tmp/docs   # a partial tree, for a quick look
    python -m tools.docs_gen --results /tmp/acc.json --out /tmp/docs   # AP from another results file
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fpn_zoo._text import Progress

from . import README_START, check, default_docs_dir, generate, load_accuracy, select_necks, sync_readme, write
from .accuracy import RESULTS_NAME

PROG = "python -m tools.docs_gen"


def published_latency(out: Path) -> Dict[str, float]:
    """``{variant: ms}`` from the variants table of an existing ``out/variants.md`` (empty when there is none)."""
    page = out / "variants.md"
    if not page.is_file():
        return {}
    found = {}
    for match in re.finditer(r"^\| \[`?([\w.-]+)`?\]\([^)]*\) \|.*?\| (\d+(?:\.\d+)?) ms \|", page.read_text(), re.M):
        found[match.group(1)] = float(match.group(2))
    return found


def _positive(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 listing stale files instead of writing (latency cells are not compared)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: the checkout's docs/)")
    parser.add_argument("--necks", "-n", default="", metavar="PATTERN",
                        help="only these variants (a partial tree: no questions page, no pruning); for quick checks")
    parser.add_argument("--results", metavar="FILE",
                        help=f"accuracy results (default: the checkout's docs/{RESULTS_NAME}; absent: none measured)")
    parser.add_argument("--reps", type=_positive, default=5, help="latency rounds (default 5)")
    parser.add_argument("--keep-latency", action="store_true",
                        help="reuse the latency of docs/variants.md and time only the variants it lacks (new ones): "
                        "for regenerating while the machine is busy")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Generate or check the docs; returns the exit status (0 current / written, 1 stale, 2 bad input)."""
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else default_docs_dir()
    names: Optional[List[str]] = None
    if args.necks:
        names = select_necks(args.necks)
        if not names:
            print(f"{PROG}: error: no built-in neck matches {args.necks!r}", file=sys.stderr)
            return 2
    prune = names is None
    try:
        acc = load_accuracy(args.results)
    except (OSError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    progress = Progress("docs", enabled=not args.quiet)
    start = time.perf_counter()
    try:
        known = published_latency(out) if args.keep_latency and not args.check else None
        files = generate(names, latency_reps=0 if args.check else args.reps, questions=not args.necks,
                         parity=not args.necks, results=acc, progress=progress, known_latency=known)
    finally:
        progress.close()
    readme = out.parent / "README.md"
    readme_synced = prune and readme.is_file() and README_START in readme.read_text(encoding="utf-8")
    if args.check:
        stale = check(out, files, prune=prune)
        if readme_synced and not sync_readme(readme, check=True, accuracy=acc):
            stale.append(f"{readme}: variant table differs")
        if stale:
            print(f"{PROG}: {len(stale)} stale file(s) in {out} (run `{PROG}` to regenerate):", file=sys.stderr)
            for line in stale:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"{out}: {len(files)} generated files are current (latency not compared)", file=sys.stderr)
        return 0
    touched = write(out, files, prune=prune)
    if readme_synced:
        sync_readme(readme, check=False, accuracy=acc)
    print(f"{out}: {len(files)} files generated, {len(touched)} changed, in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
