"""Adopt peers' necks: :func:`from_module` turns a torchvision, mmdet, effdet, ultralytics or transformers neck module into the fpn_zoo
neck with its configuration and weights (outputs equal to the peer's); the ``from_*`` functions rename state
dicts (checkpoints) for a neck you build. New converters register with :func:`register_converter`
(see :mod:`fpn_zoo.convert.dispatch`)."""
from .dispatch import find_converter, from_module, list_converters, load_exact, register_converter
from .effdet import from_effdet_bifpn, from_effdet_module
from .mmdet import from_mmdet_neck, from_mmdet_fpn_module
from .mmdet_families import from_mmdet_module
from .torchvision import from_torchvision_fpn, from_torchvision_module
from .transformers_deformable_detr import from_transformers_deformable_detr
from .transformers_rtdetr import from_transformers_rtdetr
from .transformers_upernet import from_transformers_upernet
from .ultralytics_yolo import from_ultralytics

__all__ = [
    "from_module", "register_converter", "list_converters", "find_converter", "load_exact",
    "from_effdet_bifpn", "from_effdet_module", "from_mmdet_neck", "from_mmdet_fpn_module", "from_mmdet_module",
    "from_torchvision_fpn", "from_torchvision_module", "from_transformers_deformable_detr",
    "from_transformers_rtdetr", "from_transformers_upernet",
    "from_ultralytics",
]
