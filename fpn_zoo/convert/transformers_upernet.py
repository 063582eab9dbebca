"""Hugging Face transformers' ``UperNetHead`` -> the ``upernet`` neck with its configuration and weights.

:func:`from_transformers_upernet` takes an ``UperNetHead`` (or an ``UperNetForSemanticSegmentation``, whose
``decode_head`` it takes), reads its configuration from the head (input channels, ``hidden_size``, pool scales,
its conv modules), builds ``upernet`` and loads every weight up to the classifier with an exact key
correspondence. The classifier (``conv_seg`` in mmseg) is the segmentation head's, not the neck's: it is the one
peer tensor left out, always. transformers is never imported here.

Anything fpn_zoo does not reproduce (another norm or activation, conv biases, ``align_corners=True``) is a
``ValueError`` naming the attribute.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from .._features import FeatureSpec
from ..necks.upernet import UPerNetPyramid, upernet
from .dispatch import register_converter

__all__ = ["from_transformers_upernet"]

_RENAMES: List[Tuple[str, str]] = [
    (r"^psp_modules\.(\d+)\.1\.", r"ppm.branches.\1."), (r"^bottleneck\.", "ppm.bottleneck."),
    (r"^lateral_convs\.", "lateral."), (r"^fpn_convs\.", "smooth."), (r"^fpn_bottleneck\.", "fuse."),
]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_conv_module(module: nn.Module, where: str) -> float:
    """A conv-BN-ReLU ``UperNetConvModule``; returns its BatchNorm epsilon."""
    _require(type(module).__name__ == "UperNetConvModule", f"{where}: expected an UperNetConvModule, got "
                                                           f"{type(module).__name__}")
    conv, norm = module.conv, module.batch_norm
    k = conv.kernel_size[0]
    _require(conv.bias is None, f"{where}.conv.bias: a conv bias next to BatchNorm does not convert")
    _require(conv.kernel_size == (k, k) and conv.padding == (k // 2, k // 2) and conv.dilation == (1, 1)
             and conv.stride == (1, 1) and conv.groups == 1, f"{where}.conv: only 'same'-padded stride-1 convs convert")
    _require(type(norm) is nn.BatchNorm2d and norm.affine and norm.track_running_stats,
             f"{where}.batch_norm: {type(norm).__name__}; only an affine BatchNorm2d with running stats converts")
    _require(type(module.activation) is nn.ReLU, f"{where}.activation: {type(module.activation).__name__}; only "
                                                 "ReLU converts")
    return norm.eps


@register_converter("UperNetHead", "UperNetForSemanticSegmentation")
def from_transformers_upernet(head: nn.Module, features: Any = None, *, output: str = "fused") -> UPerNetPyramid:
    """Build the ``upernet`` neck equivalent to a transformers ``UperNetHead`` (without its classifier).

    The result has the head's dtype, device and train/eval mode.

    Args:
        head: an ``UperNetHead`` or ``UperNetForSemanticSegmentation``.
        features: the backbone levels it will run on (for the true strides); default strides 4, 8, 16, 32 ...
        output: ``"fused"`` (default: the map the head's classifier reads) or ``"pyramid"`` (the levels the head
            fuses; its ``fpn_bottleneck`` is then left out, deliberately).

    Raises:
        TypeError: not an UperNet head.
        ValueError: a configuration ``upernet`` does not reproduce (names the attribute).
    """
    head = getattr(head, "decode_head", head)
    if type(head).__name__ != "UperNetHead":
        raise TypeError(f"from_transformers_upernet takes an UperNetHead or UperNetForSemanticSegmentation, got "
                        f"{type(head).__name__}")
    _require(not head.align_corners and not head.psp_modules.align_corners,
             "UperNetHead.align_corners: only align_corners=False converts")
    modules = [("bottleneck", head.bottleneck), ("fpn_bottleneck", head.fpn_bottleneck)]
    modules += [(f"psp_modules.{i}.1", block.layers[1]) for i, block in enumerate(head.psp_modules.blocks)]
    modules += [(f"lateral_convs.{i}", m) for i, m in enumerate(head.lateral_convs)]
    modules += [(f"fpn_convs.{i}", m) for i, m in enumerate(head.fpn_convs)]
    eps = {_check_conv_module(m, f"UperNetHead.{where}") for where, m in modules}
    _require(len(eps) == 1, f"UperNetHead: BatchNorm epsilons differ {sorted(eps)}")
    scales = []
    for i, block in enumerate(head.psp_modules.blocks):
        pool = block.layers[0]
        _require(isinstance(pool, nn.AdaptiveAvgPool2d) and isinstance(pool.output_size, int),
                 f"UperNetHead.psp_modules.{i}.0: expected an AdaptiveAvgPool2d to a square size")
        scales.append(pool.output_size)
    channels = tuple(int(c) for c in head.in_channels)
    spec = FeatureSpec(channels, tuple(4 * 2 ** k for k in range(len(channels))))
    if features is not None:
        hint = FeatureSpec.resolve(features)
        _require(hint.channels == channels, f"from_transformers_upernet: features have channels "
                                            f"{list(hint.channels)}, but the head reads {list(channels)}")
        spec = hint
    neck = upernet(spec, out_channels=head.channels, pool_scales=scales, output=output,
                   norm_kwargs={"eps": eps.pop()})
    mapped: Dict[str, torch.Tensor] = {}
    for key, value in head.state_dict().items():
        if key.startswith("classifier.") or (output == "pyramid" and key.startswith("fpn_bottleneck.")):
            continue
        for pattern, replacement in _RENAMES:
            new, hits = re.subn(pattern, replacement, key)
            if hits:
                break
        else:
            raise ValueError(f"UperNetHead: parameter {key!r} has no fpn_zoo counterpart")
        mapped[new.replace(".batch_norm.", ".norm.")] = value
    ours = neck.state_dict()
    missing, unexpected = sorted(set(ours) - set(mapped)), sorted(set(mapped) - set(ours))
    _require(not missing and not unexpected, f"UperNetHead: state dicts do not correspond; fpn_zoo tensors with no "
                                             f"peer tensor {missing}, peer tensors with none here {unexpected}")
    for key, value in mapped.items():
        _require(ours[key].shape == value.shape, f"UperNetHead: {key} is {tuple(value.shape)} in the peer, "
                                                 f"{tuple(ours[key].shape)} here")
    param = next(head.parameters())
    neck.to(device=param.device, dtype=param.dtype)
    neck.load_state_dict(mapped)
    return neck.train(head.training)
