"""Neck composition: one neck on top of another.

Every neck exposes a timm ``feature_info``, so a neck is a valid "backbone" for the next one. The typical
use is a single-stride ViT: :mod:`~fpn_zoo.necks.simple_pyramid` makes the multi-scale maps a ViT lacks, and
a multi-scale neck (FPN, BiFPN, CSP-PAN ...) then fuses them. A family opts in with the knobs
``then`` (a registered variant name) and ``then_args`` (overrides for it), and :func:`chain_neck` does the rest.

This module sits below the factory: it never imports it. :func:`chain_neck` builds the second neck with the
``build`` function it is given, or, inside a family builder run by :func:`fpn_zoo.create_neck`, with the one
the factory lends for that build (:func:`neck_builder`).

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("simple_pyramid_fpn", fpn_zoo.FeatureSpec((64,), (16,)), out_channels=32)
    >>> type(neck).__name__, neck.feature_info.reduction()
    ('ChainedNeck', [4, 8, 16, 32])
    >>> sorted({k.split(".")[0] for k in neck.state_dict()})
    ['first', 'second']
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .._registry import family_args, neck_cfg

__all__ = ["ChainedNeck", "ChainDescription", "OpaqueDescription", "chain_neck", "describe_neck", "neck_builder", "BuildNeck"]

BuildNeck = Callable[..., nn.Module]
"""``build(name, features, **overrides) -> neck``: the signature of :func:`fpn_zoo.create_neck`."""

_lent_builder: ContextVar[Optional[BuildNeck]] = ContextVar("fpn_zoo_neck_builder", default=None)


@contextlib.contextmanager
def neck_builder(build: BuildNeck) -> Iterator[None]:
    """Lend ``build`` to :func:`chain_neck` calls made inside this block (the factory does, around a family)."""
    token = _lent_builder.set(build)
    try:
        yield
    finally:
        _lent_builder.reset(token)


@dataclass(frozen=True)
class ChainDescription:
    """What a :class:`ChainedNeck` computes: each stage's own description, first to last."""

    stages: Tuple[Any, ...]
    kind: str = "chain"


@dataclass(frozen=True)
class OpaqueDescription:
    """The bare minimum about a neck without ``describe()`` (a plugin's): its class and output strides."""

    kind: str
    reductions: Optional[Tuple[float, ...]]


def describe_neck(neck: nn.Module) -> Any:
    """``neck.describe()`` if it has one, else an :class:`OpaqueDescription`."""
    describe = getattr(neck, "describe", None)
    if callable(describe):
        return describe()
    info = getattr(neck, "feature_info", None)
    return OpaqueDescription(type(neck).__name__, tuple(info.reduction()) if info is not None else None)


class ChainedNeck(nn.Module):
    """``second(first(features))``: its ``feature_info`` is the second neck's.

    State-dict names are ``first.*`` and ``second.*``.

    Args:
        first: a neck taking the backbone's maps.
        second: a neck built for ``first``'s outputs (``create_neck(name, first)``).
    """

    output_fmt = "NCHW"

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        first_info, second_spec = first.feature_info, getattr(second, "spec", None)
        if second_spec is not None and (
            tuple(second_spec.channels) != tuple(first_info.channels())
            or tuple(second_spec.reductions) != tuple(first_info.reduction())
        ):
            raise ValueError(
                f"the second neck expects channels {list(second_spec.channels)} at strides "
                f"{list(second_spec.reductions)}, but the first gives {first_info.channels()} at "
                f"{first_info.reduction()}: build it with create_neck(name, first)"
            )
        self.first = first
        self.second = second
        self.feature_info = second.feature_info

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: the backbone's maps (what ``first`` takes). Returns: ``second``'s NCHW maps."""
        return self.second(self.first(features))

    def describe(self) -> ChainDescription:
        """Both stages, each described by itself (for docs and diagrams)."""
        return ChainDescription((describe_neck(self.first), describe_neck(self.second)))


def chain_neck(
    first: nn.Module,
    then: Optional[str],
    then_args: Optional[Mapping[str, Any]] = None,
    *,
    inherit: Optional[Mapping[str, Any]] = None,
    owner: str = "neck",
    build: Optional[BuildNeck] = None,
) -> nn.Module:
    """Put the registered variant ``then`` on top of ``first`` (or return ``first`` when ``then`` is None).

    Args:
        first: the neck built so far.
        then: a registered variant name (``"fpn"``, ``"bifpn"`` ...) or None.
        then_args: overrides for ``then`` (they win over ``inherit``).
        inherit: values passed on to ``then`` when its family takes them and ``then_args`` does not set them
            (e.g. ``out_channels``, so the chain's width follows the first neck's knob).
        owner: the family asking, named in errors.
        build: builds the second neck (:func:`fpn_zoo.create_neck`); by default the one the factory lends
            while it runs a family builder.

    Raises:
        TypeError: ``then`` is not a string or ``then_args`` not a mapping.
        ValueError: ``then`` is unknown or rejects the first neck's outputs (with the reason).
    """
    if then is None:
        if then_args:
            raise ValueError(f"{owner}: then_args={dict(then_args)!r} is set but then is None (no second neck)")
        return first
    if not isinstance(then, str):
        raise TypeError(f"{owner}: then must be a registered neck name, got {type(then).__name__} {then!r}")
    if then_args is not None and not isinstance(then_args, Mapping):
        raise TypeError(f"{owner}: then_args must be a mapping of {then!r}'s arguments, got {type(then_args).__name__}")
    try:
        known = family_args(neck_cfg(then).family)
    except ValueError as e:
        raise ValueError(f"{owner}: then={then!r}: {e}") from None
    args = {k: v for k, v in (inherit or {}).items() if k in known}
    args.update(then_args or {})
    build = build or _lent_builder.get()
    if build is None:
        raise TypeError(f"{owner}: chain_neck needs build= (e.g. fpn_zoo.create_neck) outside create_neck")
    try:
        second = build(then, first, **args)
    except ValueError as e:
        raise ValueError(f"{owner}: cannot put {then!r} on top (then={then!r}): {e}") from None
    return ChainedNeck(first, second)
