"""fpn_zoo: feature-pyramid necks for any timm ``features_only`` backbone.

Example:
    >>> import timm, torch, fpn_zoo
    >>> backbone = timm.create_model("resnet18", features_only=True, out_indices=(2, 3, 4), pretrained=False)
    >>> neck = fpn_zoo.create_neck("fpn", backbone, out_channels=64)
    >>> [f.shape[1:] for f in neck(backbone(torch.rand(1, 3, 64, 64)))]
    [torch.Size([64, 8, 8]), torch.Size([64, 4, 4]), torch.Size([64, 2, 2])]
"""
from . import necks  # noqa: F401  (registers the built-in families, as timm's models/__init__ imports its models)
from ._factory import BackboneWithNeck, create_model, create_neck
from ._features import BackboneMismatch, FeatureSpec
from ._registry import (
    NeckCfg, get_topology, is_neck, list_families, list_necks, list_topologies, neck_cfg, register_neck,
    register_topology, register_variant,
)
from .graph import GraphNeck, Node, Topology
from .inference import InferenceNeck, accelerate
from .layers.fold import fold_batchnorm, fuse_batchnorm

__version__ = "0.1.0"


def __getattr__(name: str):
    # torchvision's detection models load only when a detector is asked for: `import fpn_zoo` stays light.
    if name in ("create_detector", "detection"):
        import importlib

        detection = importlib.import_module(".detection", __name__)
        return detection if name == "detection" else detection.create_detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackboneMismatch", "BackboneWithNeck", "FeatureSpec", "GraphNeck", "InferenceNeck", "accelerate", "NeckCfg", "Node", "Topology", "create_detector", "create_model", "create_neck", "detection", "fold_batchnorm", "fuse_batchnorm",
    "get_topology", "is_neck", "list_families", "list_necks", "list_topologies", "neck_cfg", "register_neck",
    "register_topology", "register_variant", "__version__",
]
