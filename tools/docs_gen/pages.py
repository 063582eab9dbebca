"""The pages themselves: the index (with its hand-written text), the variants table, a page per variant and
the questions page, rendered from measured :class:`~tools.docs_gen.measuring.VariantDoc` s."""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from fpn_zoo import FeatureSpec, create_neck, list_families
from fpn_zoo._registry import BUILTIN, family_args, get_family
from fpn_zoo.measure import NeckStats, Reference

from .accuracy import Accuracy, ap_cell, comparison_line, delta_cell, page_section
from .markdown import (
    GENERATED_NOTE, NECK_DIR, gflops, latency_cell, md_cell, md_table, mparams, paper_link, parse_arg_docs,
    rst_to_md, value_cell,
)
from .measuring import NOTES_BLOCK, Question, VariantDoc
from .tags import GROUPS, TAGS, tags_of_group

__all__ = ["render_index", "render_variants", "render_page", "render_questions", "tag_tables", "DetectorRecipe",
           "detector_recipe", "detector_code"]


def family_summary(family: str) -> str:
    module = sys.modules.get(get_family(family).builder.__module__)
    doc = inspect.getdoc(module) or ""
    return rst_to_md(doc.strip().splitlines()[0]) if doc.strip() else ""


def example_code(name: str, ref: Reference, stats: Optional[NeckStats]) -> str:
    idx = "" if ref.out_indices is None else f", out_indices={ref.out_indices!r}"
    h, w = ref.size
    lines = [
        "import timm, torch, fpn_zoo",
        "",
        f'backbone = timm.create_model("{ref.backbone}", features_only=True{idx}, pretrained=False)',
        f'neck = fpn_zoo.create_neck("{name}", backbone)',
        f"features = neck(backbone(torch.rand(1, 3, {h}, {w})))",
        "print([tuple(f.shape) for f in features])",
    ]
    if stats is not None:
        shapes = [(1, c, hh, ww) for c, _, (hh, ww) in stats.outputs]
        lines.append(f"# {shapes}")
    return "```python\n" + "\n".join(lines) + "\n```\n"


# The backbones the detector lines name: the papers' CNN, and a plain ViT for a neck that builds its pyramid
# from one stride.
DETECTOR_CNN, DETECTOR_VIT = "resnet50", "vit_base_patch16_224"
# head_channels for a neck whose levels differ in width (torchvision's heads share one width over the levels).
HEAD_CHANNELS = 256
# The neck put first for one that only refines levels of one width (Libra R-CNN: an FPN, then its BFP).
FIRST_NECK = "fpn"
# The ResNet stages of that first model: create_detector's default levels, C2-C5 for the R-CNNs, C3-C5 otherwise.
RESNET_STAGES = {"fasterrcnn": (1, 2, 3, 4), "retinanet": (2, 3, 4), "fcos": (2, 3, 4)}


@dataclass(frozen=True)
class DetectorRecipe:
    """What a variant page's ``create_detector`` call needs so that it runs as written (:func:`detector_recipe`).

    Attributes:
        kind: the detector kind.
        backbone: the timm backbone named in the call.
        first: a neck built with the backbone first (``fpn_zoo.create_model``), passed as the detector's backbone.
        first_indices: the backbone stages of that first model.
        extra: further ``create_detector`` arguments as ``(keyword, value, why)``.
    """

    kind: str
    backbone: str
    first: Optional[str] = None
    first_indices: Tuple[int, ...] = ()
    extra: Tuple[Tuple[str, Any, str], ...] = ()


def _takes_levels_of_one_width(name: str, width: int) -> bool:
    """Whether ``name`` builds on a pyramid whose levels have one width (strides 8, 16, 32)."""
    try:
        create_neck(name, FeatureSpec((width,) * 3, (8, 16, 32)))
    except (ValueError, TypeError):  # BackboneMismatch is a ValueError
        return False
    return True


def detector_recipe(d: VariantDoc) -> DetectorRecipe:
    """The page's ``create_detector`` call, derived from the variant as the page built it (its input levels and
    its outputs), not from its name:

    * built on the CNN pyramid: a ResNet-50, the levels the detector kind takes by default;
    * a pyramid made from one single-stride map: a plain ViT;
    * one map in, one out, but levels of one width accepted (a refinement such as BFP): an FPN first;
    * one map in, one out otherwise: the ResNet's last stage alone (``out_indices=(-1,)``);

    and ``head_channels`` whenever the outputs differ in width. The kind: RetinaNet where the neck makes five or
    more levels (its P3-P7 recipe), FCOS for the CSP-PAN necks, Faster R-CNN otherwise.
    """
    assert d.stats is not None and d.inputs is not None, "only a variant built for its page has a detector line"
    levels = len(d.stats.outputs)
    kind = "retinanet" if levels >= 5 else "fcos" if d.cfg.family == "csp_pan" else "fasterrcnn"
    widths = {c for c, _, _ in d.stats.outputs}
    extra: List[Tuple[str, Any, str]] = []
    if len(widths) > 1:
        extra.append(("head_channels", HEAD_CHANNELS, "one width for the head: the neck's levels differ"))
    if len(set(d.inputs.reductions)) > 1:
        return DetectorRecipe(kind, DETECTOR_CNN, extra=tuple(extra))
    if len({s for _, s, _ in d.stats.outputs}) > 1:
        return DetectorRecipe(kind, DETECTOR_VIT, extra=tuple(extra))
    if _takes_levels_of_one_width(d.cfg.name, d.inputs.channels[0]):
        return DetectorRecipe(kind, DETECTOR_CNN, first=FIRST_NECK, first_indices=RESNET_STAGES[kind],
                              extra=tuple(extra))
    extra.append(("out_indices", (-1,), "the neck reads one map: the last stage's"))
    return DetectorRecipe(kind, DETECTOR_CNN, extra=tuple(extra))


def detector_code(d: VariantDoc, recipe: Optional[DetectorRecipe] = None) -> str:
    """The ``create_detector`` lines of a variant page (``recipe``, by default :func:`detector_recipe`'s): they
    run as written."""
    r = recipe if recipe is not None else detector_recipe(d)
    lines = ["import fpn_zoo", ""]
    backbone = f'"{r.backbone}"'
    if r.first is not None:
        lines.append(f"# {d.cfg.name} refines levels of one width: an FPN's, built first")
        lines.append(f'body = fpn_zoo.create_model("{r.backbone}", neck="{r.first}", out_indices={r.first_indices!r})')
        backbone = "body"
    call = f'model = fpn_zoo.create_detector("{r.kind}", {backbone}, neck="{d.cfg.name}", num_classes=91'
    if not r.extra:
        lines.append(call + ")")
    else:
        indent = " " * call.index("(", len("model = fpn_zoo.create_detector"))
        lines.append(call + ",")
        for k, (key, value, why) in enumerate(r.extra):
            end = ")" if k == len(r.extra) - 1 else ","
            lines.append(f"{indent} {key}={value!r}{end}  # {why}")
    lines.append("losses = model(images, targets)   # torchvision's detection API; model.eval(); model(images)")
    return "```python\n" + "\n".join(lines) + "\n```\n"


def render_variants(docs: Sequence[VariantDoc], latency: Mapping[str, float], ref: Reference,
                    acc: Optional[Accuracy] = None) -> str:
    rows = []
    for d in docs:
        stats = d.stats
        note = "" if d.reference in (None, ref) else f" ({d.reference.backbone})"
        rows.append([
            f"[{d.cfg.name}]({NECK_DIR}/{d.cfg.name}.md)", f"`{d.cfg.family}`", d.cfg.summary or "-",
            (mparams(stats.params) + note) if stats else "-",
            (gflops(stats.flops) + note) if stats else "-",
            latency_cell(latency.get(d.cfg.name)) if stats else "-",
            ap_cell(acc.get(d.cfg.name) if acc is not None else None),
            ", ".join(d.cfg.tags) or "-",
            paper_link(d.cfg.paper),
        ])
    parts = [
        "# Variants\n", GENERATED_NOTE + "\n",
        f"{len(docs)} variants. Params and GFLOPs are the neck's alone on the maps of {ref.describe()}, batch 1 "
        "(GFLOPs from `torch.utils.flop_counter.FlopCounterMode`: 2 per multiply-add of convolutions; pooling, "
        "resizing and sums are not counted). Latency is the median CPU time of one neck forward over interleaved "
        "rounds, one thread, on the machine that generated these pages: compare the numbers with each other, "
        "not with another machine's. A backbone in brackets marks a variant measured on a fallback backbone "
        "because it declines the reference one. AP is the [accuracy benchmark](accuracy.md)'s (FCOS on digit "
        "scenes): the mean over seeds, ± the sample std with two or more, `—` when not measured yet.\n",
        md_table(["variant", "family", "summary", "params (M)", "GFLOPs", "CPU latency", "[AP](accuracy.md)", "tags",
                  "paper"], rows, "lllrrrrll"),
    ]
    failed = [d for d in docs if d.error]
    if failed:
        parts.append("\n## Variants that could not be measured\n\n" +
                     "".join(f"- `{d.cfg.name}`: {md_cell(d.error)}\n" for d in failed))
    return "\n".join(parts)


def render_page(d: VariantDoc, acc: Optional[Accuracy] = None) -> str:
    cfg = d.cfg
    family = get_family(cfg.family)
    defaults = family_args(cfg.family)
    arg_docs = parse_arg_docs(family.builder)
    out = [f"# {cfg.name}\n", GENERATED_NOTE + "\n", f"{cfg.summary}\n" if cfg.summary else ""]
    facts = [
        ["family", f"`{cfg.family}` (`{family.builder.__module__}.{family.builder.__qualname__}`)"],
        ["paper", paper_link(cfg.paper)],
        ["tags", ", ".join(cfg.tags) or "-"],
    ]
    if cfg.source != BUILTIN:
        facts.append(["defined by", cfg.source])
    out.append(md_table(["", ""], facts))
    if acc is not None:
        out.append("\n" + page_section(cfg.name, acc))
    out.append("\n## Graph\n")
    if d.diagram:
        where = f"on {d.reference.describe()}" if d.reference else "from the channels of the reference backbone"
        out.append(f"The graph of the built module {where}: input levels, fusion nodes (fusion, smoothing, "
                   "stride), what each edge does (`1x1` projection, `up`sampling, `pool`/`conv` downsampling), "
                   "outputs and extra levels.\n")
        out.append("```mermaid\n" + d.diagram + "```\n")
    else:
        out.append("No diagram: the neck could not be built.\n")
    rows = []
    for key, value in cfg.args.items():
        default = defaults.get(key, inspect.Parameter.empty)
        shown = value_cell(value)
        if default is inspect.Parameter.empty or value != default:
            shown = f"**{shown}**"
        rows.append([f"`{key}`", shown, value_cell(default), arg_docs.get(key, "")])
    out.append("\n## Arguments\n")
    out.append("Values of this variant; **bold** ones differ from the family's defaults. Override any of them: "
               f"`fpn_zoo.create_neck(\"{cfg.name}\", backbone, out_channels=128)`.\n")
    out.append(md_table(["argument", "value", "family default", "description"], rows))
    out.append("\n## Output levels\n")
    if d.stats is not None and d.reference is not None:
        h, w = d.reference.size
        rows = [[str(k), str(c), str(s), f"{hh}x{ww}"] for k, (c, s, (hh, ww)) in enumerate(d.stats.outputs)]
        out.append(f"On {d.reference.describe()} (neck only, batch 1): **{d.stats.params:,} parameters**, "
                   f"**{gflops(d.stats.flops)} GFLOPs**.\n")
        out.append(md_table(["output", "channels", "stride", f"size at {h}x{w}"], rows, "rrrr"))
        out.append("\n## Example\n")
        out.append(example_code(cfg.name, d.reference, d.stats))
        out.append("## In a detector\n")
        recipe = detector_recipe(d)
        how = "" if recipe.first else " in one call"
        out.append(f"A trainable torchvision detector{how} (any kind: `fasterrcnn`, `maskrcnn`, `keypointrcnn`, "
                   "`retinanet`, `fcos`; anchors follow the neck's strides). See [Train a detector](../detection.md).\n")
        out.append(detector_code(d, recipe))
    else:
        out.append(f"Could not be built on a reference backbone: {d.error}\n")
    return "\n".join(p for p in out if p)


def tag_tables(docs: Sequence[VariantDoc]) -> str:
    """The variants by tag: one table per group of the vocabulary (:mod:`~tools.docs_gen.tags`), used tags only."""
    parts = []
    for group in GROUPS:
        rows = []
        for tag in tags_of_group(group):
            members = [d.cfg.name for d in docs if tag in d.cfg.tags]
            if members:
                rows.append([f"`{tag}`", TAGS[tag][1], ", ".join(f"[{n}]({NECK_DIR}/{n}.md)" for n in members)])
        if rows:
            parts.append(f"### {group.capitalize()}\n\n" + md_table(["tag", "meaning", "variants"], rows))
    other = sorted({t for d in docs for t in d.cfg.tags if t not in TAGS})
    if other:
        parts.append("### Other tags\n\n" + md_table(["tag", "variants"], [[f"`{t}`", ", ".join(
            f"[{d.cfg.name}]({NECK_DIR}/{d.cfg.name}.md)" for d in docs if t in d.cfg.tags)] for t in other]))
    return "\n\n".join(parts) + "\n"


def render_index(docs: Sequence[VariantDoc], ref: Reference, with_questions: bool, with_parity: bool = False,
                 with_accuracy: bool = False) -> str:
    names = [d.cfg.name for d in docs]
    families = [f for f in list_families() if any(d.cfg.family == f for d in docs)]
    fam_rows = []
    for f in families:
        members = [d.cfg.name for d in docs if d.cfg.family == f]
        shown = ", ".join(f"[{n}]({NECK_DIR}/{n}.md)" for n in members)
        fam_rows.append([f"`{f}`", family_summary(f), shown])
    example = "fpn" if "fpn" in names or not names else names[0]
    pages = [f"- [Variants](variants.md): all {len(names)} variants with params, GFLOPs, CPU latency and papers."]
    if with_accuracy:
        pages.append("- [Accuracy](accuracy.md): AP of an FCOS detector trained with each neck on digit scenes "
                     "(mean ± std over seeds), against cost, with the Pareto front.")
    if with_questions:
        pages.append("- [Questions](questions.md): the original notes' questions (how many channels, deeper "
                     "smoothing, a bottom-up path), answered with cost and accuracy measurements.")
    if with_parity:
        pages.append("- [Parity](parity.md): each family against its reference implementation (torchvision, mmdet, "
                     "effdet ...): the converter call and the measured max abs diff in float64 and float32.")
    pages.append(f"- One page per variant under `{NECK_DIR}/`: diagram of the built graph, arguments, output levels.")
    pages.append("- [Variants by tag](#variants-by-tag): browse by purpose (`yolo`, `detr`, `two-stage` ...), "
                 "structure or reference; `fpn-zoo list --tag yolo` and `fpn_zoo.list_necks(tag=\"yolo\")` do the same.")
    return "\n".join([
        "# fpn_zoo\n", GENERATED_NOTE + "\n",
        "Feature-pyramid necks for any [timm](https://github.com/huggingface/pytorch-image-models) "
        f"`features_only` backbone: {len(names)} named variants of {len(families)} families, one registry.\n",
        "\n".join(pages) + "\n",
        "## Quick start\n",
        "```python\nimport timm, torch, fpn_zoo\n\n"
        f'backbone = timm.create_model("{ref.backbone}", features_only=True, pretrained=False)\n'
        f'neck = fpn_zoo.create_neck("{example}", backbone, out_channels=128)\n'
        "features = neck(backbone(torch.rand(1, 3, 256, 256)))  # list of NCHW maps, finest first\n"
        "neck.feature_info.channels(), neck.feature_info.reduction()\n\n"
        f'model = fpn_zoo.create_model("{ref.backbone}", neck="{example}")  # backbone + neck, one module\n'
        'fpn_zoo.list_necks("*pan*"), fpn_zoo.neck_cfg("fpn").args\n```\n',
        "## Families\n",
        md_table(["family", "what it is", "variants"], fam_rows),
        "\n## Variants by tag\n",
        "Tags come from one vocabulary in three groups: *purpose* (what a neck serves), *structure* (how it is "
        "built) and *reference* (the peer whose weights convert, or the model whose configuration it is).\n",
        tag_tables(docs),
        "## Command line\n",
        "```\nfpn-zoo list [FILTER] [--tag T]              # variants, family, tags, summary\n"
        "fpn-zoo info NAME [--backbone B] [--size S]  # output levels, params, GFLOPs\n"
        "fpn-zoo bench --necks 'fpn*' --size 128      # params, GFLOPs, CPU latency [--plot out.png]\n"
        "```\n",
        "From a checkout, `python -m tools.docs_gen` regenerates these pages and `python -m tools.docs_gen --check` "
        "checks they are current.\n",
        "## How these pages are made\n",
        "`python -m tools.docs_gen` builds every registered variant on the reference backbone, "
        f"{ref.describe()} (no pretrained weights), and writes what the modules are: diagrams from the built "
        "graphs, arguments from the registry and the family signatures, output levels, parameters and FLOPs of "
        "the neck alone. CPU latency is the median of several interleaved timing rounds on one thread, after a "
        "warm-up; "
        "it depends on the machine, so `--check` skips it and compares everything else exactly.\n",
    ])


QUESTIONS_BASE = "fpn_bn_lrelu_64"  # the notes' FPN: every table's ΔAP is against it


def render_questions(qs: Mapping[str, Question], latency: Mapping[str, float], docs: Sequence[VariantDoc],
                     ref: Reference, acc: Optional[Accuracy] = None) -> str:
    """The notes' three questions and the baselines: cost of the registered variants on ``ref`` next to their
    accuracy (``acc``), with sentences worded from the numbers (:func:`~tools.docs_gen.accuracy.compare`)."""
    acc = acc if acc is not None else Accuracy("")
    base = QUESTIONS_BASE

    def stats(key: str) -> Optional[NeckStats]:
        q = qs.get(key)
        return q.stats if q is not None else None

    def row(label: str, key: str) -> List[str]:
        s, m = stats(key), acc.get(key)
        return [f"{label}: [{key}]({NECK_DIR}/{key}.md)", mparams(s.params) if s else "-",
                gflops(s.flops) if s else "-", latency_cell(latency.get(key)), ap_cell(m, seeds=True), ap_cell(m, "AP_small"),
                ap_cell(m, "agnostic_AP"), "(base)" if key == base else delta_cell(m, acc.get(base))]

    def table(rows: Sequence[List[str]]) -> str:
        return md_table(["", "params (M)", "GFLOPs", "CPU latency", "AP (seeds)", "AP_small", "agnostic AP",
                         f"ΔAP vs {base}"], rows, "lrrrrrrr")

    def accuracy_lines(pairs: Sequence[tuple]) -> str:
        return "\n" + "".join(comparison_line(acc, a, b, what) for what, a, b in pairs)

    block = ", ".join(f"{k}={v!r}" for k, v in NOTES_BLOCK.items())
    out = [
        "# The original notes' questions, measured\n", GENERATED_NOTE + "\n",
        "The notes this project grew from built a 64-channel top-down FPN of `Conv2dNormActivation` blocks "
        f"(BatchNorm, LeakyReLU 0.1: `{block}` here), registered as `{base}`, and asked three questions. Each "
        "table compares registered variants (tag `original-notes`) on cost, the neck alone on "
        f"{ref.describe()} (batch 1; latency: median CPU time, one thread, machine-dependent), and on accuracy, "
        "from the [accuracy benchmark](accuracy.md) (an FCOS detector trained with each neck on digit scenes): "
        "AP as mean ± sample std over seeds (their number in brackets), AP_small, class-agnostic AP "
        f"(localisation alone) and ΔAP, the difference of mean AP to `{base}`.\n",
        "The sentences under each table are worded from the numbers: a difference is called one only where the "
        "means differ by more than twice the larger of the two seed stds, with at least two seeds each; "
        "otherwise it is within the seed spread and no difference is shown.\n",
    ]
    errors = [f"- `{q.variant}`: {q.error}" for q in qs.values() if q.error]

    out.append("## Why 64 channels, why not 128?\n")
    out.append("The notes' FPN at 64, 128 and 256 output channels.\n")
    out.append(table([row(f"{c} channels", f"fpn_bn_lrelu_{c}") for c in (64, 128, 256)]))
    s64, s128 = stats("fpn_bn_lrelu_64"), stats("fpn_bn_lrelu_128")
    if s64 and s128:
        out.append(f"\nCost: doubling the width multiplies the neck's parameters by {s128.params / s64.params:.2f} and "
                   f"its FLOPs by {s128.flops / s64.flops:.2f}: the 3x3 smoothing convs grow with the square of the "
                   "channels, the 1x1 laterals only linearly (their input side is the backbone's).\n")
    out.append(accuracy_lines([("128 channels", "fpn_bn_lrelu_128", base), ("256 channels", "fpn_bn_lrelu_256", base)]))

    out.append("\n## Can you use more conv blocks?\n")
    out.append("The notes' FPN with 1, 2 or 3 smoothing blocks (3x3 conv-BN-LeakyReLU) after every fusion "
               "(`smooth_depth`).\n")
    depth = {1: base, 2: "fpn_deep2_bn_lrelu_64", 3: "fpn_deep3_bn_lrelu_64"}
    out.append(table([row(f"smooth_depth={k}", v) for k, v in depth.items()]))
    d1, d2 = stats(depth[1]), stats(depth[2])
    if d1 and d2:
        out.append(f"\nCost: each extra block adds {(d2.params - d1.params):,} parameters and "
                   f"{(d2.flops - d1.flops) / 1e9:.3f} GFLOPs here: one 3x3 conv per output level.\n")
    out.append(accuracy_lines([("two blocks", depth[2], base), ("three blocks", depth[3], base)]))
    out.append("\nAt 256 channels the registry has the deeper stacks with BatchNorm and ReLU (`fpn_deep2`, "
               "`fpn_deep3`): their one-block counterpart with a norm is `fpn_bn_lrelu_256` (LeakyReLU 0.1 instead of "
               "ReLU), not `fpn`, whose convs have no norm at all.\n")
    out.append(table([row("smooth_depth=1, 256 ch", "fpn_bn_lrelu_256"), row("smooth_depth=2, 256 ch", "fpn_deep2"),
                      row("smooth_depth=3, 256 ch", "fpn_deep3"), row("256 ch, no norm", "fpn")]))
    out.append(accuracy_lines([("two blocks, 256 ch", "fpn_deep2", "fpn_bn_lrelu_256"),
                               ("three blocks, 256 ch", "fpn_deep3", "fpn_bn_lrelu_256")]))

    out.append("\n## Why not push from the other direction (bottom-up)?\n")
    out.append("That is PANet: the FPN's top-down path, then a bottom-up path of stride-2 convs. Top-down only "
               "against top-down + bottom-up, with the notes' block at 64 channels and with the papers' defaults "
               "(256 channels, plain convs).\n")
    out.append(table([row("fpn, 64 ch, notes' block", base), row("pan, 64 ch, notes' block", "pan_bn_lrelu_64"),
                      row("fpn, 256 ch, defaults", "fpn"), row("pan, 256 ch, defaults", "pan")]))
    f64, p64 = stats(base), stats("pan_bn_lrelu_64")
    if f64 and p64:
        out.append(f"\nCost: at 64 channels the bottom-up path multiplies the parameters by "
                   f"{p64.params / f64.params:.2f} and the FLOPs by {p64.flops / f64.flops:.2f}.\n")
    out.append(accuracy_lines([("bottom-up path, 64 ch", "pan_bn_lrelu_64", base),
                               ("bottom-up path, 256 ch defaults", "pan", "fpn")]))
    both = [d for d in docs if "bottom-up" in d.cfg.tags and d.stats is not None]
    if both:
        out.append("\nEvery registered variant tagged `bottom-up` (measured as in [Variants](variants.md)):\n")
        out.append(md_table(["variant", "family", "params (M)", "GFLOPs", "AP", "summary"],
                            [[f"[{d.cfg.name}]({NECK_DIR}/{d.cfg.name}.md)", f"`{d.cfg.family}`",
                              mparams(d.stats.params), gflops(d.stats.flops), ap_cell(acc.get(d.cfg.name)),
                              d.cfg.summary] for d in both], "llrrrl"))

    out.append("\n## What do the pyramid and the top-down path add?\n")
    out.append("Two baselines with the notes' block at 64 channels: `single_level_64` keeps one level, the "
               "coarsest backbone map (no pyramid); `no_top_down_64` keeps every level's 1x1 lateral and 3x3 conv "
               "but no top-down path (levels apart, nothing fused).\n")
    out.append(table([row("one level", "single_level_64"), row("levels, no top-down", "no_top_down_64"),
                      row("levels + top-down (FPN)", base)]))
    out.append(accuracy_lines([("the top-down path", base, "no_top_down_64"),
                               ("several levels, unfused", "no_top_down_64", "single_level_64"),
                               ("the whole pyramid", base, "single_level_64")]))
    if errors:
        out.append("\nCould not be built:\n\n" + "\n".join(errors) + "\n")
    return "\n".join(out)
