"""``create_detector``: a torchvision detector from any timm backbone and any fpn_zoo neck, in one call."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Union

from torch import nn
from torchvision.models import detection as tvd
from torchvision.ops import MultiScaleRoIAlign

from .._factory import create_model
from .._utils import close_matches
from .anchors import (
    anchor_generator, fcos_anchor_sizes, fcos_size_ranges, rcnn_anchor_sizes, retinanet_anchor_sizes,
)
from .backbone import TorchvisionBackbone, create_timm_backbone, fixed_size_keyword, freeze_backbone_stages
from .fcos import FCOS, fcos_head

__all__ = ["create_detector", "list_detectors"]

# kind -> (smallest backbone stride fed to the neck by default, as the paper's recipe)
_KINDS: Dict[str, int] = {"fasterrcnn": 4, "maskrcnn": 4, "keypointrcnn": 4, "retinanet": 8, "fcos": 8}
_RCNN = ("fasterrcnn", "maskrcnn", "keypointrcnn")


def list_detectors() -> list:
    """The detector kinds :func:`create_detector` builds."""
    return list(_KINDS)


def _kind(kind: Any) -> str:
    if not isinstance(kind, str):
        raise TypeError(f"detector kind must be a string such as 'retinanet', got {type(kind).__name__}")
    key = kind.lower().replace("_", "").replace("-", "")
    if key not in _KINDS:
        raise ValueError(f"unknown detector kind {kind!r}{close_matches(key, _KINDS)} (known: {', '.join(_KINDS)})")
    return key


def _features_model(
    backbone: Union[str, nn.Module], kind: str, pretrained: bool, out_indices: Optional[Sequence[int]],
    backbone_args: Dict[str, Any],
) -> nn.Module:
    if isinstance(backbone, nn.Module):
        if out_indices is not None or backbone_args or pretrained:
            raise TypeError(
                "out_indices, backbone_args and pretrained_backbone only apply when backbone is a timm name; "
                "a built model is used as it is"
            )
        if not hasattr(getattr(backbone, "feature_info", None), "channels"):  # a classifier has a plain list
            raise TypeError(
                f"{type(backbone).__name__} has no feature_info: create the backbone with "
                "timm.create_model(..., features_only=True), or pass its name"
            )
        key = fixed_size_keyword(backbone)
        if key is not None:
            raise ValueError(
                f"this {type(backbone).__name__} only takes the image size it was built for, but a detector "
                f"resizes images to min_size/max_size: build it with timm.create_model(..., {key}=True), "
                "or pass the model's name"
            )
        return backbone
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a timm model name or a features_only model, got {type(backbone).__name__}")
    if out_indices is not None:
        return create_timm_backbone(backbone, pretrained=pretrained, out_indices=tuple(out_indices), **backbone_args)
    if "out_indices" in backbone_args:
        return create_timm_backbone(backbone, pretrained=pretrained, **backbone_args)
    # Default levels: the paper's (C2-C5 for the R-CNNs, C3-C5 for the one-stage detectors).
    model = create_timm_backbone(backbone, pretrained=False, **backbone_args)
    reductions = model.feature_info.reduction()
    indices = list(model.feature_info.out_indices)
    keep = [i for i, r in zip(indices, reductions) if r >= _KINDS[kind]]
    if len(set(reductions)) > 1 and keep and keep != indices:
        return create_timm_backbone(backbone, pretrained=pretrained, out_indices=tuple(keep), **backbone_args)
    return create_timm_backbone(backbone, pretrained=True, **backbone_args) if pretrained else model


def _body(features: nn.Module, neck: str, neck_args: Dict[str, Any]) -> nn.Module:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        body = create_model(features, neck=neck, neck_args=neck_args)
    strides = list(body.feature_info.reduction())
    in_strides = list(features.feature_info.reduction())
    single = len(in_strides) > 1 and len(set(in_strides)) == 1
    if (single and len(set(strides)) < len(strides)) or (len(strides) > 1 and len(set(strides)) == 1):
        raise ValueError(
            f"neck {neck!r} on this backbone builds no pyramid: its levels have strides {strides}, the backbone's "
            f"are all {in_strides[0]} (a plain ViT?). Use neck='simple_pyramid_fpn' (or 'simple_pyramid', "
            "'simple_pyramid_bifpn'), which builds strides 4-32 from its last map"
        )
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return body


def create_detector(
    kind: str,
    backbone: Union[str, nn.Module],
    neck: str = "fpn",
    *,
    num_classes: int = 91,
    pretrained_backbone: bool = False,
    trainable_backbone_layers: Optional[int] = None,
    frozen_bn: Optional[bool] = None,
    out_indices: Optional[Sequence[int]] = None,
    backbone_args: Optional[Dict[str, Any]] = None,
    neck_args: Optional[Dict[str, Any]] = None,
    head_channels: Optional[int] = None,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision detector with a timm backbone and an fpn_zoo neck.

    Anchors follow the neck's actual strides and level count (one size per level: 8 x stride for the
    R-CNNs as torchvision's 32..512 at strides 4..64, 4 x stride at octave scales 2^0, 2^(1/3), 2^(2/3) for
    RetinaNet, the stride for FCOS, all with aspect ratios 0.5 / 1 / 2 except FCOS); RoIs are pooled from
    every level but a parameter-free max-pool extra (torchvision's recipe); FCOS assigns boxes to levels by
    the paper's ranges scaled to the strides (:func:`~fpn_zoo.detection.anchors.fcos_size_ranges`).

    Args:
        kind: ``"fasterrcnn"``, ``"maskrcnn"``, ``"keypointrcnn"``, ``"retinanet"`` or ``"fcos"``.
        backbone: a timm model name (built ``features_only``, at any image size: ``dynamic_img_size=True`` for
            ViT / swin / EVA ...), or a built ``features_only`` model (used as it is).
        neck: a registered neck variant (:func:`fpn_zoo.list_necks`).
        num_classes: torchvision's convention: the R-CNNs count the background class, RetinaNet / FCOS not.
        pretrained_backbone: load timm's pretrained weights (needs network).
        trainable_backbone_layers: how many of the backbone's last feature stages train (resnet: 0-5, as
            torchvision's); default: all, or 3 with ``pretrained_backbone`` (torchvision's default).
        frozen_bn: swap the backbone's BatchNorms for frozen ones; default: when the backbone is pretrained or
            ``trainable_backbone_layers`` is given.
        out_indices: backbone stages feeding the neck; default: those at stride >= 4 (R-CNNs) or >= 8
            (RetinaNet, FCOS), as the papers.
        backbone_args: more ``timm.create_model`` arguments (``{"drop_path_rate": 0.1}``).
        neck_args: neck overrides (``{"out_channels": 128}``).
        head_channels: a 1x1 projection after the neck to this width on every level, so the head's width does
            not follow the neck's (and a neck with mixed widths can be used).
        **kwargs: torchvision detector arguments (``min_size``, ``max_size``, ``image_mean``,
            ``score_thresh``, ``anchor_generator`` ...); FCOS also takes ``size_ranges`` (one ``(low, high)``
            per level) or ``size_range_scale`` (multiplies the paper's ranges; ~0.25 on 128 px images).

    Returns:
        The torchvision detector; ``model.backbone`` is a :class:`TorchvisionBackbone`.

    Raises:
        ValueError: unknown kind (with close matches), ``num_classes < 1``, a neck that builds no pyramid,
            a neck with mixed widths and no ``head_channels``; :class:`fpn_zoo.BackboneMismatch` when the neck
            declines the backbone.

    Example:
        >>> import torch, fpn_zoo
        >>> model = fpn_zoo.create_detector("retinanet", "resnet18", neck="fpn_p6p7", num_classes=3,
        ...                                 neck_args={"out_channels": 32}, min_size=128, max_size=160)
        >>> model.backbone.level_names
        ['p3', 'p4', 'p5', 'p6', 'p7']
    """
    kind = _kind(kind)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    fcos_keys = {k: kwargs.pop(k) for k in ("size_ranges", "size_range_scale") if k in kwargs}
    if fcos_keys and kind != "fcos":
        raise ValueError(f"{', '.join(fcos_keys)} only apply to kind='fcos', not {kind!r}")
    features = _features_model(backbone, kind, pretrained_backbone, out_indices, dict(backbone_args or {}))
    if trainable_backbone_layers is None and pretrained_backbone:
        trainable_backbone_layers = 3
    if frozen_bn is None:
        frozen_bn = pretrained_backbone or trainable_backbone_layers is not None
    if trainable_backbone_layers is not None or frozen_bn:
        n = len(getattr(features.feature_info, "info", [])) or 1
        layers = n if trainable_backbone_layers is None else trainable_backbone_layers
        features = freeze_backbone_stages(features, layers, frozen_bn=frozen_bn)

    tv_backbone = TorchvisionBackbone(_body(features, neck, dict(neck_args or {})), head_channels=head_channels)
    strides = tv_backbone.strides
    return _BUILDERS[kind](tv_backbone, num_classes, strides, kwargs, fcos_keys)


def _roi_pool(backbone: TorchvisionBackbone, size: int) -> MultiScaleRoIAlign:
    return MultiScaleRoIAlign(featmap_names=list(backbone.roi_level_names), output_size=size, sampling_ratio=2)


def _rcnn(cls: Callable[..., nn.Module], roi_key: Optional[str]) -> Callable[..., nn.Module]:
    def build(backbone, num_classes, strides, kwargs, _fcos):
        kwargs.setdefault("rpn_anchor_generator", anchor_generator(rcnn_anchor_sizes(strides)))
        kwargs.setdefault("box_roi_pool", _roi_pool(backbone, 7))
        if roi_key is not None:
            kwargs.setdefault(roi_key, _roi_pool(backbone, 14))
        return cls(backbone, num_classes=num_classes, **kwargs)
    return build


def _retinanet(backbone, num_classes, strides, kwargs, _fcos):
    kwargs.setdefault("anchor_generator", anchor_generator(retinanet_anchor_sizes(strides)))
    return tvd.RetinaNet(backbone, num_classes=num_classes, **kwargs)


def _fcos(backbone, num_classes, strides, kwargs, fcos_keys):
    kwargs.setdefault("anchor_generator", anchor_generator(fcos_anchor_sizes(strides), (1.0,)))
    kwargs.setdefault("head", fcos_head(backbone.out_channels, num_classes))
    ranges = fcos_keys.get("size_ranges")
    if ranges is None:
        ranges = fcos_size_ranges(strides, fcos_keys.get("size_range_scale", 1.0))
    return FCOS(backbone, num_classes, size_ranges=ranges, **kwargs)


_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    "fasterrcnn": _rcnn(tvd.FasterRCNN, None),
    "maskrcnn": _rcnn(tvd.MaskRCNN, "mask_roi_pool"),
    "keypointrcnn": _rcnn(tvd.KeypointRCNN, "keypoint_roi_pool"),
    "retinanet": _retinanet,
    "fcos": _fcos,
}
