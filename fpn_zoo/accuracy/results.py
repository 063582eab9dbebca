"""The accuracy results file, read back: every run of one recipe, grouped by variant, with seed statistics.

A results file (written by :mod:`fpn_zoo.accuracy.runner`) holds ``{"about", "recipes", "results", "estimates"}``;
each result is one (neck, seed) under one recipe (its ``recipe_key``). :class:`Accuracy` keeps the runs of one
recipe without ``neck_args`` (the registered variants as published) and counts the rest in ``others``.

Statistics over seeds are the mean (``statistics.fmean``) and the sample standard deviation
(``statistics.stdev``), which needs two seeds; ``fpn-zoo accuracy`` and ``docs/accuracy.md`` both use them.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .recipe import Recipe

__all__ = ["ABOUT", "Measured", "Accuracy", "load_results", "read_accuracy"]

ABOUT = (
    "fpn_zoo accuracy benchmark: FCOS (torchvision, via fpn_zoo.create_detector) on a half-width resnet18 "
    "pretrained once on single-digit classification, every neck projected to a 64-channel head, trained on "
    "fresh 128 px scenes of scikit-learn's handwritten digits and evaluated by pycocotools on fixed test "
    "scenes (areas: small < 16^2, medium 16^2-32^2, large > 32^2). Produced by `fpn-zoo accuracy`."
)


def load_results(path: Union[str, Path]) -> Dict[str, Any]:
    """The results file's contents (an empty table when it does not exist).

    Raises:
        ValueError: the file is not a results file.
    """
    path = Path(path)
    if not path.exists():
        return {"about": ABOUT, "results": []}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError(f"{path} is no fpn_zoo accuracy results file (expected {{'about', 'results': [...]}})")
    return data


@dataclass
class Measured:
    """One variant's runs under one recipe, sorted by seed."""

    name: str
    runs: List[Dict[str, Any]]

    @property
    def n(self) -> int:
        return len(self.runs)

    def values(self, metric: str) -> List[float]:
        return [float(r["metrics"][metric]) for r in self.runs if metric in r.get("metrics", {})]

    def mean(self, metric: str = "AP") -> Optional[float]:
        v = self.values(metric)
        return statistics.fmean(v) if v else None

    def std(self, metric: str = "AP") -> Optional[float]:
        """Sample std over seeds; None with fewer than two."""
        v = self.values(metric)
        return statistics.stdev(v) if len(v) >= 2 else None

    def cost(self, key: str) -> Optional[float]:
        """Mean over the runs of a per-run number (``train_seconds``, ``neck_gflops``, ...); None if none has it."""
        v = [float(r[key]) for r in self.runs if r.get(key) is not None]
        return statistics.fmean(v) if v else None

    def curve(self, metric: str = "AP") -> List[Tuple[int, float]]:
        """``(step, mean over the seeds that evaluated at that step)``, by step."""
        at: Dict[int, List[float]] = {}
        for r in self.runs:
            for step, m in r.get("curve", []):
                if metric in m:
                    at.setdefault(int(step), []).append(float(m[metric]))
        return [(s, statistics.fmean(v)) for s, v in sorted(at.items())]


@dataclass
class Accuracy:
    """The results of one recipe, by variant."""

    recipe_key: str
    by_neck: Dict[str, Measured] = field(default_factory=dict)
    recipe: Dict[str, Any] = field(default_factory=dict)
    about: str = ""
    source: str = ""
    others: int = 0  # records of other recipes or with neck_args: not grouped
    estimates: Dict[str, float] = field(default_factory=dict)  # minutes per run (`fpn-zoo accuracy --estimate`)
    estimate_cpus: Dict[str, str] = field(default_factory=dict)  # the CPU each estimate was made on, where recorded

    def get(self, name: str) -> Optional[Measured]:
        return self.by_neck.get(name)

    def __bool__(self) -> bool:
        return bool(self.by_neck)

    @classmethod
    def from_data(cls, data: Mapping[str, Any], recipe_key: Optional[str] = None, source: str = "") -> "Accuracy":
        """Group a results file's contents; ``recipe_key`` defaults to the published recipe's, ``Recipe().key()``."""
        if recipe_key is None:
            recipe_key = Recipe().key()
        acc = cls(recipe_key, recipe=dict(data.get("recipes", {}).get(recipe_key, {})),
                  about=str(data.get("about", "")), source=source)
        estimates = data.get("estimates", {}).get(recipe_key, {})
        acc.estimates = {n: float(e["minutes"]) for n, e in estimates.items()}
        acc.estimate_cpus = {n: str(e["cpu"]) for n, e in estimates.items() if e.get("cpu")}
        for r in data.get("results", []):
            if r.get("recipe_key") == recipe_key and not r.get("neck_args"):
                acc.by_neck.setdefault(r["neck"], Measured(r["neck"], [])).runs.append(r)
            else:
                acc.others += 1
        for m in acc.by_neck.values():
            m.runs.sort(key=lambda r: int(r.get("seed", 0)))
        return acc


def read_accuracy(path: Union[str, Path], recipe_key: Optional[str] = None) -> Accuracy:
    """The runs of one recipe in the results file at ``path`` (an empty table when it does not exist)."""
    return Accuracy.from_data(load_results(path), recipe_key, source=str(path))
