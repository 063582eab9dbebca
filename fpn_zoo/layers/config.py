"""Every knob a family takes, its allowed values, and the one check of them.

One table per knob, one function that checks a family's arguments against them. A family calls
:func:`check_knobs` once at its entry; :class:`~fpn_zoo.graph.GraphNeck` and the layers trust what they are
given. (timm keeps its layer switches in one ``timm/layers/config.py`` the same way.)

Example:
    >>> from fpn_zoo.layers.config import check_knobs
    >>> check_knobs(out_channels=64, upsample_mode="nearest", extra_op="maxpool")
    >>> check_knobs(out_channels=64, upsample_mode="nerest")
    Traceback (most recent call last):
    ...
    ValueError: upsample_mode must be one of ('nearest', 'bilinear', 'bicubic', 'nearest-exact'), got 'nerest'; did you mean 'nearest', 'nearest-exact'?
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .._utils import close_matches

__all__ = [
    "UPSAMPLE_MODES", "EXTRA_OPS", "MMDET_EXTRA_OPS", "EXTRA_SOURCES", "MMDET_EXTRA_SOURCES", "LATERALS", "FUSIONS",
    "WEIGHTED_FUSIONS", "BIFPN_FUSIONS", "DOWNSAMPLES", "CSP_BLOCKS", "check_choice", "check_count", "check_knobs",
]

#: How maps go up a level (``torch.nn.functional.interpolate`` modes that work on 4-d maps).
UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic", "nearest-exact")
#: How extra levels (P6, P7 ...) are made: 1x1 max-pool stride 2, 3x3 max-pool stride 2, 3x3 stride-2 conv.
EXTRA_OPS = ("subsample", "maxpool", "conv")
#: The extra ops of the necks written after mmdet's (``FPN_DropBlock``, ``FPG``): its size-1 max-pool or
#: ``add_extra_convs``.
MMDET_EXTRA_OPS = ("subsample", "conv")
#: What extra levels are made from: the coarsest backbone map or the coarsest output.
EXTRA_SOURCES = ("input", "output")
#: mmdet's ``add_extra_convs`` sources (``on_input``, ``on_lateral``, ``on_output``): also the coarsest 1x1 lateral.
MMDET_EXTRA_SOURCES = ("input", "lateral", "output")
#: Which backbone edges get a 1x1 projection: every one (FPN) or only where channels differ (BiFPN).
LATERALS = ("always", "if_needed")
#: How a node combines its inputs (:mod:`fpn_zoo.layers.fusion`).
FUSIONS = ("sum", "fast_attn", "attn", "concat", "global_attn")
#: The fusions with one learned weight per input.
WEIGHTED_FUSIONS = ("fast_attn", "attn")
#: The fusions a BiFPN node may use (EfficientDet: fast normalized, softmax, or plain sum for D6/D7).
BIFPN_FUSIONS = ("fast_attn", "attn", "sum")
#: How a node brings inputs from finer levels down: max-pool or a learned strided conv.
DOWNSAMPLES = ("pool", "conv")
#: CSP block styles: YOLOv8's C2f or YOLOv5 / RTMDet's C3.
CSP_BLOCKS = ("c2f", "c3")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming ``name``, the allowed ``choices`` and the close ones when ``value`` is not one."""
    if not isinstance(value, str) or value not in choices:
        hint = close_matches(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}{hint}")


def check_count(name: str, value: Any, minimum: int = 1) -> None:
    """Raise a ``TypeError`` unless ``value`` is an int (not a bool), a ``ValueError`` if it is below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_knobs(
    *,
    out_channels: int,
    upsample_mode: Optional[str] = None,
    extra_levels: int = 0,
    extra_op: Optional[str] = None,
    extra_source: Optional[str] = None,
    lateral: Optional[str] = None,
    fusion: Optional[str] = None,
    fusions: Sequence[str] = FUSIONS,
    extra_ops: Sequence[str] = EXTRA_OPS,
    extra_sources: Sequence[str] = EXTRA_SOURCES,
    **counts: int,
) -> None:
    """Check a family's shared knobs against the tables above; a knob left at None is not checked.

    Args:
        out_channels: channels of every output (an int >= 1).
        upsample_mode: one of :data:`UPSAMPLE_MODES`.
        extra_levels: levels beyond the coarsest (an int >= 0).
        extra_op: one of ``extra_ops``.
        extra_source: one of ``extra_sources``.
        lateral: one of :data:`LATERALS`.
        fusion: one of ``fusions``.
        fusions: the fusions this family allows (default :data:`FUSIONS`; :data:`BIFPN_FUSIONS` ...).
        extra_ops: the extra ops this family allows (default :data:`EXTRA_OPS`; :data:`MMDET_EXTRA_OPS`).
        extra_sources: the extra sources this family allows (default :data:`EXTRA_SOURCES`;
            :data:`MMDET_EXTRA_SOURCES`).
        **counts: further counts that must be ints >= 1 (``smooth_depth=2``, ``num_repeats=3`` ...).

    Raises:
        TypeError: a count that is not an int.
        ValueError: a count out of range or a value not in its table (with close matches).
    """
    check_count("out_channels", out_channels)
    check_count("extra_levels", extra_levels, minimum=0)
    for name, value, choices in (
        ("upsample_mode", upsample_mode, UPSAMPLE_MODES), ("extra_op", extra_op, extra_ops),
        ("extra_source", extra_source, extra_sources), ("lateral", lateral, LATERALS), ("fusion", fusion, fusions),
    ):
        if value is not None:
            check_choice(name, value, choices)
    for name, value in counts.items():
        check_count(name, value)
