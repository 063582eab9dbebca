#!/usr/bin/env python
"""Every neck variant on every timm model family: the broad backbone sweep.

For each timm model family (a module of ``timm.models``, see ``timm.list_modules()``) the sweep builds ONE
small model with ``features_only=True, pretrained=False``, runs it once on a batch of two images (an odd
size such as 97 x 129 where the model allows it, else a small ``img_size`` it is built for, else its native
size) and hands the detached maps to every registered neck variant. Each variant must either

* decline at construction with ``fpn_zoo.BackboneMismatch`` (a ``ValueError``; counted as *declined*: the variant does not fit), or
* build, and in train mode return one map per ``feature_info`` entry with the right channels, a size that
  fits its stride (exactly the input map's size at an input level, the halved/doubled size elsewhere),
  finite values, and a finite gradient for every parameter (DDP ``find_unused_parameters=False``);
  then the same in eval mode.

Anything else (another exception, a wrong shape, a missing gradient) is a *failure*. Every family whose
backbone works must be served by at least one variant. Families timm cannot build ``features_only`` are
recorded as such, not as failures of ours.

Each variant runs on two level sets: timm's default ``out_indices`` (every stage: what
``fpn_zoo.create_model(name)`` gives) and, for backbones with more than three levels, the last three (the
usual detection levels, what ``out_indices=(2, 3, 4)`` gives on a CNN).

Usage:
    python -m tools.sweep                                      # everything -> docs/sweep.md
    python -m tools.sweep --families 'swin*,resnet' --necks 'bifpn*' --out /tmp/sweep.md
    python -m tools.sweep --families 'xcit:xcit_nano_12_p8_224'   # a chosen model for a family
    python -m tools.sweep --jobs 2 --threads 1                # two families at a time
    python -m tools.sweep --size 33x49 --levels all           # quicker: smaller images, one level set

Exit status: 0 when nothing failed and every usable family is served, else 1.

``pytest -m sweep`` runs the same over every family (tests/test_sweep.py); the default test suite runs a
handful of representative families.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import math
import os
import platform
import re
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

import fpn_zoo
from fpn_zoo import FeatureSpec
from fpn_zoo._text import Progress

ODD_SIZE = (97, 129)
EVEN_SIZE = (96, 128)  # for backbones that need sizes divisible by 32
BATCH = 2
SMALL_SQUARE_SIZES = (128, 224)
MAX_CANDIDATES = 4  # models per family whose parameter count is compared (built on the meta device)

OK, DECLINED, FAILED = "ok", "declined", "failed"

# Size words in timm model names, smallest first. A name's rank is that of its smallest word; the few
# best-ranked names are then compared by parameter count, so this only needs to be roughly right.
SIZE_WORDS: Tuple[Tuple[str, ...], ...] = (
    ("test",),
    ("atto",),
    ("femto", "zepto"),
    ("pico",),
    ("nano",),
    ("xxxs", "xxs"),
    ("tiny", "t", "mini", "micro"),
    ("xs", "xsmall", "wee", "lite"),
    ("small", "s", "b0", "m0", "a", "l0", "f0"),
)


# ----------------------------------------------------------------------------------------- results


@dataclass
class Check:
    """One variant on one level set of one backbone."""

    variant: str
    levels: str  # "all" or "last3"
    status: str  # OK / DECLINED / FAILED
    stage: str = ""  # build / forward / shape / gradient / eval
    message: str = ""
    seconds: float = 0.0


@dataclass
class FamilyResult:
    """What happened to one timm family."""

    family: str
    model: str = ""
    backbone_status: str = OK  # OK, "no features_only", "backbone error"
    backbone_message: str = ""
    input_size: Tuple[int, int] = (0, 0)
    input_note: str = ""
    build_kwargs: Dict[str, object] = field(default_factory=dict)
    input_fmt: str = "NCHW"
    channels: Tuple[int, ...] = ()
    reductions: Tuple[float, ...] = ()
    params: int = 0
    checks: List[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def backbone_ok(self) -> bool:
        return self.backbone_status == OK

    def variant_status(self, variant: str) -> str:
        """FAILED if any level set failed, OK if one served, else DECLINED (or "" when not run)."""
        statuses = {c.status for c in self.checks if c.variant == variant}
        if not statuses:
            return ""
        if FAILED in statuses:
            return FAILED
        return OK if OK in statuses else DECLINED

    def counts(self, variants: Sequence[str]) -> Dict[str, int]:
        out = {OK: 0, DECLINED: 0, FAILED: 0}
        for v in variants:
            s = self.variant_status(v)
            if s:
                out[s] += 1
        return out

    @property
    def failures(self) -> List[Check]:
        return [c for c in self.checks if c.status == FAILED]

    @property
    def served(self) -> bool:
        return any(c.status == OK for c in self.checks)


# ------------------------------------------------------------------------------ choosing a model


def _size_rank(name: str) -> int:
    if name.startswith("test_"):
        return 0
    ranks = [len(SIZE_WORDS)]
    for token in re.split(r"[_\-.]", name.lower()):
        for rank, words in enumerate(SIZE_WORDS):
            if any(re.fullmatch(re.escape(w) + r"\d*", token) for w in words):
                ranks.append(rank)
                break
    return min(ranks)


def _name_key(name: str) -> Tuple[int, int, int, str]:
    numbers = [int(n) for n in re.findall(r"\d+", name)]
    return _size_rank(name), min(numbers) if numbers else 10**9, len(name), name


def _meta_params(name: str) -> float:
    """Parameter count of ``name`` without allocating it (meta device); inf when it cannot be built so."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        return float(sum(p.numel() for p in model.parameters()))
    except Exception:  # noqa: BLE001 - any model that cannot be built on meta just ranks last
        return math.inf


def candidate_models(family: str) -> List[str]:
    """The family's models, smallest first (timm's ``test_*`` models, else size words + parameter count)."""
    import timm

    names = sorted(timm.list_models(module=family), key=_name_key)
    if not names:
        raise ValueError(f"timm has no models in module {family!r}")
    tests = sorted((n for n in names if n.startswith("test_")), key=lambda n: (len(n), n))
    if tests:
        return tests + [n for n in names if n not in tests]
    shortlist = names[:MAX_CANDIDATES]
    params = {n: _meta_params(n) for n in shortlist}
    shortlist.sort(key=lambda n: (params[n], _name_key(n)))
    return shortlist + names[MAX_CANDIDATES:]


# ------------------------------------------------------------------------------ the backbone side


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _native_size(model: torch.nn.Module) -> Optional[Tuple[int, int]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return (int(size[1]), int(size[2])) if size and len(size) == 3 else None


def _run_backbone(model: torch.nn.Module, size: Tuple[int, int]) -> List[torch.Tensor]:
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.randn(BATCH, 3, *size))
    if isinstance(out, dict):
        out = list(out.values())
    if not isinstance(out, (list, tuple)) or not all(isinstance(f, torch.Tensor) and f.ndim == 4 for f in out):
        shapes = [tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__ for f in out]
        raise TypeError(f"features_only output is not a list of 4-d maps: {shapes}")
    return [f.detach().float() for f in out]


def _size_attempts(
    native: Optional[Tuple[int, int]], odd: Tuple[int, int] = ODD_SIZE
) -> List[Tuple[Dict[str, object], Tuple[int, int], str]]:
    """(build kwargs, input size, note) to try in turn: an odd size (as built, then built for it), an even
    small size, small squares the model is built for, and last the model's native size."""
    attempts: List[Tuple[Dict[str, object], Tuple[int, int], str]] = [
        ({}, odd, "odd"),
        ({"img_size": odd}, odd, "odd (img_size)"),
        ({"img_size": odd, "dynamic_img_pad": True}, odd, "odd (img_size, padded)"),
        ({}, EVEN_SIZE, "even"),
        ({"img_size": EVEN_SIZE}, EVEN_SIZE, "even (img_size)"),
    ]
    for s in SMALL_SQUARE_SIZES:
        if native is None or s < max(native):
            attempts.append(({"img_size": (s, s)}, (s, s), "square (img_size)"))
    if native is not None:
        attempts.append(({}, native, "native"))
    return attempts


def prepare_backbone(family: str, model_name: Optional[str] = None, size: Tuple[int, int] = ODD_SIZE):
    """Build the family's smallest ``features_only`` model and its maps for a batch of two images.

    ``size`` is the odd image size tried first; the fallbacks follow :func:`_size_attempts`.

    Returns:
        ``(result, model, features)``; ``model`` is None when the backbone cannot be used (the reason is in
        ``result.backbone_status`` / ``backbone_message``).
    """
    import timm

    result = FamilyResult(family)
    names = [model_name] if model_name else candidate_models(family)
    last_error = ""
    for name in names[:3]:
        result.model = name
        torch.manual_seed(0)
        try:
            default = timm.create_model(name, pretrained=False, features_only=True).eval()
        except Exception as e:  # noqa: BLE001 - a backbone timm cannot build features_only: recorded
            last_error = _short(e)
            continue
        errors = []
        rejected: set = set()  # keyword arguments the model's constructor does not take
        for kwargs, size, note in _size_attempts(_native_size(default), size):
            if rejected & set(kwargs):
                continue
            try:
                model = default
                if kwargs:
                    torch.manual_seed(0)
                    model = timm.create_model(name, pretrained=False, features_only=True, **kwargs).eval()
                feats = _run_backbone(model, size)
            except Exception as e:  # noqa: BLE001 - try the next size
                if isinstance(e, TypeError) and "unexpected keyword" in str(e):
                    rejected.update(k for k in kwargs if repr(k) in str(e) or f" {k}" in str(e))
                errors.append(f"{note} {size}: {_short(e, 160)}")
                continue
            result.input_size, result.input_note, result.build_kwargs = size, note, kwargs
            result.params = sum(p.numel() for p in model.parameters())
            spec = FeatureSpec.resolve(model)
            result.input_fmt, result.channels, result.reductions = spec.input_fmt, spec.channels, spec.reductions
            return result, model, feats
        result.backbone_status, result.backbone_message = "backbone error", "; ".join(errors)
        return result, None, None
    result.backbone_status, result.backbone_message = "no features_only", last_error
    return result, None, None


# ---------------------------------------------------------------------------------- the neck side


def _expected_range(reduction: float, spec: FeatureSpec, sizes: Sequence[Tuple[int, int]]):
    """Allowed (h, w) ranges of an output at ``reduction``: from the input level nearest in stride."""
    nearest = min(range(spec.num_levels), key=lambda i: (abs(math.log(spec.reductions[i] / reduction)), -i))
    ratio = spec.reductions[nearest] / reduction
    ranges = []
    for s in sizes[nearest]:
        exact = s * ratio
        lo, hi = math.floor(exact + 1e-6), max(1, math.ceil(exact - 1e-6))
        ranges.append((lo, hi))
    return ranges


def _check_outputs(neck, outs, spec: FeatureSpec, sizes) -> str:
    """An empty string when ``outs`` match ``neck.feature_info``, else what is wrong."""
    info = neck.feature_info
    if not isinstance(outs, (list, tuple)):
        return f"returned a {type(outs).__name__}, expected a list of maps"
    if len(outs) != len(info):
        return f"returned {len(outs)} maps, feature_info lists {len(info)}"
    for level, (out, channels, reduction) in enumerate(zip(outs, info.channels(), info.reduction())):
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            return f"output {level} is not a 4-d tensor"
        if out.shape[0] != BATCH:
            return f"output {level} has batch {out.shape[0]}, expected {BATCH}"
        if out.shape[1] != channels:
            return f"output {level} has {out.shape[1]} channels, feature_info says {channels}"
        for axis, (got, (lo, hi)) in zip("hw", zip(out.shape[-2:], _expected_range(reduction, spec, sizes))):
            if not lo <= got <= hi:
                return (
                    f"output {level} (stride {reduction}) has {axis}={got}, expected {lo}..{hi} "
                    f"from input maps {[tuple(s) for s in sizes]} at strides {list(spec.reductions)}"
                )
        if not torch.isfinite(out).all():
            return f"output {level} has non-finite values"
    return ""


def check_variant(variant: str, features, spec: FeatureSpec, feats: List[torch.Tensor], levels: str) -> Check:
    """Build ``variant`` on ``features`` (a model or a spec) and run the checks on ``feats``."""
    start = time.perf_counter()
    check = Check(variant, levels, OK)
    nhwc = spec.input_fmt == "NHWC"
    sizes = [tuple(f.shape[1:3] if nhwc else f.shape[-2:]) for f in feats]

    def fail(stage: str, message: str) -> Check:
        check.status, check.stage, check.message = FAILED, stage, message
        check.seconds = time.perf_counter() - start
        return check

    torch.manual_seed(0)
    try:
        neck = fpn_zoo.create_neck(variant, features)
    except fpn_zoo.BackboneMismatch as e:
        check.status, check.stage, check.message = DECLINED, "build", _short(e, 400)
        check.seconds = time.perf_counter() - start
        return check
    except Exception as e:  # noqa: BLE001 - anything but a BackboneMismatch at construction is a failure
        return fail("build", _short(e) + _where(e))

    try:
        neck.train()
        outs = neck([f.clone() for f in feats])
    except Exception as e:  # noqa: BLE001
        return fail("forward (train)", _short(e) + _where(e))
    problem = _check_outputs(neck, outs, spec, sizes)
    if problem:
        return fail("shape (train)", problem)
    try:
        sum(o.float().mean() for o in outs).backward()
    except Exception as e:  # noqa: BLE001
        return fail("backward", _short(e) + _where(e))
    missing = [n for n, p in neck.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        return fail("gradient", f"{len(missing)} parameters get no gradient: {', '.join(missing[:6])}")
    bad = [n for n, p in neck.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        return fail("gradient", f"non-finite gradients: {', '.join(bad[:6])}")

    try:
        neck.eval()
        with torch.no_grad():
            outs = neck([f.clone() for f in feats])
    except Exception as e:  # noqa: BLE001
        return fail("forward (eval)", _short(e) + _where(e))
    problem = _check_outputs(neck, outs, spec, sizes)
    if problem:
        return fail("shape (eval)", problem)
    check.seconds = time.perf_counter() - start
    return check


def _where(e: BaseException) -> str:
    """The innermost fpn_zoo frame of a traceback (where to look), if any."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f"{os.sep}fpn_zoo{os.sep}" in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" [at {f.filename.split(os.sep + 'fpn_zoo' + os.sep)[-1]}:{f.lineno} in {f.name}]"


LEVEL_SETS = ("all", "last3")


def level_sets(model, spec: FeatureSpec, feats: List[torch.Tensor], which: Sequence[str] = LEVEL_SETS):
    """(label, what create_neck gets, spec, maps): every level (``all``), and the last three when there are
    more (``last3``; with three levels or fewer ``all`` already is that)."""
    sets = []
    if "all" in which or spec.num_levels <= 3:
        sets.append(("all", model, spec, feats))
    if "last3" in which and spec.num_levels > 3:
        sub = FeatureSpec(spec.channels[-3:], spec.reductions[-3:], spec.input_fmt)
        sets.append(("last3", sub, sub, feats[-3:]))
    return sets


def sweep_family(
    family: str,
    variants: Sequence[str],
    model_name: Optional[str] = None,
    threads: Optional[int] = None,
    *,
    size: Tuple[int, int] = ODD_SIZE,
    levels: Sequence[str] = LEVEL_SETS,
) -> FamilyResult:
    """Build one backbone of ``family`` (``model_name``, else its smallest) and check ``variants`` on it.

    Args:
        threads: torch threads while it runs (restored after); None keeps the current setting.
        size: the odd image size tried first.
        levels: the level sets to run (``all``, ``last3``; see :func:`level_sets`).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _sweep_family(family, variants, model_name, size, levels)
    finally:
        torch.set_num_threads(previous)


def _sweep_family(
    family: str, variants: Sequence[str], model_name: Optional[str], size: Tuple[int, int], levels: Sequence[str]
) -> FamilyResult:
    start = time.perf_counter()
    try:
        result, model, feats = prepare_backbone(family, model_name, size)
    except Exception as e:  # noqa: BLE001 - e.g. an unknown family name
        result, model, feats = FamilyResult(family, model=model_name or ""), None, None
        result.backbone_status, result.backbone_message = "backbone error", _short(e)
    if model is not None:
        spec = FeatureSpec(result.channels, result.reductions, result.input_fmt)
        for label, features, level_spec, level_feats in level_sets(model, spec, feats, levels):
            for variant in variants:
                result.checks.append(check_variant(variant, features, level_spec, level_feats, label))
        del model, feats
    result.seconds = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------ the sweep


def _patterns(text: Optional[str]) -> List[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def select_families(patterns: Sequence[str] = ()) -> List[Tuple[str, Optional[str]]]:
    """(family, chosen model or None) for every timm module matching a pattern (``family:model`` pins one)."""
    import timm

    modules = timm.list_modules()
    if not patterns:
        return [(m, None) for m in modules]
    chosen: List[Tuple[str, Optional[str]]] = []
    for pattern in patterns:
        fam, _, model = pattern.partition(":")
        matches = [m for m in modules if fnmatch.fnmatchcase(m, fam)]
        if not matches:
            raise ValueError(f"no timm model family matches {fam!r} (families: timm.list_modules())")
        chosen += [(m, model or None) for m in matches if m not in [c[0] for c in chosen]]
    return chosen


def select_variants(patterns: Sequence[str] = ()) -> List[str]:
    if not patterns:
        return fpn_zoo.list_necks()
    names = [n for n in fpn_zoo.list_necks() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not names:
        raise ValueError(f"no neck variant matches {list(patterns)}; see fpn_zoo.list_necks()")
    return names


class _FamilyProgress:
    """The sweep's progress on a terminal (nothing when stderr is a file): families done, time, failures."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.bar = Progress("sweep", enabled=enabled)
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def step(self, label: str, failed: int = 0) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        self.bar(self.done, self.total, f"{elapsed:5.0f}s eta {eta:5.0f}s fail {failed}  {label[:28]}")
        if self.done == self.total:
            self.bar.close()


@dataclass
class SweepResult:
    families: List[FamilyResult]
    variants: List[str]
    seconds: float
    size: Tuple[int, int] = ODD_SIZE
    levels: Tuple[str, ...] = LEVEL_SETS

    @property
    def failures(self) -> List[Tuple[FamilyResult, Check]]:
        return [(f, c) for f in self.families for c in f.failures]

    @property
    def unserved(self) -> List[FamilyResult]:
        """Families whose backbone works but that no variant serves."""
        return [f for f in self.families if f.backbone_ok and not f.served]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.unserved


def run_sweep(
    families: Sequence[Tuple[str, Optional[str]]],
    variants: Sequence[str],
    *,
    jobs: int = 1,
    threads: Optional[int] = None,
    size: Tuple[int, int] = ODD_SIZE,
    levels: Sequence[str] = LEVEL_SETS,
    progress: bool = True,
) -> SweepResult:
    """Check ``variants`` on one backbone of each family (``jobs`` families at a time, in subprocesses)."""
    start = time.perf_counter()
    bar = _FamilyProgress(len(families), progress)
    results: Dict[str, FamilyResult] = {}
    failed = 0
    if jobs <= 1:
        for family, model in families:
            res = sweep_family(family, variants, model, threads, size=size, levels=levels)
            results[family] = res
            failed += len(res.failures)
            bar.step(family, failed)
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(sweep_family, f, list(variants), m, threads, size=size, levels=tuple(levels)): f
                for f, m in families
            }
            for future in as_completed(futures):
                family = futures[future]
                try:
                    res = future.result()
                except Exception as e:  # noqa: BLE001 - a crashed worker is recorded, the sweep goes on
                    res = FamilyResult(family, backbone_status="backbone error", backbone_message=_short(e))
                results[family] = res
                failed += len(res.failures)
                bar.step(family, failed)
    ordered = [results[f] for f, _ in families]
    return SweepResult(ordered, list(variants), time.perf_counter() - start, tuple(size), tuple(levels))


# ------------------------------------------------------------------------------------ the report


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt_strides(reductions: Iterable[float]) -> str:
    return "/".join(f"{r:g}" for r in reductions)


def _names_alternative(variant: str, message: str) -> bool:
    return any(w != variant and fpn_zoo.is_neck(w) for w in re.findall(r"[A-Za-z0-9_]+", message))


def render_report(result: SweepResult, command: str) -> str:
    import timm

    fams = result.families
    usable = [f for f in fams if f.backbone_ok]
    no_features = [f for f in fams if f.backbone_status == "no features_only"]
    broken = [f for f in fams if f.backbone_status == "backbone error"]
    failures = result.failures
    served = [f for f in usable if f.served]
    checks = [c for f in fams for c in f.checks]
    count = {s: sum(c.status == s for c in checks) for s in (OK, DECLINED, FAILED)}

    lines = [
        "# Backbone sweep: every neck variant on every timm model family",
        "",
        "Generated by `python -m tools.sweep` (do not edit by hand). For each timm model family (a module of",
        "`timm.models`) the sweep builds its smallest model `features_only=True, pretrained=False`, runs a batch",
        f"of {BATCH} images ({result.size[0]}x{result.size[1]} where the model allows an odd size, else a small `img_size` or the",
        "native size) and checks every registered variant on the detached maps: build, or decline with",
        "`BackboneMismatch`; in train and eval mode one map per `feature_info` entry with the right channels and a",
        "size that fits its stride, finite values, a finite gradient for every parameter. Variants run on timm's",
        "default levels (`all`) and, for backbones with more than three, on the last three (`last3`).",
        f"Level sets run: {', '.join(result.levels)}.",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- Versions: fpn_zoo {fpn_zoo.__version__}, timm {timm.__version__}, torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        f"- Runtime: {result.seconds / 60:.1f} min ({torch.get_num_threads()} threads)",
        "",
        "## Summary",
        "",
        f"- Families: {len(fams)}; backbone usable `features_only`: {len(usable)}; no `features_only` in timm: "
        f"{len(no_features)}; backbone fails at every input size: {len(broken)}",
        f"- Families served by at least one variant: **{len(served)} / {len(usable)}**",
        f"- Variants: {len(result.variants)}; checks (variant x level set): {len(checks)} — ok {count[OK]}, "
        f"declined {count[DECLINED]}, **failed {count[FAILED]}**",
        f"- Families with a failure: {len({f.family for f, _ in failures})}; families no variant serves: "
        f"{len(result.unserved)}",
        "",
    ]

    lines += ["## Failures", ""]
    if not failures and not result.unserved:
        lines += ["None.", ""]
    else:
        if failures:
            lines += ["| family | model | input | levels | variant | stage | error |", "|---|---|---|---|---|---|---|"]
            for f, c in failures:
                lines.append(
                    f"| {f.family} | `{f.model}` | {f.input_size[0]}x{f.input_size[1]} | {c.levels} | `{c.variant}` "
                    f"| {c.stage} | {_md(c.message)} |"
                )
            lines.append("")
        for f in result.unserved:
            lines.append(f"- **{f.family}** (`{f.model}`) is served by no variant.")
        lines.append("")

    lines += ["## Families timm cannot build `features_only`", ""]
    if no_features:
        lines += ["| family | model tried | timm's error |", "|---|---|---|"]
        lines += [f"| {f.family} | `{f.model}` | {_md(f.backbone_message)} |" for f in no_features]
    else:
        lines.append("None.")
    lines.append("")
    if broken:
        lines += ["## Backbones that fail at every input size tried (not the necks)", ""]
        lines += ["| family | model | errors |", "|---|---|---|"]
        lines += [f"| {f.family} | `{f.model}` | {_md(f.backbone_message)} |" for f in broken]
        lines.append("")

    lines += [
        "## Per family",
        "",
        "`ok` / `declined` / `failed` count variants (a variant is ok when it serves one level set without",
        "failing the other). Input: the image size used (`odd`: as built; `img_size`: built for that size).",
        "",
        "| family | model | params | input | fmt | channels | strides | ok | declined | failed | s |",
        "|---|---|---:|---|---|---|---|---:|---:|---:|---:|",
    ]
    for f in usable:
        n = f.counts(result.variants)
        lines.append(
            f"| {f.family} | `{f.model}` | {f.params / 1e6:.2f}M | {f.input_size[0]}x{f.input_size[1]} {f.input_note} "
            f"| {f.input_fmt} | {'/'.join(map(str, f.channels))} | {_fmt_strides(f.reductions)} | {n[OK]} "
            f"| {n[DECLINED]} | {n[FAILED]} | {f.seconds:.0f} |"
        )
    lines.append("")

    lines += [
        "## Per variant",
        "",
        "| variant | families ok | declined | failed | why it declines (first reason, families) |",
        "|---|---:|---:|---:|---|",
    ]
    for v in result.variants:
        st = [f.variant_status(v) for f in usable]
        reasons: Dict[str, int] = {}
        for f in usable:
            if f.variant_status(v) == DECLINED:
                msg = next(c.message for c in f.checks if c.variant == v)
                key = re.sub(r"\d+(\.\d+)?", "N", re.sub(r"\[[^\]]*\]", "[...]", msg))[:160]
                reasons[key] = reasons.get(key, 0) + 1
        why = "; ".join(f"{_md(k)} ({n})" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:2])
        lines.append(f"| `{v}` | {st.count(OK)} | {st.count(DECLINED)} | {st.count(FAILED)} | {why} |")
    lines.append("")

    silent = {}
    for f in usable:
        for c in f.checks:
            if c.status == DECLINED and not _names_alternative(c.variant, c.message):
                silent.setdefault((c.variant, c.message), []).append(f.family)
    if silent:
        lines += [
            "## Declines that name no variant to use instead",
            "",
            "A decline should say which variant fits (the project's standard); these do not.",
            "",
            "| variant | families | message |",
            "|---|---|---|",
        ]
        lines += [f"| `{v}` | {', '.join(fs)} | {_md(m)} |" for (v, m), fs in sorted(silent.items())]
        lines.append("")

    legend = ", ".join(f"{i + 1} `{v}`" for i, v in enumerate(result.variants))
    lines += [
        "## Matrix",
        "",
        "Families x variants. Each cell: `all` levels then `last3` (one mark when the backbone has at most",
        "three levels): `o` ok, `-` declined, `X` failed.",
        "",
        f"Variants: {legend}.",
        "",
        "| family | " + " | ".join(str(i + 1) for i in range(len(result.variants))) + " |",
        "|---|" + "---|" * len(result.variants),
    ]
    mark = {OK: "o", DECLINED: "-", FAILED: "X"}
    for f in usable:
        cells = []
        for v in result.variants:
            cells.append("".join(mark[c.status] for c in f.checks if c.variant == v))
        lines.append(f"| {f.family} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", help="comma-separated fnmatch patterns of timm modules; 'family:model' pins a model")
    parser.add_argument("--necks", help="comma-separated fnmatch patterns of neck variants (default: all)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "sweep.md"),
                        help="markdown report to write (default: docs/sweep.md); '-' for none")
    parser.add_argument("--jobs", type=int, default=1, help="families checked at once, in subprocesses (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per job (default 1: on a shared machine more threads than free cores "
                             "make small ops many times slower)")
    parser.add_argument("--size", default=f"{ODD_SIZE[0]}x{ODD_SIZE[1]}", help="odd image size HxW tried first (default %(default)s)")
    parser.add_argument("--levels", default=",".join(LEVEL_SETS), help="level sets: all, last3 (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    try:
        families = select_families(_patterns(args.families))
        variants = select_variants(_patterns(args.necks))
    except ValueError as e:
        parser.error(str(e))
    print(f"sweep: {len(families)} families x {len(variants)} variants", file=sys.stderr)
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2 and min(size) > 0
    except (ValueError, AssertionError):
        parser.error(f"--size must look like 97x129, got {args.size!r}")
    levels = _patterns(args.levels)
    if not levels or set(levels) - set(LEVEL_SETS):
        parser.error(f"--levels must be a comma-separated subset of {','.join(LEVEL_SETS)}, got {args.levels!r}")
    result = run_sweep(
        families, variants, jobs=args.jobs, threads=args.threads, size=size, levels=levels, progress=not args.quiet
    )

    command = "python -m tools.sweep" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    if args.out != "-":
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(render_report(result, command))
        print(f"report: {os.path.normpath(args.out)}", file=sys.stderr)
    usable = [f for f in result.families if f.backbone_ok]
    print(
        f"families {len(result.families)}: usable {len(usable)}, served {sum(f.served for f in usable)}, "
        f"no features_only {sum(f.backbone_status == 'no features_only' for f in result.families)}; "
        f"failures {len(result.failures)}; {result.seconds / 60:.1f} min",
        file=sys.stderr,
    )
    for f, c in result.failures:
        print(f"FAILED {f.family} ({f.model}, {c.levels}) {c.variant} [{c.stage}]: {c.message}", file=sys.stderr)
    for f in result.unserved:
        print(f"UNSERVED {f.family} ({f.model})", file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
