"""The ``fpn-zoo`` command: list, inspect and benchmark the registered necks.

    fpn-zoo list [FILTER] [--family F] [--tag T]            # variants with family, tags and summary
    fpn-zoo info NAME [--backbone B] [--size S]             # output levels, params, GFLOPs
    fpn-zoo bench [--necks PATTERN] [--size S] [--plot F]   # params, GFLOPs, CPU latency
    fpn-zoo accuracy NECK [NECK ...] --seeds 0,1,2 --json F # train + evaluate a detector (the `bench` extra)

Every command works from the registry (:func:`fpn_zoo.list_necks`), so plugins and new families show up
without changes here. Backbones are timm ``features_only`` models built without pretrained weights;
the default is ``resnet18`` with ``out_indices=(2, 3, 4)`` at 256 px. A mistake (unknown neck, unknown
backbone, bad size ...) is one line on stderr and exit status 2.

Example:
    >>> from fpn_zoo.cli import main
    >>> main(["list", "pan_bn*"])  # doctest: +ELLIPSIS
    variant          family  tags ...
    ...
    0
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._text import Progress, format_table

__all__ = ["main", "CliError"]

PROG = "fpn-zoo"


class CliError(Exception):
    """A user mistake: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, no usage block
        raise CliError(f"{message} (see `{self.prog} --help`)")


# ------------------------------------------------------------------------------------------ helpers


def _size(text: str) -> Tuple[int, int]:
    from .measure import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _indices(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"out_indices must be comma-separated integers (e.g. 2,3,4), got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _key_value(text: str) -> Tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. out_channels=128), got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"cannot read the value of {text!r} (YAML syntax)") from None


def _reference(args: argparse.Namespace):
    from .measure import DEFAULT_BACKBONE, DEFAULT_OUT_INDICES, Reference

    out_indices: Any = args.out_indices
    if out_indices is None:
        out_indices = DEFAULT_OUT_INDICES if args.backbone == DEFAULT_BACKBONE else 3
    return Reference(args.backbone, out_indices, args.size)


def _load(ref) -> Tuple[Any, List[Any]]:
    """The backbone and its maps for ``ref``; checks the size fits the backbone."""
    from .measure import backbone_features, load_backbone

    backbone = load_backbone(ref.backbone, ref.out_indices)
    coarsest = max(backbone.feature_info.reduction())
    if min(ref.size) < coarsest:
        raise CliError(f"image size {ref.size[0]}x{ref.size[1]} is smaller than the backbone's coarsest stride "
                       f"{coarsest}: use --size {coarsest} or more")
    return backbone, backbone_features(backbone, ref.size)


def _patterns(text: Optional[str], substring: bool = False) -> List[str]:
    """``"fpn*,pan"`` -> ``["fpn*", "pan"]``; with ``substring``, a pattern without wildcards matches anywhere."""
    out = []
    for p in (p.strip() for p in (text or "").split(",")):
        if p:
            out.append(f"*{p}*" if substring and not any(ch in p for ch in "*?[") else p)
    return out


def _select(text: Optional[str], substring: bool = False) -> List[str]:
    from ._registry import list_necks
    from ._utils import close_matches

    patterns = _patterns(text, substring)
    names = list_necks(patterns) if patterns else list_necks()
    if not names:
        raise CliError(f"no neck matches {text!r}{close_matches(str(text), list_necks())}")
    return names


def _overrides(args: argparse.Namespace) -> Dict[str, Any]:
    return dict(getattr(args, "arg", None) or [])


# ------------------------------------------------------------------------------------------ commands


def cmd_list(args: argparse.Namespace) -> int:
    from ._registry import list_necks, neck_cfg
    from ._utils import close_matches

    names = _select(args.filter, substring=True)
    if args.family:
        names = [n for n in names if neck_cfg(n).family == args.family]
        if not names:
            raise CliError(f"no neck of family {args.family!r} matches {args.filter or '*'!r}")
    if args.tag:
        known = sorted({t for n in list_necks() for t in neck_cfg(n).tags})
        if args.tag not in known:
            raise CliError(f"no variant has the tag {args.tag!r}{close_matches(args.tag, known)}; tags: "
                           f"{', '.join(known)}")
        names = [n for n in names if args.tag in neck_cfg(n).tags]
        if not names:
            raise CliError(f"no neck tagged {args.tag!r} matches {args.filter or '*'!r}")
    rows = [[n, neck_cfg(n).family, ", ".join(neck_cfg(n).tags), neck_cfg(n).summary] for n in names]
    width = shutil.get_terminal_size((120, 20)).columns if sys.stdout.isatty() else 160
    print(format_table(["variant", "family", "tags", "summary"], rows, max_width=width))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ._factory import create_neck
    from ._registry import family_args, get_family, neck_cfg
    from .measure import neck_stats

    cfg = neck_cfg(args.name)
    overrides = _overrides(args)
    ref = _reference(args)
    backbone, feats = _load(ref)
    neck = create_neck(args.name, backbone, **overrides)
    stats = neck_stats(args.name, neck, feats, ref.size)
    defaults = family_args(cfg.family)
    builder = get_family(cfg.family).builder
    changed = {k: v for k, v in {**cfg.args, **overrides}.items() if defaults.get(k) != v or k in overrides}
    info = backbone.feature_info
    inputs = ", ".join(f"{c} ch /{r}" for c, r in zip(info.channels(), info.reduction()))
    print(f"{cfg.name}: {cfg.summary}" if cfg.summary else cfg.name)
    facts = [
        ("family", f"{cfg.family} ({builder.__module__}.{builder.__qualname__})"),
        ("paper", cfg.paper or "-"),
        ("tags", ", ".join(cfg.tags) or "-"),
        ("args", ", ".join(f"{k}={v!r}" for k, v in changed.items()) or "the family's defaults"),
        ("backbone", f"{ref.describe()}; inputs {inputs}"),
    ]
    for key, value in facts:
        print(f"  {key:<9}{value}")
    print()
    rows = [[k, c, s, f"{h}x{w}"] for k, (c, s, (h, w)) in enumerate(stats.outputs)]
    print(format_table(["output", "channels", "stride", "size"], rows, "rrrr"))
    print()
    print(f"params  {stats.params:,} ({stats.mparams:.3f} M, neck only)")
    print(f"GFLOPs  {stats.gflops:.3f} (neck only, batch 1, FlopCounterMode: 2 per multiply-add)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _bench(args)
    finally:
        torch.set_num_threads(old_threads)


def _bench(args: argparse.Namespace) -> int:
    import torch

    from .measure import neck_stats, time_interleaved

    names = _select(args.necks)
    overrides = _overrides(args)
    ref = _reference(args)
    backbone, feats = _load(ref)
    if args.batch > 1:
        from .measure import backbone_features

        feats = backbone_features(backbone, ref.size, batch=args.batch)
    necks, declined, skipped = _build_necks(names, backbone, overrides)
    if not necks:
        why = skipped[0] if skipped else declined[0]
        raise CliError(f"none of {len(names)} necks builds on {ref.describe()}: {why[0]}: {why[1]}")
    # The bar's total is known before anything is measured: one stats pass and `reps` timed calls per neck.
    progress = Progress("bench", enabled=not args.quiet)
    total, done = len(necks) * (1 + args.reps), 0

    def step(name: str) -> None:
        nonlocal done
        done += 1
        progress(done, total, name)

    stats = {}
    try:
        for name, neck in list(necks.items()):
            try:
                stats[name] = neck_stats(name, neck, feats, ref.size)
            except (ValueError, TypeError, RuntimeError) as e:  # builds but does not run: a bug, reported
                skipped.append((name, " ".join(str(e).split())))
                del necks[name]
                total -= args.reps
            step(name)
        if not necks:
            raise CliError(f"none of {len(names)} necks runs on {ref.describe()}: {skipped[-1][0]}: {skipped[-1][1]}")
        fns = {name: (lambda n=neck: n(list(feats))) for name, neck in necks.items()}
        seconds = time_interleaved(fns, reps=args.reps, warmup=args.warmup, on_step=step)
    finally:
        progress.close()
    order = {
        "name": lambda n: 0, "params": lambda n: stats[n].params, "flops": lambda n: stats[n].flops,
        "latency": lambda n: seconds[n],
    }[args.sort]
    ranked = sorted(necks, key=order)  # stable: registry order within ties
    rows = [[n, stats[n].params / 1e6, stats[n].gflops, seconds[n] * 1e3,
             " ".join(str(s) for _, s, _ in stats[n].outputs)] for n in ranked]
    rows = [[r[0], f"{r[1]:.3f}", f"{r[2]:.3f}", f"{r[3]:.2f}", r[4]] for r in rows]
    print(f"# necks alone on {ref.describe()}, batch {args.batch}; latency: median of {args.reps} interleaved "
          f"rounds, {torch.get_num_threads()} CPU thread(s)")
    print(format_table(["neck", "params (M)", "GFLOPs", "latency (ms)", "strides"], rows, "lrrrl"))
    if declined:
        print(f"skipped {len(declined)} variant(s) that decline {ref.backbone}: {', '.join(n for n, _ in declined)}",
              file=sys.stderr)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if args.plot:
        _plot(args.plot, [(n, stats[n].mparams, seconds[n] * 1e3) for n in ranked], ref.describe())
    return 0


def _build_necks(names: Sequence[str], backbone: Any, overrides: Dict[str, Any]):
    """Build every neck before anything is timed.

    Returns:
        ``(necks, declined, skipped)``: the built necks by name (in eval mode); ``(name, reason)`` for the
        variants that decline this backbone (:class:`fpn_zoo.BackboneMismatch`); and for the ones that fail
        to build for another reason (a bad override ...).
    """
    import torch

    from ._factory import create_neck
    from ._features import BackboneMismatch

    necks: Dict[str, Any] = {}
    declined: List[Tuple[str, str]] = []
    skipped: List[Tuple[str, str]] = []
    for name in names:
        torch.manual_seed(0)
        try:
            necks[name] = create_neck(name, backbone, **overrides).eval()
        except BackboneMismatch as e:
            declined.append((name, " ".join(str(e).split())))
        except (ValueError, TypeError) as e:
            skipped.append((name, " ".join(str(e).split())))
    return necks, declined, skipped


def _plot(path: str, points: List[Tuple[str, float, float]], title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{PROG}: no plot: matplotlib is not installed (pip install matplotlib); the table above is complete",
              file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    ax.scatter([p[1] for p in points], [p[2] for p in points], color="#4a6fa5")
    for name, x, y in points:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("CPU latency (ms, median)")
    ax.set_title(f"necks on {title}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"plot written to {path}", file=sys.stderr)


def _seeds(text: str) -> Tuple[int, ...]:
    try:
        seeds = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers >= 0 (e.g. 0,1,2), got {text!r}")
    return seeds


def cmd_accuracy(args: argparse.Namespace) -> int:
    from ._registry import is_neck, list_necks
    from ._utils import close_matches

    try:
        import pycocotools  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as e:
        raise CliError(f"the accuracy benchmark needs the bench extra ({e.name} is missing): "
                       "pip install 'fpn-zoo[bench]'") from None
    import dataclasses

    from .accuracy import Recipe, run_many, summarize

    if args.all == bool(args.necks):
        raise CliError("name the necks to measure, or pass --all for every registered variant")
    names = list_necks() if args.all else list(dict.fromkeys(args.necks))
    for name in names:
        if not is_neck(name):
            raise CliError(f"unknown neck {name!r}{close_matches(name, list_necks())}")
    changes = {k: getattr(args, k) for k in ("steps", "test_scenes") if getattr(args, k) is not None}
    recipe = dataclasses.replace(Recipe(), **changes)
    path = Path(args.json)
    if args.estimate:
        return _estimate_accuracy(names, args, recipe, path)
    total = len(names) * len(args.seeds)
    progress = Progress("accuracy", enabled=not args.quiet)
    finished: List[Tuple[str, int, Optional[str]]] = []

    def on_done(neck: str, seed: int, error: Optional[str]) -> None:
        finished.append((neck, seed, error))
        progress(total - len(todo) + len(finished), total, f"{neck} seed {seed}")
        if error:
            print(f"{PROG}: {neck} seed {seed} failed: {error}", file=sys.stderr)

    from .accuracy.runner import pending

    todo = pending(names, args.seeds, path, recipe)
    if len(todo) < total:
        print(f"{total - len(todo)} of {total} (neck, seed) run(s) already in {path}: kept", file=sys.stderr)
    try:
        run_many(names, args.seeds, path, recipe, jobs=args.jobs, threads=args.threads, on_done=on_done,
                 log=None if args.quiet else lambda msg: print(msg, file=sys.stderr))
    finally:
        progress.close()
    rows = summarize(path, recipe, names)
    if rows:
        print(f"# {path}: AP on the fixed test scenes, mean +- std over seeds (recipe {recipe.key()})")
        print(format_table(["neck", "seeds", "AP", "AP_small", "agnostic AP", "train (s)"], rows, "lrrrrr"))
    failed = [f for f in finished if f[2]]
    return 1 if failed else 0


def _estimate_accuracy(names: List[str], args: argparse.Namespace, recipe: Any, path: Path) -> int:
    """``fpn-zoo accuracy --estimate``: time a few steps of every neck with runs left, print the time they take."""
    import torch

    from .accuracy.runner import ESTIMATE_TIMED_STEPS, estimate_seconds, pending, save_estimates

    todo = pending(names, args.seeds, path, recipe)
    per_neck = {n: sum(1 for m, _ in todo if m == n) for n in dict.fromkeys(n for n, _ in todo)}
    if not per_neck:
        print(f"every (neck, seed) asked for is already in {path}: nothing to run")
        return 0
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    progress = Progress("estimate", enabled=not args.quiet)
    rows, total, estimates = [], 0.0, {}
    try:
        for k, (neck, runs) in enumerate(per_neck.items()):
            t = estimate_seconds(neck, recipe)
            minutes = estimates[neck] = (t["train"] + t["eval"]) / 60
            total += minutes * runs
            rows.append([neck, str(runs), f"{t['train'] / 60:.1f}", f"{t['eval'] / 60:.1f}", f"{minutes * runs:.0f}"])
            progress(k + 1, len(per_neck), neck)
    finally:
        progress.close()
        torch.set_num_threads(old_threads)
        if estimates:
            save_estimates(path, recipe, estimates, args.threads)
    print(f"# estimated from {ESTIMATE_TIMED_STEPS} timed training steps per neck at {args.threads} thread(s) "
          f"(recipe {recipe.key()})")
    print(format_table(["neck", "runs left", "train (min/run)", "eval (min/run)", "total (min)"], rows, "lrrrr"))
    print(f"total: {total / 60:.1f} h of runs; with --jobs {args.jobs}: about {total / 60 / args.jobs:.1f} h "
          "(runs side by side slow each other a little)")
    return 0


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    from .measure import DEFAULT_BACKBONE, DEFAULT_SIZE

    parser = _Parser(prog=PROG, description="Feature-pyramid necks for timm backbones: list, inspect, benchmark.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def backbone_args(p: argparse.ArgumentParser, size: int = DEFAULT_SIZE) -> None:
        p.add_argument("--backbone", "-b", default=DEFAULT_BACKBONE, help=f"timm model name (default {DEFAULT_BACKBONE})")
        p.add_argument("--out-indices", type=_indices, default=None, metavar="I,J,K",
                       help="backbone stages feeding the neck (default: 2,3,4 for resnet18, else the last three)")
        p.add_argument("--size", "-s", type=_size, default=(size, size), metavar="S",
                       help=f"image size, S or HxW (default {size})")
        p.add_argument("--arg", "-a", type=_key_value, action="append", metavar="KEY=VALUE",
                       help="override a neck argument (YAML value), e.g. -a out_channels=128; repeatable")

    p = sub.add_parser("list", help="registered variants with family, tags and summary")
    p.add_argument("filter", nargs="?", default="", help="fnmatch pattern(s), comma-separated; plain text matches a substring")
    p.add_argument("--family", help="only this family")
    p.add_argument("--tag", "-t", help="only variants with this tag (yolo, two-stage, detr, segmentation ...)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="output levels, params and GFLOPs of one variant on a backbone")
    p.add_argument("name", help="a registered variant")
    backbone_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="params, GFLOPs and CPU latency of several variants")
    backbone_args(p)
    p.add_argument("--necks", "-n", default="", metavar="PATTERN", help="fnmatch pattern(s), comma-separated (default: all)")
    p.add_argument("--reps", type=_positive, default=5, help="timed rounds, interleaved over the necks (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per neck first (default 1)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size (default 1)")
    p.add_argument("--threads", type=_positive, default=1,
                   help="torch CPU threads while measuring (default 1: steadier numbers to compare)")
    p.add_argument("--sort", choices=("name", "params", "flops", "latency"), default="name")
    p.add_argument("--plot", metavar="FILE.png", help="save latency vs params as a PNG (needs matplotlib)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("accuracy", help="train and evaluate an FCOS detector per neck on digit scenes (bench extra)",
                       description="Train torchvision FCOS with each neck on scenes of scikit-learn's handwritten "
                       "digits and evaluate it with pycocotools (docs/accuracy.md). Finished (neck, seed) runs "
                       "in the results file are kept and skipped, so an interrupted table resumes.")
    p.add_argument("necks", nargs="*", metavar="NECK", help="registered variants (plugins included)")
    p.add_argument("--all", action="store_true", help="every registered variant")
    p.add_argument("--seeds", type=_seeds, default=(0,), metavar="0,1,2", help="training seeds (default 0)")
    p.add_argument("--json", default="accuracy.json", metavar="FILE", help="results file (default accuracy.json)")
    p.add_argument("--jobs", "-j", type=_positive, default=1,
                   help="runs side by side, one process each (default 1; 2 on a 2-core machine)")
    p.add_argument("--threads", type=_positive, default=1, help="torch CPU threads per run (default 1)")
    p.add_argument("--steps", type=_positive, default=None,
                   help="training steps (default: the published recipe's; other values are a different recipe)")
    p.add_argument("--test-scenes", type=_positive, default=None,
                   help="test scenes evaluated (default: the published recipe's)")
    p.add_argument("--estimate", action="store_true",
                   help="only time a few training steps of each neck with runs left, print how long they take and "
                   "record it in the results file (the docs say how long the unmeasured runs take)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or training log")
    p.set_defaults(func=cmd_accuracy)

    return parser


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, (CliError, ValueError)) else f"{type(e).__name__}: {text}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``fpn-zoo`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, TypeError, RuntimeError, OSError, AssertionError) as e:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
