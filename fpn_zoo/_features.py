"""What a neck knows of its inputs (channels, reductions, layout) and the ``feature_info`` it exposes.

A neck never asks the user for channel counts: :meth:`FeatureSpec.resolve` reads them from a timm
``features_only`` model, its ``feature_info``, a list of ``{num_chs, reduction}`` dicts, or — as a last
resort — an explicit list of channels.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch

from ._compat import is_compiling
from timm.models import FeatureInfo

__all__ = [
    "FeatureSpec", "BackboneMismatch", "make_feature_info", "check_features", "check_module_inputs",
    "warn_single_stride", "is_compiling", "MAX_REDUCTION",
]


class BackboneMismatch(ValueError):
    """A variant declines a backbone it cannot serve (e.g. a multi-scale neck on a single-stride ViT).

    The message names a variant that fits. Raised at construction, never at forward time.
    """

FORMATS = ("NCHW", "NHWC")
#: The largest stride a level may report: 4096 px per cell is far beyond any backbone or neck output, so a
#: larger one (``2**40``) is a mistake, not a feature map.
MAX_REDUCTION = 4096


def _fmt_name(fmt: Any) -> str:
    return str(getattr(fmt, "value", fmt)).upper()


@dataclass(frozen=True)
class FeatureSpec:
    """The input levels of a neck, finest first.

    Attributes:
        channels: channels of each input level.
        reductions: stride of each level relative to the image (non-decreasing).
        input_fmt: ``"NCHW"`` or ``"NHWC"`` (swin, swinv2, mambaout and sequencer return NHWC).
    """

    channels: Tuple[int, ...]
    reductions: Tuple[int, ...]
    input_fmt: str = "NCHW"

    def __post_init__(self) -> None:
        if len(self.channels) == 0:
            raise ValueError("a neck needs at least one input level, got none")
        if len(self.channels) != len(self.reductions):
            raise ValueError(
                f"got {len(self.channels)} channel counts but {len(self.reductions)} reductions; "
                "give one of each per level"
            )
        for level, (c, r) in enumerate(zip(self.channels, self.reductions)):
            if isinstance(c, bool) or not isinstance(c, int) or c <= 0:
                raise ValueError(f"level {level}: channels must be a positive int, got {c!r}")
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= MAX_REDUCTION:
                raise ValueError(
                    f"level {level}: reduction must be a finite number in (0, {MAX_REDUCTION}], got {r!r}"
                )
        for level in range(1, len(self.reductions)):
            if self.reductions[level] < self.reductions[level - 1]:
                raise ValueError(
                    f"levels must be ordered finest first, but level {level} has reduction "
                    f"{self.reductions[level]} < {self.reductions[level - 1]} of level {level - 1}"
                )
        if self.input_fmt not in FORMATS:
            raise ValueError(f"input_fmt must be one of {FORMATS}, got {self.input_fmt!r}")

    @property
    def num_levels(self) -> int:
        return len(self.channels)

    @classmethod
    def resolve(
        cls,
        features: Any,
        reductions: Optional[Sequence[int]] = None,
        input_fmt: Optional[str] = None,
    ) -> "FeatureSpec":
        """Build a spec from whatever describes the backbone's features.

        Args:
            features: a :class:`FeatureSpec`; a timm ``features_only`` model (its ``output_fmt`` sets the
                layout); a timm ``FeatureInfo`` or anything with ``channels()`` and ``reduction()``; a list
                of ``{"num_chs", "reduction"}`` dicts; or a list of channel counts.
            reductions: strides for a plain channel list. Default: a x2 pyramid ending at 32.
            input_fmt: ``"NCHW"`` or ``"NHWC"``; default: the model's ``output_fmt``, else NCHW.

        Raises:
            TypeError: ``features`` is none of the above.
        """
        fmt = _fmt_name(input_fmt) if input_fmt is not None else None
        if isinstance(features, FeatureSpec):
            return cls(features.channels, features.reductions, fmt or features.input_fmt)
        if isinstance(features, torch.nn.Module):
            info = getattr(features, "feature_info", None)
            if info is None:
                raise TypeError(
                    f"{type(features).__name__} has no feature_info: create the backbone with "
                    "timm.create_model(..., features_only=True)"
                )
            model_fmt = _fmt_name(getattr(features, "output_fmt", None) or "NCHW")
            return cls.resolve(info, reductions, fmt or model_fmt)
        if hasattr(features, "channels") and hasattr(features, "reduction"):
            chs, reds = features.channels(), features.reduction()
            return cls(tuple(int(c) for c in chs), tuple(reds), fmt or "NCHW")
        if isinstance(features, (list, tuple)) and features and all(isinstance(f, dict) for f in features):
            try:
                chs = tuple(int(f["num_chs"]) for f in features)
                reds = tuple(f["reduction"] for f in features)
            except KeyError as e:
                raise TypeError(f"feature dicts need 'num_chs' and 'reduction' keys, one is missing {e}") from None
            return cls(chs, reds, fmt or "NCHW")
        if isinstance(features, (list, tuple)):
            chs = tuple(features)
            if reductions is None:
                start = max(0, 6 - len(chs))
                reductions = tuple(2 ** (start + i) for i in range(len(chs)))
            return cls(chs, tuple(reductions), fmt or "NCHW")
        raise TypeError(
            "features must be a timm features_only model, a FeatureInfo, a list of "
            f"{{num_chs, reduction}} dicts or a list of channels; got {type(features).__name__}"
        )


def make_feature_info(channels: Sequence[int], reductions: Sequence[float], prefix: str = "") -> FeatureInfo:
    """A timm ``FeatureInfo`` for a neck's outputs, so anything that consumes timm features consumes ours."""
    info = [
        dict(num_chs=int(c), reduction=r, module=f"{prefix}{i}", index=i)
        for i, (c, r) in enumerate(zip(channels, reductions))
    ]
    return FeatureInfo(info, out_indices=tuple(range(len(info))))


def check_module_inputs(module: torch.nn.Module, features: Any, spec: FeatureSpec) -> None:
    """:func:`check_features` against ``module``'s weights' dtype, skipped while compiling."""
    if not is_compiling():
        param = next(module.parameters(), None)
        check_features(features, spec, param.dtype if param is not None else None)


def warn_single_stride(spec: FeatureSpec) -> None:
    """Warn (the same way in every multi-level family) when all of several levels share one stride.

    Such maps (the blocks of a plain ViT) are valid input and the neck's outputs match its ``feature_info``,
    but it builds no pyramid: every output stays at that stride. The warning names the variants that build
    one from such a map.
    """
    if spec.num_levels > 1 and len(set(spec.reductions)) == 1:
        stride = spec.reductions[0]
        warnings.warn(
            f"every input level has stride {stride} (a plain ViT?), so this neck builds no pyramid: all its "
            f"outputs stay at stride {stride}. 'simple_pyramid_fpn' or 'simple_pyramid_bifpn' build strides "
            "8-32 from one such map.",
            UserWarning, stacklevel=4,
        )


def check_features(features: Any, spec: FeatureSpec, param_dtype: Optional[torch.dtype] = None) -> None:
    """Raise a clear ``TypeError``/``ValueError`` when ``features`` do not fit ``spec``.

    Checked per level: a 4-d floating-point tensor, not on the meta device, with the level's channels, the
    batch size and dtype of level 0, no zero-size side, and no larger (in H or W) than the level before it;
    where the spec's stride at least doubles, a side above 1 must shrink (maps passed coarsest-first or all at
    one size contradict ``feature_info``). A few comparisons per level: nothing measurable beside a conv.
    """
    n = spec.num_levels
    if not isinstance(features, (list, tuple)):
        raise TypeError(f"a neck takes a list of {n} feature maps, got {type(features).__name__}")
    if len(features) != n:
        raise ValueError(
            f"expected {n} feature maps (channels {list(spec.channels)}), got {len(features)}"
        )
    nhwc = spec.input_fmt == "NHWC"
    first: Optional[torch.Tensor] = None
    prev_hw: Tuple[int, int] = (0, 0)
    for level, x in enumerate(features):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"feature map {level} is a {type(x).__name__}, expected a torch.Tensor")
        if x.ndim != 4:
            raise ValueError(
                f"feature map {level} has shape {tuple(x.shape)}; expected a 4-d {spec.input_fmt} tensor"
            )
        if not x.is_floating_point():
            raise TypeError(f"feature map {level} has dtype {x.dtype}; a neck needs floating-point maps")
        if x.is_meta:
            raise ValueError(f"feature map {level} is on the meta device (shape only, no data); a neck needs real maps")
        shape = x.shape
        expected = spec.channels[level]
        got = shape[3] if nhwc else shape[1]
        if got != expected:
            other = shape[1] if nhwc else shape[3]
            hint = ""
            if other == expected:
                layout = "NCHW" if nhwc else "NHWC"
                hint = (
                    f" (it looks like {layout}: pass input_fmt={layout!r} to create_neck, "
                    "or pass the backbone model itself so its output_fmt is read)"
                )
            raise ValueError(
                f"feature map {level} has {got} channels, expected {expected}{hint}; "
                f"shape {tuple(shape)} read as {spec.input_fmt}"
            )
        hw = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
        if hw[0] == 0 or hw[1] == 0:
            raise ValueError(f"feature map {level} has a zero-size side: {hw[0]}x{hw[1]} (shape {tuple(shape)})")
        if first is None:
            first = x
        else:
            if shape[0] != first.shape[0]:
                raise ValueError(f"feature map {level} has batch size {shape[0]}, but feature map 0 has {first.shape[0]}")
            if x.dtype != first.dtype:
                raise TypeError(f"feature map {level} is {x.dtype}, but feature map 0 is {first.dtype}: "
                                "every level must have one dtype")
            doubled = spec.reductions[level] >= 2 * spec.reductions[level - 1]
            for side, (a, b) in zip("HW", zip(prev_hw, hw)):
                if b > a or (doubled and b == a > 1):
                    raise ValueError(
                        f"feature map {level} is {hw[0]}x{hw[1]}, but feature map {level - 1} is "
                        f"{prev_hw[0]}x{prev_hw[1]}: at stride {spec.reductions[level]} (vs "
                        f"{spec.reductions[level - 1]}) its {side} should be about {a / (spec.reductions[level] / spec.reductions[level - 1]):.3g}; "
                        "pass the maps finest first, one per level of feature_info"
                    )
        prev_hw = hw
    if param_dtype is not None and first is not None and not torch.is_autocast_enabled(first.device.type):
        if first.dtype != param_dtype:
            raise TypeError(
                f"feature maps are {first.dtype} but the neck's weights are {param_dtype}: "
                f"call neck.to({first.dtype}) or use torch.autocast"
            )
