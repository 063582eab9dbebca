"""Load weights you already have (torchvision, mmdet, effdet necks) into the matching fpn_zoo variant."""
from .effdet import from_effdet_bifpn
from .mmdet import from_mmdet_neck
from .torchvision import from_torchvision_fpn
from .transformers_rtdetr import from_transformers_rtdetr
from .transformers_upernet import from_transformers_upernet
from .ultralytics_yolo import from_ultralytics

__all__ = ["from_effdet_bifpn", "from_mmdet_neck", "from_torchvision_fpn", "from_transformers_rtdetr",
           "from_transformers_upernet", "from_ultralytics"]
