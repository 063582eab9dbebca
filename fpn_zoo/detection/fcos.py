"""torchvision's FCOS with explicit per-level regression ranges.

torchvision's ``FCOS.compute_loss`` derives each level's range from its anchor size (``[4 x size,
8 x size)``), so the ranges are only right when the anchor sizes are the strides and cannot be changed
without also changing the centre-sampling radius. :class:`FCOS` takes the ranges (one ``(low, high)`` per
level, :func:`fpn_zoo.detection.anchors.fcos_size_ranges`) and keeps everything else torchvision's.

Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", https://arxiv.org/abs/1904.01355
"""
from __future__ import annotations

import math
from functools import partial
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.models.detection import fcos as tv_fcos

__all__ = ["FCOS", "FCOSHead", "fcos_head"]


class FCOSHead(tv_fcos.FCOSHead):
    """torchvision's ``FCOSHead`` with GroupNorm over ``gcd(32, in_channels)`` groups.

    torchvision hard-codes ``GroupNorm(32, C)``, which fails for a width that is no multiple of 32 (a 16- or
    88-channel neck); at multiples of 32 this is exactly torchvision's head.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int = 4) -> None:
        torch.nn.Module.__init__(self)
        norm = partial(torch.nn.GroupNorm, math.gcd(32, in_channels))
        self.box_coder = tv_fcos.det_utils.BoxLinearCoder(normalize_by_size=True)
        self.classification_head = tv_fcos.FCOSClassificationHead(
            in_channels, num_anchors, num_classes, num_convs, norm_layer=norm)
        self.regression_head = tv_fcos.FCOSRegressionHead(in_channels, num_anchors, num_convs, norm_layer=norm)


def fcos_head(in_channels: int, num_classes: int, num_convs: int = 4) -> FCOSHead:
    """An FCOS head (one point per location) that works at any width."""
    return FCOSHead(in_channels, 1, num_classes, num_convs)


class FCOS(tv_fcos.FCOS):
    """torchvision ``FCOS`` whose level assignment uses ``size_ranges`` rather than the anchor sizes.

    Args:
        backbone: a torchvision detection backbone (``out_channels``, ``OrderedDict`` output).
        num_classes: number of classes (no background class in FCOS).
        size_ranges: per level ``(low, high)``: a location of that level regresses a box when
            ``low < max(l, t, r, b) < high``.
        **kwargs: everything torchvision's ``FCOS`` takes (``anchor_generator``, ``min_size``, ...).
    """

    def __init__(self, backbone: torch.nn.Module, num_classes: int, *, size_ranges: Sequence[Tuple[float, float]],
                 **kwargs) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        levels = len(self.anchor_generator.sizes)
        if len(size_ranges) != levels:
            raise ValueError(f"size_ranges has {len(size_ranges)} entries but the detector has {levels} levels")
        for lo, hi in size_ranges:
            if not (0 <= lo < hi):
                raise ValueError(f"each size range must be 0 <= low < high, got {(lo, hi)}")
        self.size_ranges: List[Tuple[float, float]] = [(float(lo), float(hi)) for lo, hi in size_ranges]

    def match(self, targets: List[Dict[str, Tensor]], anchors: List[Tensor],
              num_anchors_per_level: List[int]) -> List[Tensor]:
        """For every image, the index of the box each location regresses (-1: background).

        torchvision's rule (centre sampling, inside the box, smallest box wins) with this model's ranges.
        """
        if len(num_anchors_per_level) != len(self.size_ranges):
            raise ValueError(
                f"the backbone returned {len(num_anchors_per_level)} levels, size_ranges has {len(self.size_ranges)}"
            )
        matched_idxs = []
        for anchors_per_image, targets_per_image in zip(anchors, targets):
            if targets_per_image["boxes"].numel() == 0:
                matched_idxs.append(
                    torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device)
                )
                continue
            counts = torch.as_tensor(num_anchors_per_level, device=anchors_per_image.device)
            lower = torch.repeat_interleave(
                torch.tensor([lo for lo, _ in self.size_ranges], dtype=anchors_per_image.dtype,
                             device=anchors_per_image.device), counts)
            upper = torch.repeat_interleave(
                torch.tensor([hi if math.isfinite(hi) else float("inf") for _, hi in self.size_ranges],
                             dtype=anchors_per_image.dtype, device=anchors_per_image.device), counts)

            gt_boxes = targets_per_image["boxes"]
            gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
            anchor_centers = (anchors_per_image[:, :2] + anchors_per_image[:, 2:]) / 2
            anchor_sizes = anchors_per_image[:, 2] - anchors_per_image[:, 0]
            pairwise_match = (anchor_centers[:, None, :] - gt_centers[None, :, :]).abs_().max(
                dim=2
            ).values < self.center_sampling_radius * anchor_sizes[:, None]
            x, y = anchor_centers.unsqueeze(dim=2).unbind(dim=1)
            x0, y0, x1, y1 = gt_boxes.unsqueeze(dim=0).unbind(dim=2)
            pairwise_dist = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)
            pairwise_match &= pairwise_dist.min(dim=2).values > 0
            pairwise_dist = pairwise_dist.max(dim=2).values
            pairwise_match &= (pairwise_dist > lower[:, None]) & (pairwise_dist < upper[:, None])

            gt_areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
            pairwise_match = pairwise_match.to(torch.float32) * (1e8 - gt_areas[None, :])
            min_values, matched_idx = pairwise_match.max(dim=1)
            matched_idx[min_values < 1e-5] = -1
            matched_idxs.append(matched_idx)
        return matched_idxs

    def compute_loss(self, targets: List[Dict[str, Tensor]], head_outputs: Dict[str, Tensor],
                     anchors: List[Tensor], num_anchors_per_level: List[int]) -> Dict[str, Tensor]:
        matched_idxs = self.match(targets, anchors, num_anchors_per_level)
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)
