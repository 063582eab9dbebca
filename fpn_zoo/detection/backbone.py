"""A backbone + neck with torchvision's detection contract, and timm backbones built for any image size.

torchvision's detectors (``FasterRCNN``, ``MaskRCNN``, ``KeypointRCNN``, ``RetinaNet``, ``FCOS``) want a
backbone module with an int ``out_channels`` (one width for every level) whose ``forward`` returns an
``OrderedDict`` of NCHW maps. :class:`TorchvisionBackbone` gives that to any
:class:`fpn_zoo.BackboneWithNeck` (or any module returning a list of maps and carrying a timm-style
``feature_info``), naming each level ``p{log2(stride)}`` (``p3``..``p7``) as the FPN paper does.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._backbones import create_features_model, fixed_size_keyword

__all__ = [
    "TorchvisionBackbone", "torchvision_backbone", "level_names", "pooled_levels", "create_timm_backbone",
    "fixed_size_keyword", "freeze_backbone_stages",
]

# timm keywords that let a fixed-input-size model (ViT, EVA, swin, ...) take any image size, in the order
# they are tried; a model whose constructor does not know one is rebuilt without it.


def level_names(reductions: Sequence[float]) -> List[str]:
    """Stable names for pyramid levels: ``p{round(log2(stride))}`` (``p3`` for stride 8).

    Levels that round to the same name (two maps at one stride) get a suffix: ``p4``, ``p4_1``.
    """
    names: List[str] = []
    for r in reductions:
        base = f"p{round(math.log2(r))}"
        name, k = base, 0
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


def _neck_args(neck: nn.Module) -> Dict[str, Any]:
    cfg = getattr(neck, "neck_cfg", None)
    args = dict(getattr(cfg, "args", None) or {})
    then_args = args.get("then_args")
    if args.get("then") and isinstance(then_args, dict):  # a chained neck: its top neck makes the extras
        args = {**args, **{k: v for k, v in then_args.items() if k.startswith("extra")}}
    return args


def pooled_levels(neck: nn.Module) -> int:
    """How many of ``neck``'s coarsest levels are a parameter-free pooling of its last output.

    These are torchvision's ``LastLevelMaxPool`` P6 (``extra_op`` ``subsample``/``maxpool`` from the output,
    outside the fusion graph): Mask R-CNN's recipe pools RoIs from every level but them.
    """
    args = _neck_args(neck)
    n = int(args.get("extra_levels") or 0)
    if n <= 0 or args.get("extra_op", "subsample") not in ("subsample", "maxpool"):
        return 0
    if args.get("extra_source", "output") != "output" or args.get("extra_in_graph"):
        return 0
    return n


class TorchvisionBackbone(nn.Module):
    """A backbone + neck seen as a torchvision detection backbone.

    Args:
        body: a :class:`fpn_zoo.BackboneWithNeck` (or any module mapping images to a list of NCHW maps, with a
            timm-style ``feature_info``).
        head_channels: if set, a 1x1 conv per level projects the neck's maps to this width, so the detection
            head's width (and cost) does not follow the neck's; also makes a neck with mixed widths usable.

    Attributes:
        out_channels: the width of every level (torchvision reads it to build its heads).
        strides: each level's stride relative to the image.
        level_names: the keys of the returned ``OrderedDict`` (``["p2", "p3", ...]``).
        roi_level_names: the levels RoIs are pooled from: all but the parameter-free max-pool extras.

    Raises:
        ValueError: the neck's levels have different widths and ``head_channels`` is not set.
        TypeError: ``body`` has no ``feature_info``.
        ValueError: ``body`` was built for one image size (timm's ``dynamic_img_size=False``).
    """

    def __init__(self, body: nn.Module, head_channels: Optional[int] = None) -> None:
        super().__init__()
        info = getattr(body, "feature_info", None)
        if info is None or not hasattr(info, "channels"):
            raise TypeError(
                f"{type(body).__name__} has no timm-style feature_info: pass a model built by "
                "fpn_zoo.create_model (a BackboneWithNeck)"
            )
        key = fixed_size_keyword(body)
        if key is not None:
            raise ValueError(
                "this backbone only takes the image size it was built for, but a detector resizes images to "
                f"min_size/max_size: build it with {key}=True (fpn_zoo.create_model(name, ..., {key}=True))"
            )
        channels = [int(c) for c in info.channels()]
        self.strides: List[float] = list(info.reduction())
        self.body = body
        self.level_names = level_names(self.strides)
        if head_channels is None:
            if len(set(channels)) != 1:
                raise ValueError(
                    f"torchvision detectors need one width for every level, but this neck's levels have widths "
                    f"{channels} ({', '.join(f'{n}: {c}' for n, c in zip(self.level_names, channels))}); "
                    "pass head_channels=C to project every level to C channels"
                )
            self.proj: Optional[nn.ModuleList] = None
            self.out_channels = channels[0]
        else:
            if isinstance(head_channels, bool) or not isinstance(head_channels, int) or head_channels < 1:
                raise ValueError(f"head_channels must be a positive int, got {head_channels!r}")
            self.proj = nn.ModuleList(nn.Conv2d(c, head_channels, 1) for c in channels)
            self.out_channels = head_channels
        neck = getattr(body, "neck", body)
        n_pooled = min(pooled_levels(neck), len(self.level_names) - 1)
        self.roi_level_names = self.level_names[: len(self.level_names) - n_pooled]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        if self.proj is not None:
            feats = [p(f) for p, f in zip(self.proj, feats)]
        return OrderedDict(zip(self.level_names, feats))


def torchvision_backbone(body: nn.Module, head_channels: Optional[int] = None) -> TorchvisionBackbone:
    """Give a backbone + neck (:func:`fpn_zoo.create_model`) torchvision's detection-backbone contract.

    Example:
        >>> import torch, fpn_zoo
        >>> body = fpn_zoo.create_model("resnet18", neck="fpn", out_indices=(2, 3, 4), neck_args={"out_channels": 32})
        >>> backbone = fpn_zoo.detection.torchvision_backbone(body)
        >>> backbone.out_channels, list(backbone(torch.rand(1, 3, 64, 96)))
        (32, ['p3', 'p4', 'p5'])
    """
    return TorchvisionBackbone(body, head_channels=head_channels)


def create_timm_backbone(name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """:func:`fpn_zoo._backbones.create_features_model`: a timm ``features_only`` model of any image size
    (a detector's transform resizes images to ``min_size``/``max_size``)."""
    return create_features_model(name, pretrained=pretrained, **kwargs)


def _stage_of_params(backbone: nn.Module) -> Tuple[List[nn.Parameter], List[int], int]:
    """Each parameter of a timm ``features_only`` model with the index of the feature stage it belongs to.

    Stages are the model's ``feature_info`` entries (resnet: stem, layer1..layer4, as torchvision counts);
    parameters before the first stage's module belong to stage 0, after the last one to the last stage.
    """
    info = getattr(backbone, "feature_info", None)
    modules = [d["module"] for d in getattr(info, "info", [])] if info is not None else []
    named = list(backbone.named_parameters())
    if not modules or not named:
        return [p for _, p in named], [0] * len(named), 1

    def belongs(pname: str, module: str) -> bool:
        dotted = "." + pname
        return any(f".{m}." in dotted for m in {module, module.replace(".", "_")})

    starts: List[Optional[int]] = []
    for module in modules:
        idx = [i for i, (n, _) in enumerate(named) if belongs(n, module)]
        starts.append(min(idx) if idx else None)
    stages: List[int] = []
    for i in range(len(named)):
        stage = 0
        for s, start in enumerate(starts):
            if start is not None and i >= start:
                stage = s
        stages.append(stage)
    return [p for _, p in named], stages, len(modules)


def freeze_backbone_stages(backbone: nn.Module, trainable_layers: int, frozen_bn: bool = True) -> nn.Module:
    """Freeze all but the last ``trainable_layers`` feature stages of a timm ``features_only`` model.

    As torchvision's ``trainable_backbone_layers``: stages are counted from the end (resnet: ``layer4``,
    ``layer3``, ``layer2``, ``layer1``, then the stem), 0 freezes the whole backbone. ``frozen_bn`` swaps every
    BatchNorm for a frozen one (timm's ``freeze_batch_norm_2d``), as torchvision does for pretrained backbones.

    Returns:
        The model, changed in place (or a new one if it was itself a BatchNorm).

    Raises:
        ValueError: ``trainable_layers`` is not in ``[0, number of stages]``.
    """
    params, stages, n = _stage_of_params(backbone)
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= n:
        raise ValueError(
            f"trainable_backbone_layers must be an int in [0, {n}] (this backbone has {n} stages), "
            f"got {trainable_layers!r}"
        )
    first_trainable = n - trainable_layers
    for p, s in zip(params, stages):
        if s < first_trainable:
            p.requires_grad_(False)
    if frozen_bn:
        from timm.layers import freeze_batch_norm_2d

        backbone = freeze_batch_norm_2d(backbone)
    return backbone
