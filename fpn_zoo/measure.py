"""Measuring necks: parameters, FLOPs and CPU latency (used by ``fpn-zoo bench``, ``info`` and the docs).

Parameters and FLOPs are deterministic (FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`,
which counts 2 FLOPs per multiply-add of convolutions and matmuls and ignores pooling, resizing and
additions). Latency is machine noise: :func:`time_interleaved` runs the candidates in turn, round after
round, so that a slow moment of the machine hits all of them, and reports each one's median.

Example:
    >>> import torch, fpn_zoo
    >>> from fpn_zoo.measure import count_flops, count_params
    >>> neck = fpn_zoo.create_neck("fpn", [8, 16], reductions=[8, 16], out_channels=8)
    >>> maps = [torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4)]
    >>> count_params(neck), count_flops(neck, maps) > 0
    (1376, True)
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ._utils import close_matches

__all__ = [
    "DEFAULT_BACKBONE", "DEFAULT_OUT_INDICES", "DEFAULT_SIZE", "Reference", "NeckStats", "load_backbone",
    "backbone_features", "count_params", "count_flops", "time_interleaved", "neck_stats", "parse_size", "cpu_name",
]

DEFAULT_BACKBONE = "resnet18"
DEFAULT_OUT_INDICES: Tuple[int, ...] = (2, 3, 4)
DEFAULT_SIZE = 256

OutIndices = Union[int, Tuple[int, ...], None]


@dataclass(frozen=True)
class Reference:
    """A backbone and an image size to measure necks on.

    Attributes:
        backbone: a timm model name (built ``features_only``, ``pretrained=False``).
        out_indices: the stages that feed the neck: a tuple, an int (the last ``n`` stages), or None
            (timm's default: all of them).
        size: image height and width.
    """

    backbone: str = DEFAULT_BACKBONE
    out_indices: OutIndices = DEFAULT_OUT_INDICES
    size: Tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)

    def describe(self) -> str:
        """``resnet18 (out_indices (2, 3, 4)) at 256x256 px``."""
        h, w = self.size
        size = f"{h} px" if h == w else f"{h}x{w} px"
        if self.out_indices is None:
            return f"{self.backbone} at {size}"
        idx = self.out_indices
        if isinstance(idx, int):
            idx_txt = "its last stage" if idx == 1 else f"its last {idx} stages"
        else:
            idx_txt = f"out_indices {tuple(idx)}"
        return f"{self.backbone} ({idx_txt}) at {size}"


@dataclass(frozen=True)
class NeckStats:
    """What :func:`neck_stats` measures on one neck (latency is filled in separately)."""

    name: str
    params: int
    flops: int
    outputs: Tuple[Tuple[int, int, Tuple[int, int]], ...]  # (channels, stride, (height, width)) per level
    latency_ms: Optional[float] = None

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def cpu_name() -> str:
    """The CPU timings come from: its model name and the vector ISA PyTorch dispatches to ("AMD EPYC (AVX2)")."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def parse_size(text: Union[str, int, Sequence[int]]) -> Tuple[int, int]:
    """``256`` / ``"256"`` / ``"192x320"`` / ``(192, 320)`` -> ``(height, width)``.

    Raises:
        ValueError: not one or two positive integers.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        parts: List[Any] = [text]
    elif isinstance(text, str):
        parts = text.lower().replace("*", "x").split("x")
    else:
        parts = list(text)
    try:
        values = [int(p) for p in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) not in (1, 2) or any(v <= 0 for v in values):
        raise ValueError(f"image size must be a positive integer or HEIGHTxWIDTH (e.g. 256 or 192x320), got {text!r}")
    return (values[0], values[-1])


def load_backbone(name: str, out_indices: OutIndices = DEFAULT_OUT_INDICES, **kwargs: Any) -> nn.Module:
    """A timm ``features_only`` backbone without pretrained weights, in eval mode.

    Raises:
        ValueError: unknown model name (with close matches), or ``out_indices`` the model does not have.
    """
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm backbone {name!r}{close_matches(name, timm.list_models(), cutoff=0.6)}")
    if out_indices is not None:
        kwargs["out_indices"] = out_indices
    try:
        model = timm.create_model(name, features_only=True, pretrained=False, **kwargs)
    except (AssertionError, IndexError) as e:
        raise ValueError(f"backbone {name!r} cannot give out_indices={out_indices!r} ({e or type(e).__name__})") from None
    except RuntimeError as e:
        raise ValueError(f"backbone {name!r} does not build features_only: {e}") from None
    return model.eval()


@torch.no_grad()
def backbone_features(backbone: nn.Module, size: Tuple[int, int], batch: int = 1, seed: int = 0) -> List[torch.Tensor]:
    """The backbone's maps for a random image batch of ``size`` (height, width)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, *size, generator=generator)
    try:
        return list(backbone(images))
    except (AssertionError, RuntimeError, ValueError) as e:  # fixed-size models (ViT, swin) assert on the size
        detail = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"the backbone cannot take a {size[0]}x{size[1]} image: {detail}") from None


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_flops(module: nn.Module, *args: Any) -> int:
    """FLOPs of one forward call ``module(*args)`` as counted by ``FlopCounterMode`` (2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with counter:
        module(*args)
    return int(counter.get_total_flops())


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    reps: int = 5,
    warmup: int = 1,
    on_step: Optional[Callable[[str], None]] = None,
    inference: bool = True,
) -> Dict[str, float]:
    """Median wall time (seconds) of each function, timed in interleaved rounds.

    Each round calls every function once (the order rotates from round to round), so that background
    load spreads evenly over the candidates instead of falling on whichever ran during it.

    Args:
        fns: name -> a call to time (no arguments).
        reps: timed rounds (at least 1).
        warmup: untimed calls of each function first.
        on_step: called with the name after every timed call (for a progress bar).
        inference: run under ``torch.inference_mode`` (False to time training steps).
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    names = list(fns)
    with torch.inference_mode(inference):
        for _ in range(warmup):
            for name in names:
                fns[name]()
        times: Dict[str, List[float]] = {name: [] for name in names}
        for r in range(reps):
            shift = r % len(names) if names else 0
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
                if on_step is not None:
                    on_step(name)
    return {name: statistics.median(t) for name, t in times.items()}


def neck_stats(name: str, neck: nn.Module, features: Sequence[torch.Tensor], image_size: Tuple[int, int]) -> NeckStats:
    """Params, FLOPs and output levels of ``neck`` on ``features`` (maps of an image of ``image_size``)."""
    neck.eval()
    feats = list(features)
    flops = count_flops(neck, feats)
    with torch.no_grad():
        outs = neck(list(feats))
    levels = []
    for out in outs:
        h, w = int(out.shape[-2]), int(out.shape[-1])
        levels.append((int(out.shape[1]), int(round(image_size[0] / h)), (h, w)))
    reductions = [int(r) for r in neck.feature_info.reduction()] if hasattr(neck, "feature_info") else None
    if reductions is not None and len(reductions) == len(levels):
        levels = [(c, r, hw) for (c, _, hw), r in zip(levels, reductions)]
    return NeckStats(name, count_params(neck), flops, tuple(levels))
