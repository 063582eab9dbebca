"""FPN with DropBlock on its top-down path (GLIP's neck): an FPN regularised by dropping square blocks.

Ghiasi et al., "DropBlock: A regularization method for convolutional networks", NeurIPS 2018.
https://arxiv.org/abs/1810.12890 (the FPN: Lin et al., https://arxiv.org/abs/1612.03144)

An FPN in mmdetection's formulation: 1x1 laterals, a top-down path of nearest-upsampled sums, a 3x3 conv on
each sum, optional extra levels (stride-2 subsampling, or stride-2 3x3 convs from the coarsest input,
lateral or output). While training, every top-down sum passes through DropBlock before it is smoothed and
carried on down; in eval mode DropBlock is the identity and the neck is a plain FPN. The math is
mmdetection 3.3's ``FPN_DropBlock`` (``mmdet/models/necks/fpn_dropblock.py``) with its default
``DropBlock`` plugin (``mmdet/models/layers/dropblock.py``).

Registered as ``fpn_dropblock`` (mmdet's defaults) and ``glip_fpn_dropblock`` (GLIP's P6/P7); an mmdet
``FPN_DropBlock`` loads with :func:`fpn_zoo.convert.mmdet_families.from_mmdet_module`.

Example:
    >>> import torch, fpn_zoo
    >>> from fpn_zoo.necks.fpn_dropblock import fpn_dropblock
    >>> neck = fpn_dropblock(fpn_zoo.FeatureSpec((16, 32, 64), (8, 16, 32)), out_channels=32,
    ...                      extra_levels=2, extra_op="conv", relu_between_extras=True)  # GLIP's
    >>> neck.feature_info.reduction()
    [8, 16, 32, 64, 128]
    >>> [f.shape[-1] for f in neck([torch.rand(2, c, s, s) for c, s in ((16, 29), (32, 15), (64, 8))])]
    [29, 15, 8, 4, 2]
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._features import FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.blocks import init_weights
from ..layers.config import MMDET_EXTRA_OPS, MMDET_EXTRA_SOURCES, check_knobs

__all__ = ["DropBlock", "FPNDropBlock", "fpn_dropblock", "EXTRA_OPS", "EXTRA_SOURCES"]

# The tables live in fpn_zoo.layers.config (one per knob); these names stay for code that imported them here.
EXTRA_OPS = MMDET_EXTRA_OPS
EXTRA_SOURCES = MMDET_EXTRA_SOURCES


class DropBlock(nn.Module):
    """Zero random ``block_size`` squares of a map while training and rescale the rest (identity in eval).

    Block centres are drawn with the rate that makes about ``drop_prob`` of the map dropped, ramped up
    linearly over the first ``warmup_iters`` training calls; the kept values are scaled by
    ``numel / kept``.

    Args:
        drop_prob: fraction of the map to drop, in [0, 1]; 0 turns it off.
        block_size: side of the dropped squares (odd).
        warmup_iters: training calls over which the drop rate ramps up from 0.
    """

    EPS = 1e-6

    def __init__(self, drop_prob: float, block_size: int, warmup_iters: int = 0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.block_size = block_size
        self.warmup_iters = warmup_iters
        self.calls = 0

    def _rate(self, height: int, width: int) -> float:
        k = self.block_size
        valid = max(height - k + 1, 1) * max(width - k + 1, 1)
        ramp = 1.0 if self.calls > self.warmup_iters else self.calls / self.warmup_iters
        return self.drop_prob * height * width / (valid * k * k) * ramp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0:
            return x
        self.calls += 1
        n, c, h, w = x.shape
        k, half = self.block_size, self.block_size // 2
        centres = torch.bernoulli(torch.full((n, c, max(h - k + 1, 1), max(w - k + 1, 1)), self._rate(h, w),
                                             device=x.device, dtype=x.dtype))
        centres = F.pad(centres, [half, half, half, half])[..., :h, :w]
        keep = 1 - F.max_pool2d(centres, kernel_size=k, stride=1, padding=half)
        return x * keep * keep.numel() / (self.EPS + keep.sum())

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}, warmup_iters={self.warmup_iters}"


class FPNDropBlock(nn.Module):
    """mmdet-style FPN with :class:`DropBlock` after each top-down sum (see the module docstring).

    Args:
        spec: the backbone's levels.
        out_channels: channels of every output.
        dropblock: the DropBlock module applied to the top-down sums.
        upsample_mode: interpolation of the top-down path.
        extra_levels: levels beyond the coarsest.
        extra_op: ``"subsample"`` (take every second pixel) or ``"conv"`` (stride-2 3x3 conv).
        extra_source: for ``"conv"``: the coarsest ``"input"``, ``"lateral"`` or ``"output"`` feeds P6.
        relu_between_extras: ReLU before each extra conv after the first (RetinaNet, GLIP).
        norm_layer: norm factory after every conv, or None.
        act_layer: activation factory after every conv, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self, spec: FeatureSpec, *, out_channels: int, dropblock: DropBlock, upsample_mode: str, extra_levels: int,
        extra_op: str, extra_source: str, relu_between_extras: bool,
        norm_layer: Optional[Callable[[int], nn.Module]], act_layer: Optional[Callable[[], nn.Module]],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.upsample_mode = upsample_mode
        self.extra_levels = extra_levels
        self.extra_op = extra_op
        self.extra_source = extra_source
        self.relu_between_extras = relu_between_extras
        self.laterals = nn.ModuleList(ConvNormAct(c, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)
                                      for c in spec.channels)
        self.outputs = nn.ModuleList(ConvNormAct(out_channels, out_channels, 3, norm_layer=norm_layer,
                                                 act_layer=act_layer) for _ in spec.channels)
        first_in = spec.channels[-1] if extra_source == "input" else out_channels
        self.extras = nn.ModuleList(
            ConvNormAct(first_in if i == 0 else out_channels, out_channels, 3, stride=2, norm_layer=norm_layer,
                        act_layer=act_layer)
            for i in range(extra_levels if extra_op == "conv" else 0)
        )
        self.dropblock = dropblock
        reductions = list(spec.reductions) + [spec.reductions[-1] * 2 ** (i + 1) for i in range(extra_levels)]
        self.feature_info = make_feature_info([out_channels] * len(reductions), reductions)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: one NCHW map per level, then the extra levels."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        sums = [lateral(x) for lateral, x in zip(self.laterals, features)]
        for level in range(len(sums) - 1, 0, -1):
            up = F.interpolate(sums[level], size=sums[level - 1].shape[-2:], mode=self.upsample_mode)
            sums[level - 1] = self.dropblock(sums[level - 1] + up)
        outs = [conv(x) for conv, x in zip(self.outputs, sums)]
        if self.extra_op == "subsample":
            for _ in range(self.extra_levels):
                outs.append(outs[-1][..., ::2, ::2])
            return outs
        source = {"input": features[-1], "lateral": sums[-1], "output": outs[-1]}[self.extra_source]
        for i, conv in enumerate(self.extras):
            outs.append(conv(F.relu(source) if i > 0 and self.relu_between_extras else source))
            source = outs[-1]
        return outs


@register_neck("fpn_dropblock")
def fpn_dropblock(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    drop_prob: float = 0.3,
    block_size: int = 3,
    warmup_iters: int = 0,
    norm: LayerSpec = None,
    act: LayerSpec = None,
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    upsample_mode: str = "nearest",
    extra_levels: int = 0,
    extra_op: str = "subsample",
    extra_source: str = "output",
    relu_between_extras: bool = False,
) -> FPNDropBlock:
    """Build an FPN with DropBlock on the top-down path (mmdet ``FPN_DropBlock``'s defaults).

    Args:
        spec: the backbone's levels.
        out_channels: channels of every output.
        drop_prob: DropBlock's drop fraction (0 turns it off).
        block_size: DropBlock's square side (odd).
        warmup_iters: training calls over which the drop rate ramps up.
        norm: norm after each conv, or None.
        act: activation after each conv, or None.
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.
        upsample_mode: interpolation of the top-down path.
        extra_levels: levels beyond the coarsest (mmdet ``num_outs - len(in_channels)``).
        extra_op: ``"subsample"`` (mmdet's max-pool of size 1) or ``"conv"`` (``add_extra_convs``).
        extra_source: which coarsest map feeds the first extra conv: ``"input"``, ``"lateral"`` or ``"output"``.
        relu_between_extras: ReLU before each extra conv after the first (``relu_before_extra_convs``).

    Raises:
        ValueError: a drop fraction outside [0, 1], an even or non-positive block, a negative warm-up, or an
            unknown extra op / source.
    """
    check_knobs(out_channels=out_channels, upsample_mode=upsample_mode, extra_levels=extra_levels, extra_op=extra_op,
                extra_source=extra_source, extra_ops=MMDET_EXTRA_OPS, extra_sources=MMDET_EXTRA_SOURCES,
                block_size=block_size)
    if isinstance(drop_prob, bool) or not isinstance(drop_prob, (int, float)) or not 0 <= drop_prob <= 1:
        raise ValueError(f"fpn_dropblock: drop_prob must be a number in [0, 1], got {drop_prob!r}")
    if block_size % 2 == 0:
        raise ValueError(f"fpn_dropblock: block_size must be odd (blocks centred on a pixel), got {block_size}")
    if isinstance(warmup_iters, bool) or not isinstance(warmup_iters, int) or warmup_iters < 0:
        raise ValueError(f"fpn_dropblock: warmup_iters must be an int >= 0, got {warmup_iters!r}")
    neck = FPNDropBlock(
        spec, out_channels=out_channels, dropblock=DropBlock(drop_prob, block_size, warmup_iters),
        upsample_mode=upsample_mode, extra_levels=extra_levels, extra_op=extra_op, extra_source=extra_source,
        relu_between_extras=bool(relu_between_extras), norm_layer=resolve_norm(norm, norm_kwargs),
        act_layer=resolve_act(act, act_kwargs),
    )
    return init_weights(neck)
