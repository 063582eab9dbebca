"""The documentation in ``docs/``, generated from the registry and the built modules.

Run ``python -m tools.docs_gen`` (``--check`` to compare instead of writing) from the repository root.

Nothing here is written per variant: every page comes from :func:`fpn_zoo.list_necks`, :func:`neck_cfg`,
the family builders' signatures and docstrings, and necks built on a reference backbone.

* ``index.md``: overview, the families, how the numbers are made.
* ``variants.md``: one row per variant: family, summary, params, GFLOPs, CPU latency, paper, page.
* ``necks/<name>.md``: summary, paper, a Mermaid diagram of the built graph, arguments with the family's
  defaults, output levels on the reference backbone, a runnable example.
* ``questions.md``: the original notes' questions (channels, deeper smoothing, bottom-up path) and two
  baselines, measured: cost next to AP, with sentences worded from the numbers.
* ``accuracy.md`` (with ``assets/accuracy.png`` and ``assets/accuracy_curves.png``): the accuracy benchmark's
  results file (``docs/accuracy.json``, from ``fpn-zoo accuracy``) as one table, AP against latency with the
  Pareto front, learning curves, the variants not measured yet (:mod:`~tools.docs_gen.accuracy`). The AP also
  appears in ``variants.md``, the README table and each variant's page.
* ``parity.md``: family -> reference implementation -> converter call -> max abs diff, measured by running the
  converters (:mod:`~tools.docs_gen.parity`).

Tags come from one vocabulary (:mod:`~tools.docs_gen.tags`): the variants table has a tags column, the index
lists the variants by tag.

Latency is machine noise, everything else is deterministic. Latencies are written only in table cells of
the form ``12.34 ms`` (``n/a ms`` when not measured); :func:`check` masks exactly those cells
(:data:`LATENCY_RE`) on both sides, so ``python -m tools.docs_gen --check`` compares params, FLOPs, diagrams,
arguments and text exactly, measures no latency and stays fast. The plots are not compared, only required
to exist (their bytes follow matplotlib's version and the latency).

The package lives outside ``fpn_zoo`` and is not installed: ``markdown`` (tables, cells, the docstring
reader), ``measuring`` (building and measuring the variants), ``pages`` (rendering), ``accuracy`` (the results
file, its page and plots), ``files`` (writing, checking, the README table) and ``__main__`` (the command).

Example:
    >>> from tools import docs_gen
    >>> files = docs_gen.generate(["fpn"], reference=docs_gen.Reference(size=(64, 64)), latency_reps=0,
    ...                           questions=False, accuracy=False)
    >>> sorted(files)
    ['index.md', 'necks/fpn.md', 'variants.md']
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from fpn_zoo import list_necks
from fpn_zoo.measure import Reference, time_interleaved

from .accuracy import Accuracy, Png, accuracy_files, load_accuracy, pareto_front
from .files import README_END, README_START, check, default_docs_dir, readme_table, sync_readme, write
from .markdown import LATENCY_RE, NECK_DIR
from .measuring import FALLBACK_REFERENCES, REFERENCE, Bench, VariantDoc, measure_variants, question_configs, select_necks
from .parity import render_parity
from .pages import render_index, render_page, render_questions, render_variants

__all__ = [
    "REFERENCE", "FALLBACK_REFERENCES", "LATENCY_RE", "README_START", "README_END", "Reference", "VariantDoc",
    "Bench", "generate", "write", "check", "readme_table", "sync_readme", "default_docs_dir", "select_necks",
    "Accuracy", "Png", "load_accuracy", "pareto_front",
]

ProgressFn = Callable[[int, int, str], None]  # (done, total, what) -> None


def generate(
    names: Union[str, Sequence[str], None] = None,
    *,
    reference: Reference = REFERENCE,
    fallbacks: Sequence[Reference] = FALLBACK_REFERENCES,
    latency_reps: int = 5,
    questions: bool = True,
    parity: bool = False,
    accuracy: bool = True,
    results: Union[str, Path, Mapping[str, Any], Accuracy, None] = None,
    threads: Optional[int] = 1,
    progress: Optional[ProgressFn] = None,
    known_latency: Optional[Mapping[str, float]] = None,
) -> Dict[str, Any]:
    """Build every page; returns ``{relative path: markdown}`` (plots as :class:`Png`).

    Args:
        names: variants to document (fnmatch patterns, comma-separated in a string); default all.
        reference: the backbone and image size the numbers are measured on.
        fallbacks: backbones tried for a variant that declines ``reference``.
        latency_reps: interleaved timing rounds; 0 measures no latency (``n/a ms``; what ``check`` does).
        questions: also write ``questions.md``.
        parity: also write ``parity.md`` (runs every converter against its peer: a few seconds).
        accuracy: also write ``accuracy.md`` and its plots.
        results: the accuracy results (a file, its parsed contents or an :class:`Accuracy`); default the
            checkout's ``docs/accuracy.json`` (absent: nothing measured yet). The AP cells of every page use it.
        threads: torch CPU threads while measuring (None: leave as is).
        progress: called as ``progress(done, total, what)`` after each step.
        known_latency: ``{variant: ms}`` to write instead of measuring (``--keep-latency``: the published
            figures, when the machine is busy with something else); only the variants it lacks (new ones) are
            timed, ``latency_reps`` rounds.
    """
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        files = _generate(names, reference, fallbacks, latency_reps, questions,
                          parity, progress, accuracy, load_accuracy(results), known_latency)
        if parity:
            files["parity.md"] = render_parity()
        return files
    finally:
        torch.set_num_threads(old_threads)


def _generate(names: Union[str, Sequence[str], None], reference: Reference, fallbacks: Sequence[Reference],
              latency_reps: int, questions: bool, parity: bool, progress: Optional[ProgressFn], accuracy: bool,
              acc: Accuracy, known_latency: Optional[Mapping[str, float]] = None) -> Dict[str, Any]:
    selected = select_necks(names) if names is None or isinstance(names, str) else list_necks(list(names))
    if not selected:
        raise ValueError(f"no registered neck matches {names!r}")
    qs = {q.key: q for q in question_configs()} if questions else {}
    total = (len(selected) + len(qs)) * (1 + latency_reps)  # builds, then timed calls (re-counted below)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    bench = Bench()
    docs = measure_variants(bench, selected, [reference, *fallbacks], step)
    for q in qs.values():
        try:
            q.neck, q.stats = bench.build(q.variant, reference, **q.overrides)
        except (ValueError, TypeError, RuntimeError) as e:
            q.error = str(e)
        step(q.key)

    known = dict(known_latency or {})
    latency = {d.cfg.name: known[d.cfg.name] for d in docs if d.cfg.name in known}
    q_latency = {q.key: known[q.variant] for q in qs.values() if q.variant in known}
    if latency_reps > 0:
        fns: Dict[str, Callable[[], Any]] = {}
        timed: Dict[int, str] = {}  # id(neck) -> key in fns: each distinct module is timed once
        owners: Dict[str, str] = {}  # "v:<variant>" / "q:<question>" -> key in fns
        for prefix, items, have in (("v", [(d.cfg.name, d.neck, d.reference) for d in docs], latency),
                                    ("q", [(q.key, q.neck, reference) for q in qs.values()], q_latency)):
            for key, neck, ref in items:
                if neck is None or ref is None or key in have:
                    continue
                if id(neck) not in timed:
                    timed[id(neck)] = key
                    fns[key] = _forward(neck, bench.get(ref)[1])
                owners[f"{prefix}:{key}"] = timed[id(neck)]
        total = done + len(fns) * latency_reps
        seconds = time_interleaved(fns, reps=latency_reps, warmup=1, on_step=step) if fns else {}
        latency.update({k[2:]: seconds[v] * 1e3 for k, v in owners.items() if k.startswith("v:")})
        q_latency.update({k[2:]: seconds[v] * 1e3 for k, v in owners.items() if k.startswith("q:")})

    files: Dict[str, Any] = {
        "index.md": render_index(docs, reference, bool(qs), parity, accuracy),
        "variants.md": render_variants(docs, latency, reference, acc),
    }
    if qs:
        files["questions.md"] = render_questions(qs, q_latency, docs, reference, acc)
    if accuracy:
        files.update(accuracy_files(acc, docs, latency))
    for d in docs:
        files[f"{NECK_DIR}/{d.cfg.name}.md"] = render_page(d, acc)
    return files


def _forward(neck: nn.Module, feats: Sequence[torch.Tensor]) -> Callable[[], Any]:
    def call() -> Any:
        return neck(list(feats))

    return call
