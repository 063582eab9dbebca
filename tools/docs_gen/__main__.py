"""Regenerate ``docs/`` (and the README's variant table) from the registry, or check they are current.

Run from the repository root with the package importable (the venv)::

    python -m tools.docs_gen                 # regenerate docs/ and the README table (measures latency)
    python -m tools.docs_gen --check         # exit 1 listing stale files; latency cells are not compared
    python -m tools.docs_gen -n 'fpn*' --out /tmp/docs   # a partial tree, for a quick look
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from fpn_zoo._text import Progress

from . import README_START, check, default_docs_dir, generate, select_necks, sync_readme, write

PROG = "python -m tools.docs_gen"


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
    parser.add_argument("--reps", type=_positive, default=5, help="latency rounds (default 5)")
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
    progress = Progress("docs", enabled=not args.quiet)
    start = time.perf_counter()
    try:
        files = generate(names, latency_reps=0 if args.check else args.reps, questions=not args.necks,
                         parity=not args.necks, progress=progress)
    finally:
        progress.close()
    readme = out.parent / "README.md"
    readme_synced = prune and readme.is_file() and README_START in readme.read_text(encoding="utf-8")
    if args.check:
        stale = check(out, files, prune=prune)
        if readme_synced and not sync_readme(readme, check=True):
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
        sync_readme(readme, check=False)
    print(f"{out}: {len(files)} files generated, {len(touched)} changed, in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
