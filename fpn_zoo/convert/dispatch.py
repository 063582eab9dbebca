"""One call adopts a peer's neck module: :func:`from_module` dispatches on the peer's class to its converter.

A converter reads the peer's configuration from the module itself, builds the fpn_zoo neck that computes the
same function, and loads the peer's weights under fpn_zoo's names. It never loads partially: a configuration
fpn_zoo does not reproduce is a ``ValueError`` naming the peer's attribute.

Adding a converter (ultralytics, transformers, a plugin ...) takes one decorator in a module of
``fpn_zoo.convert``::

    from .dispatch import register_converter

    @register_converter("C2fNeck")            # the peer's class name, or the class itself
    def from_ultralytics_neck(peer: nn.Module, *, features=None) -> nn.Module:
        ...                                   # build the neck, load_exact(neck, renamed, "ultralytics C2fNeck")

Every module of the ``fpn_zoo.convert`` package is imported the first time :func:`from_module` dispatches,
so a new file registers itself without an import line anywhere; it must import its peer package (ultralytics,
transformers, mmdet, effdet) inside functions only, since ``import fpn_zoo.convert`` must not pull them in.
A module that fails to import is reported with a warning naming it, and the others keep working.

Dispatch walks the peer class's MRO: at each class, a converter registered for that exact type wins over one
registered by its name. Names are matched without the module, because parity tests load mmdet's neck files
from stand-in packages; register a type when two peers share a class name.

Example:
    >>> import torchvision
    >>> from fpn_zoo.convert import from_module
    >>> tv = torchvision.ops.FeaturePyramidNetwork([16, 32], 8)
    >>> neck = from_module(tv)
    >>> neck.feature_info.channels()
    [8, 8]
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

__all__ = ["from_module", "register_converter", "list_converters", "find_converter", "load_exact", "Converter"]

Converter = Callable[..., nn.Module]  # (peer, **hints) -> fpn_zoo neck with the peer's config and weights
Target = Union[str, type]

_CONVERTERS: Dict[Target, Converter] = {}
_discovered = False


def register_converter(*targets: Target, override: bool = False) -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of peer modules of these classes.

    Args:
        *targets: class names (``"FeaturePyramidNetwork"``) or classes.
        override: replace an existing registration on purpose.

    Raises:
        TypeError: a target that is neither a string nor a class, or no target.
        ValueError: a target registered already (without ``override``), naming both converters.
    """
    if not targets:
        raise TypeError("register_converter needs at least one class or class name")
    for target in targets:
        if not isinstance(target, (str, type)):
            raise TypeError(f"register_converter takes class names or classes, got {type(target).__name__}")

    def decorator(fn: Converter) -> Converter:
        for target in targets:
            existing = _CONVERTERS.get(target)
            if existing is not None and existing is not fn and not override:
                raise ValueError(f"a converter for {_label(target)} is registered already "
                                 f"({_qualname(existing)}); pass override=True to replace it with {_qualname(fn)}")
            _CONVERTERS[target] = fn
        return fn

    return decorator


def find_converter(peer_type: type) -> Optional[Converter]:
    """The converter for modules of ``peer_type`` (walking its MRO), or None."""
    _discover()
    for cls in peer_type.__mro__:
        for key in (cls, cls.__name__):
            if key in _CONVERTERS:
                return _CONVERTERS[key]
    return None


def list_converters() -> List[str]:
    """Labels of the peer classes a converter is registered for, sorted."""
    _discover()
    return sorted({_label(t) for t in _CONVERTERS})


def from_module(peer: nn.Module, **hints: Any) -> nn.Module:
    """Adopt a peer's neck module: an fpn_zoo neck with its configuration and weights, giving its outputs.

    The result has the peer's dtype, device and train/eval mode.

    Args:
        peer: a built neck of a supported library (:func:`list_converters`): torchvision
            ``FeaturePyramidNetwork``, mmdet ``FPN`` / ``PAFPN`` / ``ChannelMapper`` / ..., effdet ``BiFpn``.
        **hints: what the module does not record, passed to the converter; all take ``features`` (a timm
            model, ``feature_info``, ``FeatureSpec`` ...: the backbone levels, for true strides in
            ``feature_info``; default strides 8, 16, 32 ...).

    Raises:
        TypeError: ``peer`` is not an ``nn.Module``, or a hint the converter does not take.
        ValueError: no converter for the peer's class, or a configuration fpn_zoo does not reproduce (the
            message names the attribute).
    """
    if not isinstance(peer, nn.Module):
        raise TypeError(f"from_module takes a peer's neck module (an nn.Module), got {type(peer).__name__}")
    converter = find_converter(type(peer))
    if converter is None:
        raise ValueError(f"no fpn_zoo converter for {type(peer).__module__}.{type(peer).__qualname__}; "
                         f"supported: {', '.join(list_converters())}")
    return converter(peer, **hints)


def load_exact(neck: nn.Module, state: Mapping[str, torch.Tensor], owner: str) -> nn.Module:
    """Load ``state`` into ``neck`` when they correspond exactly (same keys, same shapes), else raise.

    Args:
        neck: the fpn_zoo neck.
        state: the peer's tensors under fpn_zoo's names.
        owner: the peer, for messages (``"torchvision FeaturePyramidNetwork"``).

    Returns:
        ``neck``.

    Raises:
        ValueError: tensors without a counterpart on either side, or a shape mismatch, named.
    """
    ours = neck.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or unexpected:
        raise ValueError(f"{owner}: state dicts do not correspond; fpn_zoo tensors with no peer tensor "
                         f"{missing}, peer tensors with no fpn_zoo tensor {unexpected}")
    for key, value in state.items():
        if ours[key].shape != value.shape:
            raise ValueError(f"{owner}: {key} is {tuple(value.shape)} in the peer, {tuple(ours[key].shape)} in fpn_zoo")
    neck.load_state_dict(state)
    return neck


def match_peer(neck: nn.Module, peer: nn.Module) -> nn.Module:
    """Give ``neck`` the peer's dtype, device and train/eval mode."""
    param = next(peer.parameters(), None)
    if param is not None:
        neck.to(device=param.device, dtype=param.dtype)
    return neck.train(peer.training)


def _discover() -> None:
    """Import every module of ``fpn_zoo.convert`` once, so their ``@register_converter`` run."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        try:
            importlib.import_module(f"{__package__}.{info.name}")
        except Exception as e:  # a broken converter must not take the others down
            warnings.warn(f"fpn_zoo converter module {__package__}.{info.name} failed to import and is skipped: "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=3)


def _label(target: Target) -> str:
    return target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"


def _qualname(fn: Converter) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
