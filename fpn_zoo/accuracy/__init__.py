"""The accuracy benchmark: FCOS with each neck, trained and evaluated on scenes of real handwritten digits.

Everything runs on the CPU from data that ships in scikit-learn (no download); evaluation is pycocotools'.
Needs the ``bench`` extra (``pip install 'fpn-zoo[bench]'``). ``fpn-zoo accuracy`` is the command;
``docs/accuracy.md`` the published table.

Example (a tiny budget, to check the pipeline; the published recipe is ``Recipe()``)::

    from fpn_zoo.accuracy import Recipe, run_one
    result = run_one("fpn_bn_lrelu_64", seed=0, recipe=Recipe(steps=20, test_scenes=10))
    result["metrics"]["AP"], result["metrics"]["agnostic_AP"]
"""
from .evaluate import METRICS, coco_metrics, evaluate_detector
from .recipe import ATTACHMENTS, Recipe, attachment, build_detector, pretrained_backbone, train_detector
from .results import Accuracy, Measured, load_results, read_accuracy
from .runner import pending, run_many, run_one, summarize
from .scenes import DigitScenes, SceneConfig

__all__ = [
    "METRICS", "coco_metrics", "evaluate_detector", "ATTACHMENTS", "Recipe", "attachment", "build_detector",
    "pretrained_backbone", "train_detector", "Accuracy", "Measured", "load_results", "read_accuracy", "pending",
    "run_many", "run_one", "summarize",
    "DigitScenes", "SceneConfig",
]
