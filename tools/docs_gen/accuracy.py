"""The accuracy benchmark's results in the docs: ``accuracy.md``, its plots, and the AP cells of the other pages.

The results file (``docs/accuracy.json``, written by ``fpn-zoo accuracy``; :mod:`fpn_zoo.accuracy.runner`) holds
one record per (neck, seed, recipe). The pages use the records of the published recipe
(``fpn_zoo.accuracy.Recipe().key()``) without ``neck_args``, grouped by :class:`fpn_zoo.accuracy.Accuracy`; a
missing file means nothing is measured yet.

Numbers are on pycocotools' 0-1 scale, three decimals: the mean over seeds and the sample standard deviation
(:class:`fpn_zoo.accuracy.Measured`), which needs two seeds. A difference between two variants is called one only when
:func:`compare` finds it larger than twice the larger of the two stds, both with at least two seeds.

The plots (:class:`Png`) are rendered by matplotlib (Agg) when written; :func:`~tools.docs_gen.files.check`
only checks they exist, since their bytes follow matplotlib's version and the measured latency.
"""
from __future__ import annotations

import io
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from fpn_zoo.accuracy.regression_guard import REVIVE_AFTER
from fpn_zoo.accuracy.results import Accuracy, Measured, read_accuracy

from .markdown import GENERATED_NOTE, NECK_DIR, latency_cell, md_table, mparams
from .measuring import VariantDoc

__all__ = [
    "RESULTS_NAME", "PLOT", "CURVES_PLOT", "NOTES_TAG", "Png", "Measured", "Accuracy", "load_accuracy", "compare",
    "pareto_front", "ap_cell", "page_section", "render_accuracy", "accuracy_files", "measure_command", "leave_one_out",
    "reproducibility_text", "silent_runs", "revived_runs_text", "REPRO_TOLERANCE",
]

RESULTS_NAME = "accuracy.json"  # beside the pages: docs/accuracy.json
PLOT = "assets/accuracy.png"
CURVES_PLOT = "assets/accuracy_curves.png"
NOTES_TAG = "original-notes"
DASH = "—"
# The tolerance the Reproducibility section states: a run at a new seed lands within this much AP of the
# published mean of a variant with at least REPRO_MIN_SEEDS seeds (checked there against every run's
# leave-one-out deviation; the variants that break it are named).
REPRO_TOLERANCE = 0.015
REPRO_MIN_SEEDS = 3
UNRECORDED_CPU = "an unrecorded CPU"  # runs from before the results recorded their CPU
INPUTS = {"levels": "C2-C5", "c3_c5": "C3-C5", "fpn_first": "FPN first", "last_stage": "C5"}
METRIC_COLUMNS = ("AP50", "AP75", "AP_small", "AP_medium", "AP_large", "agnostic_AP")


@dataclass(frozen=True)
class Png:
    """A generated image: rendered only when written (``render() -> bytes``); ``check`` verifies it exists."""

    render: Callable[[], bytes] = field(repr=False)


def leave_one_out(acc: Accuracy, min_seeds: int = REPRO_MIN_SEEDS) -> List[Tuple[str, int, float]]:
    """``(variant, seed, AP - mean AP of the variant's other seeds)`` for every run of a variant with at least
    ``min_seeds`` seeds: how far a run at a seed the mean did not include lands from it."""
    out = []
    for m in acc.by_neck.values():
        if m.n < min_seeds:
            continue
        for k, r in enumerate(m.runs):
            others = [float(o["metrics"]["AP"]) for j, o in enumerate(m.runs) if j != k]
            out.append((m.name, int(r.get("seed", 0)), float(r["metrics"]["AP"]) - statistics.fmean(others)))
    return out


def reproducibility_text(acc: Accuracy) -> str:
    """The tolerance a rerun at a new seed is held to, and the leave-one-out deviations that back it."""
    devs = leave_one_out(acc)
    head = (f"A run at a seed not in the table lands within **±{REPRO_TOLERANCE}** AP of the published mean of a "
            f"variant measured with at least {REPRO_MIN_SEEDS} seeds. The evidence: every such run held out "
            "against the mean of its variant's other seeds (leave-one-out). ")
    if not devs:
        return head + f"No variant has {REPRO_MIN_SEEDS} seeds yet, so the tolerance is not yet backed by data.\n"
    worst = max(devs, key=lambda d: abs(d[2]))
    within = [d for d in devs if abs(d[2]) <= REPRO_TOLERANCE]
    broken = sorted({name for name, _, dev in devs if abs(dev) > REPRO_TOLERANCE})
    text = (head + f"{len(within)} of {len(devs)} held-out runs ({len({d[0] for d in devs})} variants) land within "
            f"it; the median deviation is {statistics.median(abs(d[2]) for d in devs):.3f}, the largest "
            f"{worst[2]:+.3f} ({worst[0]}, seed {worst[1]}).")
    cpus = Counter(r.get("cpu", UNRECORDED_CPU) for m in acc.by_neck.values() for r in m.runs)
    if len(cpus) > 1:
        text += (" The runs come from more than one machine (" + ", ".join(f"{n} on {c}" for c, n in cpus.most_common())
                 + "), so these deviations include the machines' differences.")
    if broken:
        text += (" Not held to it: " + ", ".join(f"[{n}]({NECK_DIR}/{n}.md)" for n in broken)
                 + f" (a held-out run more than {REPRO_TOLERANCE} from the others: its result depends on the seed).")
    return text + "\n"


def silent_runs(acc: Accuracy) -> List[Tuple[str, int, float, Optional[float], Optional[float]]]:
    """``(variant, seed, final loss, mean final loss of the variant's other runs, final box-regression loss or
    None where the run did not record its loss terms)`` for every run that detected nothing: AP and
    class-agnostic AP exactly 0 at every evaluation of its curve."""
    out = []
    for m in acc.by_neck.values():
        for r in m.runs:
            points = [point for _, point in r.get("curve", [])] or [r["metrics"]]
            if not all(p.get("AP") == 0 and p.get("agnostic_AP") == 0 for p in points):
                continue
            others = [o["losses"][-1][1] for o in m.runs if o is not r and o.get("losses")]
            terms = r["loss_terms"][-1][1] if r.get("loss_terms") else {}
            out.append((m.name, int(r.get("seed", 0)), float(r["losses"][-1][1]) if r.get("losses") else float("nan"),
                        statistics.fmean(others) if others else None, terms.get("bbox_regression")))
    return out


def silent_runs_text(acc: Accuracy) -> str:
    """Names the runs that detected nothing and says what their signature is (empty when there are none)."""
    runs = silent_runs(acc)
    if not runs:
        return ""
    named = []
    for name, seed, loss, others, regression in runs:
        versus = f" against {others:.2f} for its other seeds" if others is not None else ""
        box = f"; box-regression loss {regression:.3f}" if regression is not None else ""
        named.append(f"[{name}]({NECK_DIR}/{name}.md) seed {seed} (final loss {loss:.2f}{versus}{box})")
    return ("**Runs that detected nothing** (AP and class-agnostic AP exactly 0 at every evaluation): "
            + ", ".join(named) + ". This is the signature of a dead box regression: torchvision's FCOS passes "
            "the regression through a ReLU, and once it is negative at every location every box has zero size, is "
            "dropped before scoring, and no gradient brings the layer back (its GIoU loss sits at exactly 1). "
            "`python benchmarks/fcos_dead_regression.py` trains the detector with the regression dead from the "
            "start and shows the same signature. The recipe now re-initialises a regression that predicts no box "
            f"of positive area for {REVIVE_AFTER} steps in a row (`RegressionGuard` in "
            "`fpn_zoo/accuracy/regression_guard.py`), so such a run was made without it or died again after it.\n")


def revived_runs_text(acc: Accuracy) -> str:
    """Names the runs whose dead box regression the recipe re-initialised (empty when none was)."""
    named = [f"[{m.name}]({NECK_DIR}/{m.name}.md) seed {r.get('seed', 0)} (after step "
             + ", ".join(str(s) for s in r["revived"]) + ")"
             for m in acc.by_neck.values() for r in m.runs if r.get("revived")]
    if not named:
        return ""
    return ("**Runs whose box regression was re-initialised** (it predicted no box of positive area for "
            f"{REVIVE_AFTER} steps in a row): " + ", ".join(named) + ".\n")


def load_accuracy(source: Union[str, Path, Mapping[str, Any], Accuracy, None] = None,
                  recipe_key: Optional[str] = None) -> Accuracy:
    """The results in ``source``: a path (default ``docs/accuracy.json`` of the checkout), the file's parsed
    contents, or an :class:`Accuracy` (returned as is). A missing file is an empty table."""
    if isinstance(source, Accuracy):
        return source
    if isinstance(source, Mapping):
        return Accuracy.from_data(source, recipe_key)
    if source is None:
        from .files import default_docs_dir

        source = default_docs_dir() / RESULTS_NAME
    return read_accuracy(source, recipe_key)


# --- cells and sentences ---------------------------------------------------------------------------------------


def inputs_text(m: Measured) -> str:
    """What the neck read (the runs' ``inputs``; runs from before it was recorded read the four levels)."""
    return " / ".join(sorted({INPUTS[r.get("inputs", "levels")] for r in m.runs}))


def num(x: Optional[float]) -> str:
    return DASH if x is None else f"{x:.3f}"


def ap_cell(m: Optional[Measured], metric: str = "AP", *, always_std: bool = False, seeds: bool = False) -> str:
    """``0.523 ± 0.012``; one seed: ``0.523`` (``0.523 ± —`` with ``always_std``); ``—`` when not measured.
    With ``seeds``, ``(n)`` follows."""
    mean = m.mean(metric) if m is not None else None
    if mean is None:
        return DASH
    std = m.std(metric)
    text = f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f} ± {DASH}" if always_std else f"{mean:.3f}"
    return f"{text} ({m.n})" if seeds else text


def delta_cell(m: Optional[Measured], base: Optional[Measured], metric: str = "AP") -> str:
    a = m.mean(metric) if m is not None else None
    b = base.mean(metric) if base is not None else None
    return DASH if a is None or b is None else f"{a - b:+.3f}"


@dataclass(frozen=True)
class Verdict:
    """How ``a`` compares with ``b`` on one metric: ``difference`` of the means, ``shown`` when it exceeds the
    seed spread (``sign`` then +1 / -1), ``text`` the sentence's clause."""

    difference: Optional[float]
    shown: bool
    sign: int
    text: str


def compare(a: Optional[Measured], b: Optional[Measured], metric: str = "AP") -> Verdict:
    """The rule of the pages: a difference is shown only when ``|mean a - mean b| > 2 * max(std a, std b)`` and
    both have at least two seeds."""
    if a is None or b is None or a.mean(metric) is None or b.mean(metric) is None:
        return Verdict(None, False, 0, "not measured yet")
    diff = a.mean(metric) - b.mean(metric)
    sa, sb = a.std(metric), b.std(metric)
    if sa is None or sb is None:
        few = [f"`{m.name}`" for m in (a, b) if m.std(metric) is None]
        has = f"{few[0]} has" if len(few) == 1 else f"{' and '.join(few)} have"
        return Verdict(diff, False, 0, f"{diff:+.3f}, but {has} one seed, so the seed spread is unknown: "
                                       "no difference shown")
    spread = max(sa, sb)
    if abs(diff) > 2 * spread:
        word = "higher" if diff > 0 else "lower"
        return Verdict(diff, True, 1 if diff > 0 else -1,
                       f"{diff:+.3f}, more than twice the larger seed std ({spread:.3f}): **{word}**")
    return Verdict(diff, False, 0, f"{diff:+.3f} (larger seed std {spread:.3f}): within the seed spread: "
                                   "no difference shown")


def comparison_line(acc: Accuracy, a: str, b: str, what: str) -> str:
    """One bullet: ``what`` (a vs b) on AP and AP_small, worded from the numbers by :func:`compare`."""
    ma, mb = acc.get(a), acc.get(b)
    head = f"- {what} (`{a}` vs `{b}`): "
    if ma is None or mb is None:
        missing = " and ".join(f"`{n}`" for n, m in ((a, ma), (b, mb)) if m is None)
        return head + f"{missing} not measured yet.\n"
    return head + f"AP {compare(ma, mb, 'AP').text}; AP_small {compare(ma, mb, 'AP_small').text}.\n"


def measure_command(name: str) -> str:
    return f"fpn-zoo accuracy {name} --seeds 0,1,2 --json docs/{RESULTS_NAME}"


def page_section(name: str, acc: Accuracy) -> str:
    """The "Accuracy" section of a variant's page."""
    m = acc.get(name)
    out = ["## Accuracy\n"]
    if m is None:
        out.append("Not measured yet by the [accuracy benchmark](../accuracy.md). To measure it (the `bench` extra; "
                   "then `python -m tools.docs_gen` updates the pages):\n")
        out.append(f"```\n{measure_command(name)}\n```\n")
        return "\n".join(out)
    seeds = ", ".join(str(r.get("seed")) for r in m.runs)
    over = (f"mean ± sample std over {m.n} seeds: {seeds}" if m.n >= 2 else
            f"one seed ({seeds}), so no spread yet; `{measure_command(name)}` adds seeds")
    out.append(f"From the [accuracy benchmark](../accuracy.md) (FCOS on digit scenes; {over}):\n")
    out.append(md_table(["AP", "AP_small", "agnostic AP", "seeds"],
                        [[ap_cell(m), ap_cell(m, "AP_small"), ap_cell(m, "agnostic_AP"), str(m.n)]], "rrrr"))
    curve = curve_text(m, acc.recipe.get("steps"))
    if curve:
        out.append("\n" + curve)
    return "\n".join(out)


def curve_text(m: Measured, steps: Optional[int]) -> str:
    """The learning curve in a sentence: AP and agnostic AP at each evaluation, the last one at the end of
    training (means over the seeds), '' without a curve."""
    ap, agnostic = m.curve("AP"), dict(m.curve("agnostic_AP"))
    if not ap:
        return ""
    at = " / ".join(str(step) + (" (the end)" if step == steps else "") for step, _ in ap)
    text = (f"Learning curve ({'mean over the seeds' if m.n >= 2 else 'one seed'}): AP "
            + " / ".join(f"{v:.3f}" for _, v in ap) + f" at steps {at}")
    if all(step in agnostic for step, _ in ap):
        text += "; agnostic AP " + " / ".join(f"{agnostic[step]:.3f}" for step, _ in ap)
    return text + ".\n"


# --- the Pareto front and the plots -------------------------------------------------------------------------


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point beats: none at lower-or-equal cost ``x`` has higher-or-equal ``y``
    (the highest AP for a given latency), ordered by ``x``. Of exact duplicates the first is kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plot_pareto(acc: Accuracy, names: Sequence[str], latency: Mapping[str, float]) -> bytes:
    """AP (error bars: std over seeds) against the neck's CPU latency, labelled, the Pareto front as a step line.
    Without latency (none measured), against the neck's GFLOPs on the benchmark's backbone instead."""
    measured = [acc.by_neck[n] for n in names if n in acc.by_neck and acc.by_neck[n].mean() is not None]
    use_latency = any(latency.get(m.name) is not None for m in measured)
    if use_latency:
        measured = [m for m in measured if latency.get(m.name) is not None]
        xs = [latency[m.name] for m in measured]
        xlabel, what = "neck CPU latency (ms, log scale; docs' reference backbone, one thread)", "CPU latency"
    else:
        measured = [m for m in measured if m.cost("neck_gflops") is not None]
        xs = [m.cost("neck_gflops") for m in measured]
        xlabel, what = "neck GFLOPs (log scale; the benchmark's backbone at 128 px)", "GFLOPs"
    ys = [m.mean() for m in measured]
    errs = [m.std() or 0.0 for m in measured]
    fig = _figure(10, 6.5)
    ax = fig.add_subplot()
    ax.errorbar(xs, ys, yerr=errs, fmt="o", ms=4, color="tab:blue", ecolor="tab:gray", elinewidth=1, capsize=2,
                label="variant (mean over seeds ± std)")
    front = pareto_front(list(zip(xs, ys)))
    if front:
        fx, fy = [xs[i] for i in front], [ys[i] for i in front]
        ax.step(fx + [max(xs) * 1.15], fy + [fy[-1]], where="post", color="tab:red", lw=1.2,
                label="Pareto front (highest AP at a given cost)")
        ax.scatter(fx, fy, s=70, facecolors="none", edgecolors="tab:red", linewidths=1.5, zorder=3)
    for i, m in enumerate(measured):
        ax.annotate(m.name, (xs[i], ys[i]), xytext=(4, 3), textcoords="offset points", fontsize=7,
                    color="tab:red" if i in front else "black")
    if xs and min(xs) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("AP (digit scenes, pycocotools)")
    ax.set_title(f"Accuracy benchmark: AP against the neck's {what}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_curves(acc: Accuracy, names: Sequence[str]) -> bytes:
    """AP and class-agnostic AP against the training step, mean over seeds, one line per variant."""
    fig = _figure(11, 4.5)
    axes = fig.subplots(1, 2)
    for ax, metric, title in zip(axes, ("AP", "agnostic_AP"), ("AP", "class-agnostic AP")):
        for name in names:
            curve = acc.by_neck[name].curve(metric)
            if curve:
                ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o", ms=3, label=name)
        ax.set_xlabel("training step")
        ax.set_ylabel(title)
        ax.set_title(f"{title} while training (mean over seeds)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return _png(fig)


# --- the page --------------------------------------------------------------------------------------------------


def _duration(minutes: float) -> str:
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def _whole_table_text(acc: Accuracy, measured: Sequence[Measured], missing: Sequence[str]) -> str:
    """How long the whole table takes at one seed: the measured runs' time and the estimates for the rest."""
    estimated = [acc.estimates[n] for n in missing if n in acc.estimates]
    if not estimated:
        return ("How long their runs take on your machine: `fpn-zoo accuracy --all --seeds 0 --estimate` (it times "
                "a few training steps of each).\n")
    seed0 = [r for m in measured for r in m.runs[:1]]
    done_hours = sum(float(r.get("train_seconds", 0)) + float(r.get("eval_seconds", 0)) for r in seed0) / 3600
    rest_hours = sum(estimated) / 60
    longest = sorted(((acc.estimates[n], n) for n in missing if n in acc.estimates), reverse=True)[:3]
    text = (f"In brackets, a run's estimated time (one thread; `fpn-zoo accuracy --all --seeds 0 --estimate` times a "
            f"few training steps of each). The whole table at one seed (`fpn-zoo accuracy --all --seeds 0 --jobs 2`) "
            f"is about {done_hours + rest_hours:.0f} h of single-thread runs — {done_hours:.1f} h measured, "
            f"{rest_hours:.0f} h estimated for the {len(estimated)} runs left"
            + (f", {len(missing) - len(estimated)} not estimated" if len(estimated) < len(missing) else "")
            + f" — so about {(done_hours + rest_hours) / 2:.0f} h on two cores; the longest: "
            + ", ".join(f"{n} ({_duration(m)})" for m, n in longest) + ".")
    cpus = Counter(acc.estimate_cpus.get(n, UNRECORDED_CPU) for n in missing if n in acc.estimates)
    if len(cpus) > 1:
        made_on = ", ".join(f"{k} on {c}" for c, k in cpus.most_common())
        text += f" The estimates come from more than one machine ({made_on}), so their sum mixes the machines' speeds."
    return text + "\n"


def _recipe_text() -> str:
    from fpn_zoo.accuracy.recipe import Recipe

    r = Recipe()
    s = r.scenes
    return (
        f"- **Scenes**: {s.canvas} px canvases with 1-{s.max_digits} of scikit-learn's real handwritten digits "
        f"({s.min_size:g}-{s.max_size:g} px, log-uniform) on clutter; training scenes are drawn fresh from the "
        f"seed, the {r.test_scenes} test scenes are fixed and made of digits no training scene uses.\n"
        f"- **Backbone**: a half-width timm `{r.backbone}` (channels {', '.join(map(str, r.backbone_channels))}), "
        f"pretrained once ({r.pretrain_steps} steps) on single-digit classification, cached and loaded by "
        "every run: the stand-in for ImageNet weights.\n"
        "- **Detector**: torchvision FCOS from `fpn_zoo.create_detector`; every neck's levels are projected by a "
        f"1x1 conv to one {r.head_channels}-channel head, so the head's width and cost do not follow the neck's.\n"
        "- **Inputs**: a neck reads the backbone's four levels (strides 4-32); one that cannot gets the first that "
        "it builds on of: the three coarsest (necks written for C3-C5 plus extra levels, e.g. NAS-FPN), an FPN's "
        "outputs (necks that refine levels of one width, e.g. BFP as in Libra R-CNN; its cost then includes the "
        "FPN), or the last stage alone (necks that read one map). The table's *inputs* column says which.\n"
        f"- **Training**: {r.steps} steps of batch {r.batch}, AdamW (lr {r.lr:g}, the backbone at "
        f"{r.backbone_lr_scale:g}x), {r.warmup} warm-up steps then cosine decay, one CPU thread; the same for "
        "every neck, so a difference between two rows is the neck's (and the seed's). A box regression that "
        f"predicts no box of positive area for {REVIVE_AFTER} steps in a row (torchvision's FCOS passes it through "
        "a ReLU, and once dead it gets no gradient) is re-initialised; a run that needs it says so below.\n"
        "- **Evaluation**: pycocotools' AP (IoU 0.50:0.95), AP50, AP75 and AP by object size with COCO's area "
        "buckets scaled to the 128 px canvas: small < 16², medium 16²-32², large > 32² px. **Agnostic AP** "
        "treats every box as one class (after a class-agnostic NMS): localisation alone, which is what a neck "
        "changes most; the gap between it and AP is digit classification.\n"
    )


#: A variant whose mean AP is below this fraction of its mean class-agnostic AP is named under the table: its
#: detector finds the digits but had not learned to name them within the budget.
LAGGING_CLASSIFICATION = 0.5


def lagging_classification_text(measured: Sequence[Measured]) -> str:
    """The sentence naming the variants whose AP is far below their class-agnostic AP ('' when there are none)."""
    lagging = [m for m in measured if m.mean() is not None and m.mean("agnostic_AP")
               and m.mean() < LAGGING_CLASSIFICATION * m.mean("agnostic_AP")]
    if not lagging:
        return ""
    items = ", ".join(f"[{m.name}]({NECK_DIR}/{m.name}.md) (AP {m.mean():.3f}, agnostic AP "
                      f"{m.mean('agnostic_AP'):.3f}; reads {inputs_text(m)})" for m in lagging)
    return (f"**Classification lags localisation** where AP is below {LAGGING_CLASSIFICATION:g}x the class-agnostic "
            f"AP: {items}. The detector finds the digits but had not learned to tell them apart by the end of the "
            "budget, so these rows rank how fast the head learns to classify from the neck's maps as much as how "
            "well the maps localise; compare their agnostic AP with the others'.\n")


#: A variant whose mean AP rose by more than this over the last interval of its learning curve (the last
#: evaluation before the end, to the end) is named under the table: it was still climbing when the budget ran out.
STILL_CLIMBING = 0.1


def last_gain(m: Measured) -> Optional[Tuple[int, float, int, float]]:
    """``(step, AP there, end step, final AP)``: the last interval of ``m``'s learning curve, from its last
    evaluation before the end to the end (the curve ends with the final evaluation; means over the seeds); None
    without two points and a final AP."""
    curve, final = m.curve("AP"), m.mean()
    if len(curve) < 2 or final is None:
        return None
    return curve[-2][0], curve[-2][1], curve[-1][0], final


def still_climbing_text(measured: Sequence[Measured]) -> str:
    """The sentence naming the variants whose AP rose by more than :data:`STILL_CLIMBING` over the last interval
    of their learning curve, against the median rise of every measured variant ('' when none rose that much)."""
    gains = {m.name: g for m in measured if (g := last_gain(m)) is not None}
    climbing = [m for m in measured if m.name in gains and gains[m.name][3] - gains[m.name][1] > STILL_CLIMBING]
    if not climbing:
        return ""
    median = statistics.median(final - ap for _, ap, _, final in gains.values())
    items = []
    for m in climbing:
        step, ap, end, final = gains[m.name]
        agnostic = dict(m.curve("agnostic_AP"))
        item = f"[{m.name}]({NECK_DIR}/{m.name}.md) (AP {ap:.3f} → {final:.3f} from step {step} to {end}"
        if step in agnostic and m.mean("agnostic_AP") is not None:
            item += f"; agnostic AP {agnostic[step]:.3f} → {m.mean('agnostic_AP'):.3f}"
        items.append(item + ")")
    return (f"**Still climbing when the budget ran out**: every run gains AP over the last interval of its "
            f"learning curve as the learning rate anneals (median {median:+.3f} over the measured variants); these "
            f"gained more than {STILL_CLIMBING:g}: {', '.join(items)}. A longer budget may rank them higher; their "
            "pages show the whole curve.\n")


def render_accuracy(acc: Accuracy, docs: Sequence[VariantDoc], latency: Mapping[str, float]) -> str:
    names = [d.cfg.name for d in docs]
    measured = sorted((acc.by_neck[n] for n in names if n in acc.by_neck),
                      key=lambda m: (-(m.mean() if m.mean() is not None else -1.0), m.name))
    missing = [n for n in names if n not in acc.by_neck]
    unknown = sorted(n for n in acc.by_neck if n not in names)
    out = [
        "# Accuracy\n", GENERATED_NOTE + "\n",
        "What a neck is for is accuracy, and only training measures it. This benchmark trains the same small "
        "detector with each neck, on the CPU, on data that ships with scikit-learn, and evaluates it with "
        "pycocotools (`fpn_zoo.accuracy`; `fpn-zoo accuracy` runs it).\n",
        _recipe_text(),
        "AP is a number on this task, not a COCO number: use it to compare the necks with each other. Costs in the "
        "table: the neck's parameters and GFLOPs on the benchmark's backbone at 128 px (the runs record them); "
        "CPU latency as in [Variants](variants.md) (the docs' reference backbone, one thread, this machine).\n",
        "## Reproduce\n",
        "```\npip install \".[bench]\"\n"
        f"{measure_command('NECK')}      # one variant, three seeds\n"
        f"fpn-zoo accuracy --all --seeds 0 --json docs/{RESULTS_NAME} --estimate --jobs 2  # how long the rest takes here\n"
        f"fpn-zoo accuracy --all --seeds 0 --json docs/{RESULTS_NAME} --jobs 2             # the whole table\n"
        "python -m tools.docs_gen                                             # these pages\n```\n",
        f"Finished (neck, seed) runs are kept in `docs/{RESULTS_NAME}` and skipped on a rerun. The table shows the "
        f"runs of the published recipe (key `{acc.recipe_key}`, `fpn_zoo.accuracy.Recipe()`).\n",
        "## Results\n",
    ]
    if not measured:
        out.append("No variant has been measured yet: the table appears here once the results file holds runs "
                   "of the published recipe.\n")
    else:
        runs = sum(m.n for m in measured)
        hours = sum(float(r.get("train_seconds", 0.0)) for m in measured for r in m.runs) / 3600
        versions = {}
        for m in measured:
            for r in m.runs:
                for k in ("torch", "torchvision", "timm", "pycocotools"):
                    if k in r.get("versions", {}):
                        versions.setdefault(k, set()).add(str(r["versions"][k]))
        tools_line = ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in versions.items())
        out.append(f"{len(measured)} of {len(names)} variants measured, {runs} runs ({hours:.1f} h of training"
                   f"{'; ' + tools_line if tools_line else ''}). AP: mean ± sample std over the seeds "
                   f"(`{DASH}` with one seed); the other metrics are means. Sorted by AP.\n")
        rows = []
        for m in measured:
            rows.append([f"[{m.name}]({NECK_DIR}/{m.name}.md)", str(m.n), ap_cell(m, always_std=True),
                         *[num(m.mean(k)) for k in METRIC_COLUMNS],
                         mparams(int(m.cost("neck_params"))) if m.cost("neck_params") is not None else DASH,
                         f"{m.cost('neck_gflops'):.3f}" if m.cost("neck_gflops") is not None else DASH,
                         latency_cell(latency.get(m.name)), inputs_text(m)])
        out.append(md_table(["variant", "seeds", "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                             "agnostic AP", "neck params (M)", "neck GFLOPs", "CPU latency", "inputs"], rows,
                            "lrrrrrrrrrrrl"))
        for text in (lagging_classification_text(measured), still_climbing_text(measured)):
            if text:
                out.append("\n" + text)
        out.append("\n## AP against latency\n")
        out.append("Each measured variant's AP (error bars: std over seeds) against its CPU latency; the red step "
                   "line is the Pareto front, the highest AP reached at a given latency, its variants ringed.\n")
        out.append(f"![AP against CPU latency]({PLOT})\n")
        out.append("\n## Reproducibility\n")
        out.append(reproducibility_text(acc))
        out.extend(text for text in (silent_runs_text(acc), revived_runs_text(acc)) if text)
    out.append("\n## Not measured yet\n")
    if missing:
        out.append(f"{len(missing)} registered variants have no run of the published recipe yet: "
                   + ", ".join(f"[{n}]({NECK_DIR}/{n}.md)" + (f" ({_duration(acc.estimates[n])})"
                                                             if n in acc.estimates else "") for n in missing) + ".\n")
        out.append(_whole_table_text(acc, measured, missing))
    else:
        out.append("Every registered variant is measured.\n")
    if unknown:
        out.append("The results file also holds runs of names that are not registered variants (not shown): "
                   + ", ".join(f"`{n}`" for n in unknown) + ".\n")
    if acc.others:
        out.append(f"{acc.others} run{'s' if acc.others != 1 else ''} of other recipes or with overridden neck "
                   "arguments (in the file, not shown).\n")
    notes = [n for n in names if n in acc.by_neck and _has_tag(docs, n, NOTES_TAG)]
    out.append("\n## Learning curves\n")
    if notes:
        out.append(f"AP and class-agnostic AP against the training step for the original notes' variants (tag "
                   f"`{NOTES_TAG}`; see [Questions](questions.md)), mean over seeds. A run records the curve "
                   "every `eval_every` steps of its recipe and always at the end.\n")
        out.append(f"![Learning curves]({CURVES_PLOT})\n")
    else:
        out.append(f"None of the original notes' variants (tag `{NOTES_TAG}`) is measured yet.\n")
    return "\n".join(out)


def _has_tag(docs: Sequence[VariantDoc], name: str, tag: str) -> bool:
    return any(d.cfg.name == name and tag in d.cfg.tags for d in docs)


def accuracy_files(acc: Accuracy, docs: Sequence[VariantDoc], latency: Mapping[str, float]) -> Dict[str, Any]:
    """``accuracy.md`` and, when anything is measured, its plots (:class:`Png`)."""
    files: Dict[str, Any] = {"accuracy.md": render_accuracy(acc, docs, latency)}
    names = [d.cfg.name for d in docs]
    latency = dict(latency)
    if any(n in acc.by_neck for n in names):
        files[PLOT] = Png(lambda: plot_pareto(acc, names, latency))
    notes = [n for n in names if n in acc.by_neck and _has_tag(docs, n, NOTES_TAG)]
    if notes:
        files[CURVES_PLOT] = Png(lambda: plot_curves(acc, notes))
    return files
