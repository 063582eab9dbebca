"""COCO-style evaluation of a detector on the fixed test scenes, by pycocotools (the reference evaluator).

COCO's area buckets (small < 32², medium 32²-96²) are meant for ~640 px images; on a 128 px canvas every
digit would be "small". The buckets here are scaled to the canvas: small < 16², medium 16²-32², large > 32²
(for the default 128 px canvas; they scale with ``canvas / 128``).

Besides the usual (class-aware) metrics, a class-agnostic evaluation (every box one class, after a
class-agnostic NMS) measures localisation alone, which is what a neck changes most; the difference between
the two is digit classification.
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torchvision.ops import nms

from .scenes import TEST_SEED, DigitScenes, SceneConfig

__all__ = ["METRICS", "area_ranges", "coco_metrics", "detect", "evaluate_detector"]

#: the metrics reported, in pycocotools' ``stats`` order (AR100: mean recall at 100 detections per image)
METRICS: Tuple[str, ...] = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100")
_STATS_INDEX = (0, 1, 2, 3, 4, 5, 8)


def area_ranges(canvas: int) -> List[List[float]]:
    """pycocotools ``areaRng`` (all, small, medium, large) scaled to a ``canvas``-pixel image."""
    k = (canvas / 128.0) ** 2
    return [[0.0, 1e10], [0.0, 256.0 * k], [256.0 * k, 1024.0 * k], [1024.0 * k, 1e10]]


def coco_metrics(
    targets: Sequence[Dict[str, torch.Tensor]], detections: Sequence[Dict[str, torch.Tensor]], canvas: int,
    agnostic: bool = False,
) -> Dict[str, float]:
    """pycocotools' bbox metrics of ``detections`` against ``targets`` (one dict per image, torchvision style).

    With ``agnostic``, every box counts as one class (detections should then be class-agnostically NMS'd).
    """
    from pycocotools.coco import COCO  # the `bench` extra
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (tgt, det) in enumerate(zip(targets, detections), start=1):
        images.append({"id": image_id, "width": canvas, "height": canvas})
        for box, label in zip(tgt["boxes"].tolist(), tgt["labels"].tolist()):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1 if agnostic else label + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
        for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": image_id, "category_id": 1 if agnostic else label + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    categories = [{"id": 1, "name": "digit"}] if agnostic else [{"id": c + 1, "name": str(c)} for c in range(10)]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return {m: 0.0 for m in METRICS}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.areaRng = area_ranges(canvas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # pycocotools reports -1 for a bucket without ground truth
    return {m: round(max(float(ev.stats[i]), 0.0), 4) for m, i in zip(METRICS, _STATS_INDEX)}


@torch.no_grad()
def detect(model: nn.Module, scenes: DigitScenes, count: int, batch: int = 25) -> Tuple[list, list]:
    """Run ``model`` (eval mode) on the first ``count`` scenes: ``(targets, detections)``."""
    model.eval()
    targets, detections = [], []
    for start in range(0, count, batch):
        images, tgts = scenes.batch(range(start, min(count, start + batch)))
        detections += [{k: v.detach() for k, v in d.items()} for d in model(list(images))]
        targets += tgts
    return targets, detections


def _class_agnostic(det: Dict[str, torch.Tensor], iou: float = 0.6, top: int = 100) -> Dict[str, torch.Tensor]:
    keep = nms(det["boxes"], det["scores"], iou)[:top]
    return {"boxes": det["boxes"][keep], "scores": det["scores"][keep], "labels": torch.zeros_like(keep)}


def evaluate_detector(model: nn.Module, count: int = 300, config: SceneConfig = SceneConfig()) -> Dict[str, float]:
    """AP metrics on the first ``count`` fixed test scenes, class-aware and class-agnostic (``agnostic_*``)."""
    targets, detections = detect(model, DigitScenes("test", TEST_SEED, config), count)
    metrics = coco_metrics(targets, detections, config.canvas)
    agnostic = coco_metrics(targets, [_class_agnostic(d) for d in detections], config.canvas, agnostic=True)
    metrics.update({f"agnostic_{k}": v for k, v in agnostic.items()})
    return metrics
