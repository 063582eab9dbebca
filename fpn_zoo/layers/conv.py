"""Conv-norm-act blocks and the resolution of norm / act arguments.

Norm and activation layers are named the way timm names them (``"batchnorm"``, ``"groupnorm"``,
``"relu"``, ``"leaky_relu"``, ``"silu"``/``"swish"`` ...), or given as a class / factory, or ``None``.
The lookup itself is timm's (:func:`timm.layers.get_norm_layer`, :func:`timm.layers.get_act_layer`); this
module only turns their failures into a clear error that names the bad value and its close matches.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Optional, Union

from torch import nn

from .._utils import close_matches

__all__ = ["LayerSpec", "ConvNormAct", "SeparableConvNormAct", "conv_block", "resolve_norm", "resolve_act"]

LayerSpec = Union[str, type, Callable[..., nn.Module], None]


def _known_acts() -> list[str]:
    try:
        from timm.layers.create_act import _ACT_LAYER_DEFAULT  # private: only used for suggestions
        return sorted(_ACT_LAYER_DEFAULT)
    except ImportError:  # pragma: no cover - older / newer timm
        return []


def _known_norms() -> list[str]:
    try:
        from timm.layers.create_norm import _NORM_MAP  # private: only used for suggestions
        return sorted(_NORM_MAP)
    except ImportError:  # pragma: no cover
        return []


def _lookup(kind: str, spec: LayerSpec, timm_getter: str, known: Callable[[], list]) -> Optional[Callable[..., nn.Module]]:
    """A layer class/factory from a name (through timm), a class or factory (as is), or None."""
    if spec is None or spec == "" or spec == "none":
        return None
    if isinstance(spec, str):
        import timm.layers

        try:
            layer = getattr(timm.layers, timm_getter)(spec)
        except (KeyError, ValueError, AssertionError):
            layer = None
        if layer is None:
            raise ValueError(f"unknown {kind} {spec!r}{close_matches(spec, known())}")
        return layer
    if callable(spec):
        return spec
    raise TypeError(f"{'act' if kind == 'activation' else kind} must be a name, a class, a factory or None, "
                    f"got {type(spec).__name__}")


def resolve_act(
    act: LayerSpec, act_kwargs: Optional[Mapping[str, Any]] = None, *, inplace: bool = False
) -> Optional[Callable[[], nn.Module]]:
    """Turn ``act`` (name, class, factory or None) into a zero-argument factory, or None.

    Args:
        act: a timm activation name, a class or factory, or None.
        act_kwargs: extra arguments of the layer.
        inplace: build layers that work in place where the layer supports it (as timm's
            ``create_act_layer(..., inplace=True)``). Only safe where the activation's input is a tensor no
            one else reads: right after a conv or norm, never at the start of a block whose input is a map
            other nodes (or the caller) still use.

    Raises:
        ValueError: an unknown activation name (with close matches).
        TypeError: ``act`` is neither a string, a callable nor None.
    """
    layer = _lookup("activation", act, "get_act_layer", _known_acts)
    return None if layer is None else partial(_make_act, layer, dict(act_kwargs or {}), inplace)


def _make_act(layer: Callable[..., nn.Module], kwargs: dict, inplace: bool) -> nn.Module:
    try:
        return layer(inplace=inplace, **kwargs)
    except TypeError:  # the layer has no in-place mode (GELU ...), or act_kwargs set it already
        return layer(**kwargs)


def resolve_norm(norm: LayerSpec, norm_kwargs: Optional[Mapping[str, Any]] = None) -> Optional[Callable[[int], nn.Module]]:
    """Turn ``norm`` (name, class, factory or None) into a factory taking the channel count, or None.

    Raises:
        ValueError: an unknown norm name (with close matches).
        TypeError: ``norm`` is neither a string, a callable nor None.
    """
    layer = _lookup("norm", norm, "get_norm_layer", _known_norms)
    return None if layer is None else partial(layer, **dict(norm_kwargs or {}))


class ConvNormAct(nn.Sequential):
    """``conv -> norm -> act``, padding from the kernel, bias only when there is no norm.

    Children are named ``conv``, ``norm``, ``act`` (the state-dict names are part of the API). The conv is a
    plain ``nn.Conv2d``: oneDNN (or the compiler) chooses the algorithm, so the math is the peers'.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
        act_layer: Optional[Callable[[], nn.Module]] = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
            groups=groups, bias=norm_layer is None,
        )
        if norm_layer is not None:
            self.norm = norm_layer(out_channels)
        if act_layer is not None:
            self.act = act_layer()


class SeparableConvNormAct(nn.Sequential):
    """Depthwise ``k x k`` conv, pointwise ``1 x 1`` conv, then norm and act (MobileNet / EfficientDet).

    Children: ``conv_dw``, ``conv_pw``, ``norm``, ``act``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
        act_layer: Optional[Callable[[], nn.Module]] = None,
    ) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride=stride, padding=kernel_size // 2,
            groups=in_channels, bias=False,
        )
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=norm_layer is None)
        if norm_layer is not None:
            self.norm = norm_layer(out_channels)
        if act_layer is not None:
            self.act = act_layer()


def conv_block(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    *,
    separable: bool = False,
    norm_layer: Optional[Callable[[int], nn.Module]] = None,
    act_layer: Optional[Callable[[], nn.Module]] = None,
) -> nn.Module:
    """A plain or depthwise-separable conv block (1x1 convs are never made separable)."""
    if separable and kernel_size > 1:
        return SeparableConvNormAct(in_channels, out_channels, kernel_size, stride, norm_layer, act_layer)
    return ConvNormAct(in_channels, out_channels, kernel_size, stride, norm_layer=norm_layer, act_layer=act_layer)


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)

