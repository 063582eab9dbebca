"""Anchor sizes and FCOS scale ranges derived from a neck's actual strides, one entry per level.

torchvision's defaults assume five levels at strides 4..64 (R-CNN) or 8..128 (RetinaNet, FCOS); a neck
with other strides or another level count needs them derived from its own ``feature_info``.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from torchvision.models.detection.anchor_utils import AnchorGenerator

__all__ = [
    "rcnn_anchor_sizes", "retinanet_anchor_sizes", "fcos_anchor_sizes", "fcos_size_ranges", "anchor_generator",
]

ASPECT_RATIOS: Tuple[float, ...] = (0.5, 1.0, 2.0)


def _check(strides: Sequence[float]) -> None:
    if not strides:
        raise ValueError("a detector needs at least one level, got no strides")


def rcnn_anchor_sizes(strides: Sequence[float]) -> List[Tuple[float, ...]]:
    """Faster / Mask R-CNN with FPN: one size per level, 8 x its stride (torchvision: 32..512 at 4..64).

    Lin et al., "Feature Pyramid Networks for Object Detection", https://arxiv.org/abs/1612.03144
    """
    _check(strides)
    return [(float(8 * s),) for s in strides]


def retinanet_anchor_sizes(strides: Sequence[float]) -> List[Tuple[float, ...]]:
    """RetinaNet: 4 x stride at three octave scales 2^0, 2^(1/3), 2^(2/3) (torchvision: 32..512 at 8..128).

    Lin et al., "Focal Loss for Dense Object Detection", https://arxiv.org/abs/1708.02002
    """
    _check(strides)
    return [tuple(float(4 * s * 2 ** (k / 3)) for k in range(3)) for s in strides]


def fcos_anchor_sizes(strides: Sequence[float]) -> List[Tuple[float, ...]]:
    """FCOS: one point per location, its "anchor" the stride (the centre-sampling radius is in strides)."""
    _check(strides)
    return [(float(s),) for s in strides]


def fcos_size_ranges(strides: Sequence[float], scale: float = 1.0) -> List[Tuple[float, float]]:
    """FCOS's per-level regression ranges: a point on level i regresses a box when ``max(l, t, r, b)`` is in
    ``[4 * stride_i, 8 * stride_i)`` — 0-64, 64-128, 128-256, 256-512, 512-inf for strides 8..128 — the first
    level open below and the last open above.

    Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", https://arxiv.org/abs/1904.01355

    Args:
        strides: each level's stride.
        scale: multiplies every bound. The paper's ranges send every box under ~128 px to the stride-8 level;
            on small images (128 px canvases) ``scale=0.25`` spreads 8-64 px boxes over the pyramid.
    """
    _check(strides)
    if not scale > 0 or math.isinf(scale):
        raise ValueError(f"the FCOS size-range scale must be a positive finite number, got {scale!r}")
    ranges = [(4.0 * s * scale, 8.0 * s * scale) for s in strides]
    ranges[0] = (0.0, ranges[0][1])
    ranges[-1] = (ranges[-1][0], math.inf)
    return ranges


def anchor_generator(
    sizes: Sequence[Tuple[float, ...]], aspect_ratios: Sequence[float] = ASPECT_RATIOS,
) -> AnchorGenerator:
    """torchvision ``AnchorGenerator`` with ``sizes`` per level and the same aspect ratios on every level."""
    return AnchorGenerator(tuple(tuple(s) for s in sizes), (tuple(aspect_ratios),) * len(sizes))
