"""Detection scenes of real handwritten digits, generated deterministically on the CPU.

The digits are scikit-learn's ``load_digits()`` (1,797 real 8x8 scans from the UCI "Optical Recognition of
Handwritten Digits" set, shipped inside the scikit-learn wheel: nothing is downloaded). Each scene pastes
1-6 of them at log-uniform sizes (8 to 64 px by default) into a cluttered canvas, so small, medium and large
objects all occur, each in its own colour. Source digits are split once, by a fixed permutation, into
disjoint train and test pools; a scene is a pure function of ``(split, seed, index)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SceneConfig", "DigitScenes", "digit_pool", "split_indices", "TEST_SEED"]

#: the seed of the fixed test scenes (every published number is measured on these)
TEST_SEED = 20261205
_SPLIT_SEED = 0  # the permutation that splits the 1,797 source digits
_TEST_FRACTION = 1 / 3
_SPLITS = ("train", "test")


@dataclass(frozen=True)
class SceneConfig:
    """How scenes look.

    Attributes:
        canvas: side of the square canvas in pixels.
        min_size, max_size: the pasted digit's side is log-uniform in ``[min_size, max_size]`` pixels.
        max_digits: each scene holds 1 to ``max_digits`` digits (uniform).
        max_overlap: a digit is re-placed while its box covers more than this fraction of another's.
        strokes: random line segments of clutter per scene (uniform in ``0..strokes``).
    """

    canvas: int = 128
    min_size: float = 8.0
    max_size: float = 64.0
    max_digits: int = 6
    max_overlap: float = 0.2
    strokes: int = 6

    def __post_init__(self) -> None:
        if not (4 <= self.min_size <= self.max_size <= self.canvas):
            raise ValueError(f"need 4 <= min_size <= max_size <= canvas, got {self.min_size}, {self.max_size}, "
                             f"{self.canvas}")
        if self.max_digits < 1:
            raise ValueError(f"max_digits must be >= 1, got {self.max_digits}")


def split_indices(split: str, total: int) -> np.ndarray:
    """Which of the ``total`` source digits belong to ``split``: a fixed permutation, one third test."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    order = np.random.default_rng(_SPLIT_SEED).permutation(total)
    n_test = int(round(total * _TEST_FRACTION))
    return order[:n_test] if split == "test" else order[n_test:]


def digit_pool(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """The source digits of one split: ``(images (N, 8, 8) float32 in [0, 1], labels (N,) int64)``.

    The two pools are disjoint (a fixed permutation: one third test, the rest train).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    from sklearn.datasets import load_digits  # the `bench` extra

    digits = load_digits()
    index = split_indices(split, len(digits.target))
    return (digits.images[index] / 16.0).astype(np.float32), digits.target[index].astype(np.int64)


def _paste_mask(digit: np.ndarray, side: int) -> torch.Tensor:
    """An 8x8 digit resized to ``side x side`` (bilinear), values in [0, 1]."""
    x = torch.from_numpy(digit)[None, None]
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)[0, 0].clamp_(0, 1)


def _background(rng: np.random.Generator, cfg: SceneConfig) -> torch.Tensor:
    """A dim canvas: a random tint, smooth low-frequency noise and a few thin strokes."""
    c = cfg.canvas
    base = torch.from_numpy(rng.uniform(0.0, 0.25, size=(3, 1, 1)).astype(np.float32))
    noise = torch.from_numpy(rng.normal(0, 0.08, size=(1, 3, 8, 8)).astype(np.float32))
    img = base + F.interpolate(noise, size=(c, c), mode="bilinear", align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.arange(c, dtype=torch.float32), torch.arange(c, dtype=torch.float32),
                            indexing="ij")
    for _ in range(int(rng.integers(0, cfg.strokes + 1))):
        x0, y0, x1, y1 = rng.uniform(0, c, size=4)
        length = math.hypot(x1 - x0, y1 - y0) + 1e-6
        # distance of every pixel to the segment
        t = (((xx - x0) * (x1 - x0) + (yy - y0) * (y1 - y0)) / length**2).clamp(0, 1)
        dist = torch.hypot(xx - (x0 + t * (x1 - x0)), yy - (y0 + t * (y1 - y0)))
        width = rng.uniform(0.5, 1.5)
        alpha = (1 - (dist - width).clamp(0, 1)) * rng.uniform(0.2, 0.6)
        colour = torch.from_numpy(rng.uniform(0.2, 1.0, size=(3, 1, 1)).astype(np.float32))
        img = img * (1 - alpha) + colour * alpha
    return img


def _overlaps(box: Sequence[float], boxes: List[Sequence[float]], limit: float) -> bool:
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
            if inter > limit * smaller:
                return True
    return False


class DigitScenes:
    """Deterministic scenes of one split: ``scenes[i]`` is ``(image (3, C, C), target)``.

    ``target`` holds ``boxes`` (``x1, y1, x2, y2`` in pixels, tight around the pasted digit's ink: the pixels
    whose ink is above ``INK``), ``labels`` (the digit, 0-9) and ``areas``.

    Args:
        split: ``"train"`` or ``"test"``; train scenes only use train digits and test scenes test digits.
        seed: scenes with the same ``(split, seed, index)`` are identical on every machine that has the same
            scikit-learn digits; the published test set uses :data:`TEST_SEED`.
        config: what scenes look like.
    """

    INK = 0.25  # a pixel belongs to the digit's box when its ink is above this (the digit is drawn at 0..1)

    def __init__(self, split: str, seed: int, config: SceneConfig = SceneConfig()) -> None:
        self.split = split
        self.seed = int(seed)
        self.config = config
        self.digits, self.labels = digit_pool(split)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        image, target, _ink = self.render(index)
        return image, target

    def render(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Scene ``index`` and its ink map ``(C, C)``: each pixel's ink of the digit drawn there (0 elsewhere)."""
        cfg = self.config
        ink = torch.zeros(cfg.canvas, cfg.canvas)
        rng = np.random.default_rng([self.seed, _SPLITS.index(self.split), int(index)])
        img = _background(rng, cfg)
        boxes: List[List[float]] = []
        labels: List[int] = []
        for _ in range(int(rng.integers(1, cfg.max_digits + 1))):
            pick = int(rng.integers(len(self.labels)))
            side = int(round(math.exp(rng.uniform(math.log(cfg.min_size), math.log(cfg.max_size)))))
            mask = _paste_mask(self.digits[pick], side)
            rows = torch.nonzero(mask.amax(1) > self.INK).flatten()
            cols = torch.nonzero(mask.amax(0) > self.INK).flatten()
            if rows.numel() == 0:
                continue
            for _attempt in range(20):
                x0, y0 = (int(v) for v in rng.integers(0, cfg.canvas - side + 1, size=2))
                box = [x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1]
                if not _overlaps(box, boxes, cfg.max_overlap):
                    break
            else:
                continue
            colour = torch.from_numpy(rng.uniform(0.55, 1.0, size=(3, 1, 1)).astype(np.float32))
            region = img[:, y0:y0 + side, x0:x0 + side]
            img[:, y0:y0 + side, x0:x0 + side] = region * (1 - mask) + colour * mask
            ink[y0:y0 + side, x0:x0 + side] = torch.maximum(ink[y0:y0 + side, x0:x0 + side], mask)
            boxes.append([float(v) for v in box])
            labels.append(int(self.labels[pick]))
        boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes_t,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "areas": (boxes_t[:, 2] - boxes_t[:, 0]) * (boxes_t[:, 3] - boxes_t[:, 1]),
        }
        return img.clamp_(0, 1), target, ink

    def batch(self, indices: Sequence[int]) -> Tuple[torch.Tensor, List[Dict[str, torch.Tensor]]]:
        """Scenes ``indices`` stacked: ``(images (B, 3, C, C), targets)``."""
        items = [self[i] for i in indices]
        return torch.stack([im for im, _ in items]), [t for _, t in items]

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tuple[torch.Tensor, List[Dict[str, torch.Tensor]]]]:
        """An endless stream of batches of consecutive scenes from ``start`` (training draws fresh scenes)."""
        index = start
        while True:
            yield self.batch(range(index, index + batch_size))
            index += batch_size
