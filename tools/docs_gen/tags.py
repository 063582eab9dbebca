"""The tag vocabulary of ``registry.yaml``: one word per idea, each in one of three groups.

* ``purpose``: what a user browses for (the detector kind or task the neck serves).
* ``structure``: how the neck is built (paths, fusion, levels).
* ``reference``: where the variant's configuration comes from, a peer library whose weights convert
  (``torchvision``, ``mmdet``, ``effdet`` ...) or the model / paper it reproduces.

``tests/test_tags.py`` checks every registered tag is here, so a new variant either reuses a word or adds it
(with its group and a line saying what it means); the docs index lists the variants by tag, group by group.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

__all__ = ["GROUPS", "TAGS", "tags_of_group", "unknown_tags"]

GROUPS: Tuple[str, ...] = ("purpose", "structure", "reference")

TAGS: Dict[str, Tuple[str, str]] = {  # tag: (group, what it means)
    # purpose
    "one-stage": ("purpose", "dense one-stage detectors (RetinaNet, FCOS, YOLO, EfficientDet ...)"),
    "two-stage": ("purpose", "two-stage detectors with RoI pooling (Faster / Mask R-CNN ...)"),
    "segmentation": ("purpose", "instance or semantic segmentation"),
    "yolo": ("purpose", "YOLO-family detectors"),
    "detr": ("purpose", "DETR-family detectors (a transformer decoder reads the levels)"),
    "transformer": ("purpose", "the neck itself contains transformer layers"),
    "vit": ("purpose", "plain single-stride ViT backbones"),
    "anchor-free": ("purpose", "anchor-free (keypoint / center) detectors"),
    "mobile": ("purpose", "small and fast, for mobile and edge"),
    "face": ("purpose", "face detection"),
    "baseline": ("purpose", "an ablation baseline to measure other necks against, not a neck to deploy"),
    # structure
    "top-down": ("structure", "a coarse-to-fine path (FPN)"),
    "bottom-up": ("structure", "a fine-to-coarse path (PANet)"),
    "bidirectional": ("structure", "repeated top-down and bottom-up paths with cross-scale edges (BiFPN)"),
    "weighted-fusion": ("structure", "learned per-input fusion weights"),
    "nas": ("structure", "a topology found by architecture search"),
    "grid": ("structure", "a grid of pathways across levels and stages (FPG)"),
    "concat": ("structure", "fuses by concatenation, not sums"),
    "csp": ("structure", "cross-stage-partial (CSP / C2f) blocks after each fusion"),
    "repeated": ("structure", "a cell stacked several times"),
    "deep-smoothing": ("structure", "several conv blocks after each fusion"),
    "extra-levels": ("structure", "adds levels beyond the backbone's coarsest (P6, P7 ...)"),
    "single-level": ("structure", "reads or makes one level only"),
    "single-stride": ("structure", "builds a pyramid from one single-stride map"),
    "no-fusion": ("structure", "maps each level on its own, no cross-level fusion"),
    "projection": ("structure", "channel projection of each level"),
    "per-level": ("structure", "the same module on every level, levels independent"),
    "attention": ("structure", "attention (non-local) blocks"),
    "global-pooling": ("structure", "global-pooling attention in the fusion"),
    "context": ("structure", "context modules widening the receptive field per level"),
    "pyramid-pooling": ("structure", "pooling at several grid sizes on the coarsest map (PSPNet's PPM, SPPF)"),
    "single-output": ("structure", "returns one fused map rather than one per level"),
    "dilated": ("structure", "dilated residual blocks"),
    "deformable": ("structure", "deformable sampling: deformable convolutions (DCNv2, torchvision.ops.deform_conv2d) "
                                "or multi-scale deformable attention (Deformable DETR)"),
    "upsampling": ("structure", "learned upsampling (deconvolutions) to a finer stride"),
    "refine": ("structure", "gathers all levels to one, refines, and scatters back (balanced pyramid)"),
    "regularization": ("structure", "training-time regularization (DropBlock)"),
    "separable": ("structure", "depthwise-separable convs"),
    "composed": ("structure", "one neck on top of another"),
    "topology-data": ("structure", "the graph is written as data in registry.yaml"),
    # reference
    "torchvision": ("reference", "torchvision FeaturePyramidNetwork weights convert (fpn_zoo.convert)"),
    "mmdet": ("reference", "mmdetection 3.3 weights convert (fpn_zoo.convert)"),
    "effdet": ("reference", "effdet (efficientdet-pytorch) BiFpn weights convert (fpn_zoo.convert)"),
    "ultralytics": ("reference", "ultralytics YOLO neck weights convert (fpn_zoo.convert)"),
    "transformers": ("reference", "Hugging Face transformers weights convert (fpn_zoo.convert)"),
    "efficientdet": ("reference", "EfficientDet's configuration"),
    "retinanet": ("reference", "RetinaNet's configuration"),
    "mask-rcnn": ("reference", "Mask R-CNN's configuration"),
    "vitdet": ("reference", "ViTDet's configuration"),
    "hrnet": ("reference", "HRNet's configuration"),
    "libra-rcnn": ("reference", "Libra R-CNN's configuration"),
    "yolof": ("reference", "YOLOF's configuration"),
    "yolox": ("reference", "YOLOX's configuration"),
    "rtmdet": ("reference", "RTMDet's configuration"),
    "ssd": ("reference", "SSD's configuration"),
    "centernet": ("reference", "CenterNet's configuration"),
    "rt-detr": ("reference", "RT-DETR's configuration"),
    "deformable-detr": ("reference", "Deformable DETR's configuration"),
    "dino": ("reference", "DINO's (DETR with improved denoising anchor boxes) configuration"),
    "fcos": ("reference", "FCOS's configuration"),
    "upernet": ("reference", "UPerNet's configuration"),
    "original-notes": ("reference", "the design notes this project grew from"),
}


def tags_of_group(group: str) -> List[str]:
    """The tags of one of :data:`GROUPS`, in vocabulary order."""
    if group not in GROUPS:
        raise ValueError(f"unknown tag group {group!r}; one of {', '.join(GROUPS)}")
    return [tag for tag, (g, _) in TAGS.items() if g == group]


def unknown_tags(tags_by_variant: Mapping[str, Sequence[str]]) -> Dict[str, List[str]]:
    """``{variant: [tags not in the vocabulary]}`` for the variants that use any."""
    out = {name: [t for t in tags if t not in TAGS] for name, tags in tags_by_variant.items()}
    return {name: bad for name, bad in out.items() if bad}
