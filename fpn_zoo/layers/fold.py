"""Inference-time folding of BatchNorm into the conv before it.

A neck in ``eval()`` computes ``bn(conv(x))`` with fixed statistics, which is one affine conv. Folding drops
a full pass over every feature map per norm. It works on any module tree: wherever a container holds a
``BatchNorm2d`` right after a child whose last operation is a ``Conv2d`` (a conv, or a block such as a
separable conv ending in its pointwise conv), the norm is folded into that conv and replaced by
``nn.Identity``. Families need no code of their own for it.

Names: "fold" is BatchNorm folding; "fusion" (``fpn_zoo.layers.fusion``) is how a node combines its inputs.
``fuse_batchnorm`` is kept as an alias of :func:`fold_batchnorm` (its name in fpn_zoo 0.1.0).
"""
from __future__ import annotations

from typing import Optional

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["fold_batchnorm", "fuse_batchnorm"]


def _last_conv(module: nn.Module) -> Optional[nn.Conv2d]:
    """The conv whose output ``module`` returns unchanged, if there is one."""
    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, nn.Sequential) and len(module) > 0:
        return _last_conv(module[-1])
    return None


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every foldable ``BatchNorm2d`` into its conv, in place; returns ``module`` in eval mode.

    The state dict changes (norms go, convs gain biases): fold a copy for deployment, not a training model.

    Example:
        >>> import copy, fpn_zoo
        >>> neck = fpn_zoo.create_neck("fpn_bn_lrelu_64", [16, 32])
        >>> folded = fold_batchnorm(copy.deepcopy(neck))
        >>> any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        False
    """
    module.eval()
    for parent in module.modules():
        children = list(parent.named_children())
        for (_, before), (name, norm) in zip(children, children[1:]):
            conv = _last_conv(before)
            if conv is None or type(norm) is not nn.BatchNorm2d or not norm.track_running_stats:
                continue
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
            )
            conv.weight, conv.bias = weight, bias
            setattr(parent, name, nn.Identity())
    return module


#: The 0.1.0 name of :func:`fold_batchnorm`, kept so existing code keeps working.
fuse_batchnorm = fold_batchnorm
