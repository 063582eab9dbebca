"""Run (neck, seed) pairs of the accuracy benchmark, in parallel processes, into one resumable JSON file.

A results file holds ``{"about": ..., "results": [...]}``; each result is one (neck, seed) under one recipe
(its ``recipe_key``). Finished pairs are kept and skipped on a rerun, and every finished run is merged into
the file at once (under a file lock), so an interrupted table resumes where it stopped and two commands can
share a file. A run in progress saves its training state beside the file (``<stem>.<neck>.<seed>.ckpt``) every
five minutes of training and resumes from it when started again, so runs longer than a sitting finish.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..measure import cpu_name
from .evaluate import evaluate_detector
from .recipe import Recipe, attachment, backbone_and_neck, build_detector, pretrained_backbone, train_detector
from .results import ABOUT, Measured, load_results, read_accuracy

__all__ = ["run_one", "run_many", "pending", "summarize", "load_results", "estimate_seconds", "save_estimates",
           "ABOUT"]

def _versions() -> Dict[str, str]:
    import sklearn
    import timm
    import torchvision

    from .. import __version__

    out = {"fpn_zoo": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
           "timm": timm.__version__, "scikit-learn": sklearn.__version__, "python": platform.python_version()}
    try:
        from importlib.metadata import version

        out["pycocotools"] = version("pycocotools")
    except Exception:  # pragma: no cover - pycocotools installed without metadata
        out["pycocotools"] = "unknown"
    return out


def _cost(model: torch.nn.Module, canvas: int) -> Dict[str, float]:
    from ..measure import count_flops

    backbone, neck = backbone_and_neck(model)
    model.eval()
    with torch.no_grad():
        feats = backbone(torch.zeros(1, 3, canvas, canvas))
        neck_gflops = count_flops(neck, [f for f in feats]) / 1e9
    return {
        "neck_params": sum(p.numel() for p in neck.parameters()),
        "detector_params": sum(p.numel() for p in model.parameters()),
        "neck_gflops": round(neck_gflops, 4),
    }


def run_one(neck: str, seed: int, recipe: Recipe = Recipe(), log: Optional[Callable[[str], None]] = None,
            neck_args: Optional[Dict[str, Any]] = None, checkpoint: Optional[Path] = None) -> Dict[str, Any]:
    """Train and evaluate one (neck, seed): the result record (metrics, cost, time, curves, versions).

    ``checkpoint``: a file for this (neck, seed) where training saves its state and resumes from
    (:func:`~fpn_zoo.accuracy.recipe.train_detector`).
    """
    state = pretrained_backbone(recipe, log=log)
    torch.manual_seed(seed)
    how = attachment(neck, recipe, neck_args)
    model = build_detector(neck, recipe, state, neck_args=neck_args, how=how)
    cost = _cost(model, recipe.scenes.canvas)

    def evaluate(m: torch.nn.Module) -> Dict[str, float]:
        return evaluate_detector(m, recipe.test_scenes, recipe.scenes)

    trained = train_detector(model, recipe, seed, log=log, evaluate=evaluate, checkpoint=checkpoint)
    start = time.perf_counter()
    metrics = evaluate(model)
    trained["curve"].append((recipe.steps, metrics))
    return {
        "neck": neck, "seed": seed, "neck_args": dict(neck_args or {}), "recipe_key": recipe.key(),
        "inputs": how, "metrics": metrics, **cost,
        "train_seconds": round(trained["seconds"], 1), "eval_seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(), "losses": trained["losses"],
        "loss_terms": [[s, t] for s, t in trained["loss_terms"]], "revived": trained["revived"],
        "curve": [[s, {"AP": m["AP"], "agnostic_AP": m["agnostic_AP"]}] for s, m in trained["curve"]],
        "versions": _versions(), "machine": platform.machine(), "processor": platform.processor() or "",
        "cpu": cpu_name(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


#: training steps :func:`estimate_seconds` times (after one untimed step)
ESTIMATE_TIMED_STEPS = 5


def estimate_seconds(neck: str, recipe: Recipe = Recipe(), timed_steps: int = ESTIMATE_TIMED_STEPS,
                     eval_scenes: int = 20) -> Dict[str, float]:
    """How long one run of ``neck`` under ``recipe`` takes on this machine, at the current thread count.

    Times ``timed_steps`` training steps (after one untimed step) and one evaluation of ``eval_scenes`` test
    scenes, and scales them to the recipe: ``{"train": seconds, "eval": seconds}`` (every evaluation of the
    learning curve and the final one). The pretrained backbone is read from its cache (made first if missing).
    """
    state = pretrained_backbone(recipe)
    torch.manual_seed(0)
    model = build_detector(neck, recipe, state)
    train_detector(model, dataclasses.replace(recipe, steps=1, eval_every=0), seed=0)  # allocations, first calls
    timed = train_detector(model, dataclasses.replace(recipe, steps=timed_steps, eval_every=0), seed=0)
    scenes = max(1, min(eval_scenes, recipe.test_scenes))
    start = time.perf_counter()
    evaluate_detector(model, scenes, recipe.scenes)
    per_scene = (time.perf_counter() - start) / scenes
    evaluations = -(-recipe.steps // recipe.eval_every) if recipe.eval_every else 1
    return {"train": timed["seconds"] / timed_steps * recipe.steps,
            "eval": per_scene * recipe.test_scenes * evaluations}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    lock = path.with_name(path.name + ".lock")
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _updating(path: Path, recipe: Recipe) -> Iterator[Dict[str, Any]]:
    """The results file's contents to change in place, written back atomically under the file lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        data = load_results(path)
        data["about"] = ABOUT
        data.setdefault("recipes", {})[recipe.key()] = recipe.as_dict()
        yield data
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)


def _save(path: Path, result: Dict[str, Any], recipe: Recipe) -> None:
    with _updating(path, recipe) as data:
        data["results"] = [r for r in data["results"] if _key(r) != _key(result)] + [result]
        data["results"].sort(key=lambda r: (r["recipe_key"], r["neck"], json.dumps(r.get("neck_args", {})),
                                            r["seed"]))


def save_estimates(path: Path, recipe: Recipe, minutes: Dict[str, float], threads: int) -> None:
    """Record :func:`estimate_seconds`' result per neck (minutes per run) in the results file, under
    ``estimates[recipe key][neck]``, for the docs to say how long the unmeasured runs take."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with _updating(path, recipe) as data:
        table = data.setdefault("estimates", {}).setdefault(recipe.key(), {})
        for neck, m in minutes.items():
            table[neck] = {"minutes": round(m, 1), "threads": threads, "machine": platform.machine(),
                           "cpu": cpu_name(), "estimated": stamp}


def _key(r: Dict[str, Any]) -> Tuple[str, str, str, int]:
    return r["recipe_key"], r["neck"], json.dumps(r.get("neck_args", {}), sort_keys=True), int(r["seed"])


def _worker(job: Tuple[str, int, Recipe, str, int]) -> Tuple[str, int, Optional[str]]:
    neck, seed, recipe, path, threads = job
    torch.set_num_threads(threads)
    log_path = Path(path).with_name(f"{Path(path).stem}.{neck}.{seed}.log")
    checkpoint = log_path.with_suffix(".ckpt")  # an interrupted run resumes from it
    try:
        with open(log_path, "a") as log_file:
            def log(msg: str) -> None:
                log_file.write(msg + "\n")
                log_file.flush()

            result = run_one(neck, seed, recipe, log=log, checkpoint=checkpoint)
        _save(Path(path), result, recipe)
        log_path.unlink()
        checkpoint.unlink(missing_ok=True)
        return neck, seed, None
    except Exception as e:  # reported by the parent; the others go on
        return neck, seed, f"{type(e).__name__}: {e}"


def pending(necks: Sequence[str], seeds: Sequence[int], path: Path, recipe: Recipe = Recipe()) -> List[Tuple[str, int]]:
    """The ``(neck, seed)`` pairs not yet in ``path`` under ``recipe``, seed by seed (every neck at the first
    seed before any at the second: an interrupted table covers every neck first)."""
    done = {(r["neck"], int(r["seed"])) for r in load_results(path)["results"]
            if r["recipe_key"] == recipe.key() and not r.get("neck_args")}
    return [(n, s) for s in seeds for n in necks if (n, s) not in done]


def summarize(path: Path, recipe: Recipe = Recipe(), necks: Optional[Sequence[str]] = None) -> List[List[str]]:
    """Table rows ``[neck, seeds, AP, AP_small, agnostic AP, train seconds]`` (mean +- sample std over seeds),
    best AP first."""
    acc = read_accuracy(path, recipe.key())
    measured = [m for m in acc.by_neck.values() if necks is None or m.name in necks]

    def stat(m: Measured, metric: str) -> str:
        mean, std = m.mean(metric), m.std(metric)
        return f"{mean:.3f}" if std is None else f"{mean:.3f} +- {std:.3f}"

    return [[m.name, str(m.n), stat(m, "AP"), stat(m, "AP_small"), stat(m, "agnostic_AP"),
             f"{m.cost('train_seconds'):.0f}"] for m in sorted(measured, key=lambda m: -(m.mean("AP") or 0.0))]


def run_many(necks: Sequence[str], seeds: Sequence[int], path: Path, recipe: Recipe = Recipe(), jobs: int = 1,
             threads: int = 1, on_done: Optional[Callable[[str, int, Optional[str]], None]] = None,
             log: Optional[Callable[[str], None]] = None) -> List[Tuple[str, int, Optional[str]]]:
    """Run every (neck, seed) not already in ``path`` under this recipe, ``jobs`` processes at a time.

    The backbone is pretrained (or read from its cache) once, before the workers start.
    Returns ``(neck, seed, error or None)`` for each pair run.
    """
    todo = pending(necks, seeds, path, recipe)
    if not todo:
        return []
    torch.set_num_threads(max(threads, 1) * max(jobs, 1))
    pretrained_backbone(recipe, log=log)
    args = [(n, s, recipe, str(path), threads) for n, s in todo]
    outcomes = []
    if jobs <= 1:
        for a in args:
            outcomes.append(_worker(a))
            if on_done:
                on_done(*outcomes[-1])
        return outcomes
    with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        for outcome in pool.imap_unordered(_worker, args):
            outcomes.append(outcome)
            if on_done:
                on_done(*outcome)
    return outcomes
