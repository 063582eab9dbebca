"""The built-in families; importing this package registers them."""
from . import fpn, pan  # noqa: F401
from . import bifpn, graph_family  # noqa: F401
from . import chain, csp_pan, simple_pyramid  # noqa: F401
from . import channel_mapper  # noqa: F401
from . import hrfpn  # noqa: F401
from . import bfp  # noqa: F401
from . import ssh  # noqa: F401
from . import dilated_encoder  # noqa: F401
from . import yolov3_neck  # noqa: F401
from . import ssd_neck  # noqa: F401
from . import centernet_neck  # noqa: F401
from . import fpn_dropblock  # noqa: F401
from . import csp_pafpn  # noqa: F401
from . import fpg  # noqa: F401

from . import yolo_pan  # noqa: F401
from . import rtdetr_encoder  # noqa: F401
from . import deformable_detr_encoder  # noqa: F401
from . import upernet  # noqa: F401
from . import fpn_carafe  # noqa: F401
from . import dyhead  # noqa: F401
from . import nasfcos_fpn  # noqa: F401
from . import single_level  # noqa: F401

__all__ = [
    "fpn", "pan", "bifpn", "graph_family", "chain", "csp_pan", "simple_pyramid", "channel_mapper", "hrfpn", "bfp", "ssh", "dilated_encoder", "yolov3_neck", "ssd_neck", "centernet_neck", "fpn_dropblock", "csp_pafpn", "fpg", "yolo_pan", "rtdetr_encoder", "deformable_detr_encoder", "upernet", "fpn_carafe", "dyhead", "nasfcos_fpn", "single_level",
]
