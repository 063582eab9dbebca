"""Building necks by name, and backbone + neck models that look like timm ``features_only`` models."""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ._backbones import create_features_model
from ._features import FeatureSpec
from ._registry import Family, check_family_args, get_family, neck_cfg
from .necks.chain import neck_builder

__all__ = ["create_neck", "create_model", "BackboneWithNeck"]


def create_neck(
    name: str,
    features: Any,
    *,
    reductions: Optional[Sequence[int]] = None,
    input_fmt: Optional[str] = None,
    **overrides: Any,
) -> nn.Module:
    """Build the neck variant ``name`` for a backbone's features.

    Args:
        name: a registered variant (see :func:`fpn_zoo.list_necks`).
        features: a timm ``features_only`` model (preferred: its layout is read too), its ``feature_info``,
            a list of ``{num_chs, reduction}`` dicts, a :class:`FeatureSpec`, or a list of channels.
        reductions: strides for a plain channel list.
        input_fmt: ``"NCHW"`` / ``"NHWC"`` when ``features`` cannot tell.
        **overrides: family arguments replacing the variant's (``out_channels=128``, ``norm="batchnorm"``).

    Returns:
        A module mapping a list of feature maps to a list of NCHW maps, with ``feature_info`` and
        ``neck_cfg`` attributes.

    Example:
        >>> import torch, fpn_zoo
        >>> neck = fpn_zoo.create_neck("fpn", [64, 128, 256], out_channels=32)
        >>> [f.shape[1] for f in neck([torch.rand(1, c, s, s) for c, s in ((64, 32), (128, 16), (256, 8))])]
        [32, 32, 32]

    Raises:
        ValueError: unknown name or argument (with close matches), or arguments the family rejects.
        TypeError: ``features`` is of no known kind, or the family (e.g. a plugin's) returned something that is
            not a neck with a timm-style ``feature_info``.

    Warnings:
        A warning the family gives while building is re-issued as ``neck 'NAME': ...`` (same category),
        pointing at the line that called ``create_neck``.
    """
    cfg = neck_cfg(name)
    check_family_args(cfg.family, overrides, f"neck {name!r} (family {cfg.family!r})")
    spec = FeatureSpec.resolve(features, reductions, input_fmt)
    args = {**cfg.args, **overrides}
    neck = _build(name, get_family(cfg.family), spec, args)
    neck.neck_cfg = replace(cfg, args=args)
    return neck


def _build(name: str, family: Family, spec: FeatureSpec, args: Dict[str, Any]) -> nn.Module:
    """Run the family builder, naming the variant in its warnings and checking it returned a neck."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with neck_builder(create_neck):  # a family composing necks (``then``) builds the second one with this
            neck = family.builder(spec, **args)
    for w in caught:  # outside catch_warnings: the user's filters apply again
        warnings.warn(f"neck {name!r}: {w.message}", w.category, stacklevel=3)
    info = getattr(neck, "feature_info", None)
    if not isinstance(neck, nn.Module) or not (callable(getattr(info, "channels", None))
                                               and callable(getattr(info, "reduction", None))):
        raise TypeError(
            f"neck family {family.name!r} (from {family.source}) returned {type(neck).__name__}, not a neck: "
            "a family must return an nn.Module with a timm-style feature_info (channels(), reduction())"
        )
    return neck


class BackboneWithNeck(nn.Module):
    """A timm ``features_only`` backbone followed by a neck; looks like a ``features_only`` model itself.

    ``forward(images)`` returns the neck's list of NCHW maps, and ``feature_info`` describes them.
    """

    output_fmt = "NCHW"

    def __init__(self, backbone: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.feature_info = neck.feature_info

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.neck(self.backbone(x))


def create_model(
    backbone: Union[str, nn.Module],
    neck: str = "fpn",
    *,
    out_indices: Optional[Sequence[int]] = None,
    pretrained: bool = False,
    neck_args: Optional[dict] = None,
    **backbone_kwargs: Any,
) -> BackboneWithNeck:
    """A timm backbone (``features_only``) with the neck ``neck`` on top, as one module.

    Args:
        backbone: a timm model name (built to take any image size: ``dynamic_img_size=True`` for ViT, swin,
            EVA ...; pass ``dynamic_img_size=False`` to keep timm's fixed size), or an already built
            ``features_only`` model (used as it is).
        neck: a registered neck variant.
        out_indices: which backbone stages feed the neck (timm's default: all of them).
        pretrained: load the backbone's pretrained weights (needs network; off by default).
        neck_args: overrides for the neck (``{"out_channels": 128}``).
        **backbone_kwargs: passed on to ``timm.create_model``.

    Example:
        >>> import torch, fpn_zoo
        >>> model = fpn_zoo.create_model("resnet18", neck="pan", out_indices=(2, 3, 4), neck_args={"out_channels": 64})
        >>> model.feature_info.reduction()
        [8, 16, 32]
    """
    if isinstance(backbone, str):
        if out_indices is not None:
            backbone_kwargs["out_indices"] = tuple(out_indices)
        model = create_features_model(backbone, pretrained=pretrained, **backbone_kwargs)
    elif isinstance(backbone, nn.Module):
        if out_indices is not None or backbone_kwargs:
            raise TypeError("out_indices and backbone keyword arguments only apply when backbone is a name")
        model = backbone
    else:
        raise TypeError(f"backbone must be a timm model name or a features_only model, got {type(backbone).__name__}")
    return BackboneWithNeck(model, create_neck(neck, model, **(neck_args or {})))
