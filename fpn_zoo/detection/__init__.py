"""torchvision detectors from any timm backbone and any fpn_zoo neck.

Example:
    >>> import torch, fpn_zoo
    >>> model = fpn_zoo.create_detector("fcos", "resnet18", neck="fpn", num_classes=3,
    ...                                 neck_args={"out_channels": 32}, min_size=128, max_size=160)
    >>> model.backbone.level_names, model.size_ranges[0]
    (['p3', 'p4', 'p5'], (0.0, 128.0))
"""
from .anchors import (
    anchor_generator, fcos_anchor_sizes, fcos_size_ranges, rcnn_anchor_sizes, retinanet_anchor_sizes,
)
from .backbone import (
    TorchvisionBackbone, create_timm_backbone, freeze_backbone_stages, level_names, pooled_levels,
    torchvision_backbone,
)
from .factory import create_detector, list_detectors
from .fcos import FCOS, FCOSHead, fcos_head

__all__ = [
    "FCOS", "FCOSHead", "TorchvisionBackbone", "anchor_generator", "create_detector", "create_timm_backbone",
    "fcos_head",
    "fcos_anchor_sizes", "fcos_size_ranges", "freeze_backbone_stages", "level_names", "list_detectors",
    "pooled_levels", "rcnn_anchor_sizes", "retinanet_anchor_sizes", "torchvision_backbone",
]
