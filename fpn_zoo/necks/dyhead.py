"""Dynamic Head: scale-, spatial- and task-aware attention over a same-width pyramid, stacked in blocks.

Dai et al., "Dynamic Head: Unifying Object Detection Heads with Attentions", CVPR 2021.
https://arxiv.org/abs/2106.08322

Each block, on every level ``l``: the offsets and masks of a modulated deformable conv (DCNv2, the
*spatial-aware* attention) are predicted from level ``l`` by a 3x3 conv; with them, a DCNv2 + GroupNorm runs on
level ``l`` itself, a stride-2 one on the finer level ``l - 1``, and one on the coarser level ``l + 1`` whose
result is upsampled (bilinear, corners aligned) to level ``l``'s size. Each of these (up to three) maps is
weighed by the *scale-aware* attention ``hard_sigmoid(relu(conv1x1(avg_pool(x))))``, one scalar per map, and
they are averaged. The *task-aware* attention, DyReLU, ends the block: ``max(a1 * x + b1, a2 * x + b2)`` with
per-channel ``a, b`` from the pooled map.

The layout and state-dict names are mmdetection 3.3's ``DyHead`` (``mmdet/models/necks/dyhead.py``, after
Microsoft's DynamicHead), with one faithful oddity: the coarser level's DCNv2 reads level ``l``'s offset and
mask buffers as if they had the coarser level's size (mmcv's kernel takes the first ``h * w`` values of each
sample's buffer, with no shape check; torchvision's checks, so the buffers are reshaped to match here). That
is what every released DyHead was trained with. The reference implementation is mmdet 3.3's ``DyHead``,
which needs compiled mmcv ops: weight parity with it was not possible here; tested against a float64
reference of the math.

DyHead takes maps of one width with strides doubling level to level: put it after an FPN
(``fpn_dyhead``, ``before="fpn_p6p7"``, as the paper's ATSS config).

Example:
    >>> import torch, fpn_zoo
    >>> spec = fpn_zoo.FeatureSpec((16, 16), (8, 16))  # already one width: no FPN before it
    >>> neck = fpn_zoo.create_neck("fpn_dyhead", spec, before=None, num_blocks=2)
    >>> [tuple(f.shape) for f in neck([torch.rand(1, 16, 15, 21), torch.rand(1, 16, 8, 11)])]
    [(1, 16, 15, 21), (1, 16, 8, 11)]
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import neck_cfg, register_neck
from ..layers.config import check_count
from ..layers.conv import LayerSpec, resolve_norm
from ..layers.deform import ModulatedDeformConv
from .chain import ChainedNeck, chain_neck

__all__ = ["ScaleAttention", "DyReLU", "DyDCN", "DyHeadBlock", "DyHead", "dyhead"]

KERNEL_TAPS = 9  # a 3x3 DCNv2: 9 (dy, dx) offsets and 9 masks per pixel


class ScaleAttention(nn.Module):
    """The scale-aware attention: ``x * hard_sigmoid(relu(conv1x1(avg_pool(x))))``, one weight per map.

    ``hard_sigmoid(v) = clamp((v + 3) / 6, 0, 1)`` (DynamicHead's code; the paper writes ``max(0, min(1, (v +
    1) / 2))``).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(F.relu(self.conv(F.adaptive_avg_pool2d(x, 1))))


class DyReLU(nn.Module):
    """The task-aware attention, a dynamic ReLU: ``max(a1 * x + b1, a2 * x + b2)`` per channel.

    Chen et al., "Dynamic ReLU", ECCV 2020. https://arxiv.org/abs/2003.10027

    ``(a1, b1, a2, b2) = hard_sigmoid(conv2(relu(conv1(avg_pool(x))))) - 0.5``, then ``a1 = 2 * a1 + 1`` and
    ``a2 = 2 * a2``: at initialisation close to ``max(x, 0)``.

    Args:
        channels: channels of the map.
        ratio: squeeze ratio of the hidden layer (``channels // ratio`` wide).
    """

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, channels // ratio, 1)
        self.conv2 = nn.Conv2d(channels // ratio, 4 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.conv1(F.adaptive_avg_pool2d(x, 1)))
        a1, b1, a2, b2 = torch.split(F.hardsigmoid(self.conv2(hidden)) - 0.5, self.channels, dim=1)
        return torch.maximum(x * (2 * a1 + 1) + b1, x * (2 * a2) + b2)


class DyDCN(nn.Module):
    """A 3x3 DCNv2 with offsets and masks from outside, then a norm (mmdet ``DyDCNv2``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: the conv's stride.
        norm_layer: norm factory after the conv (DyHead: GroupNorm, 16 groups), or None for a biased conv.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm_layer: Optional[Callable[[int], nn.Module]]
    ) -> None:
        super().__init__()
        self.conv = ModulatedDeformConv(in_channels, out_channels, 3, stride=stride, padding=1,
                                        bias=norm_layer is None)
        self.norm = norm_layer(out_channels) if norm_layer is not None else nn.Identity()

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, size: Optional[Sequence[int]] = None
    ) -> torch.Tensor:
        """Args: the map, offsets and masks; with ``size`` (the stride-2 conv on a finer level), offsets and masks
        at ``size``, which are zero-padded or cropped to the conv's own output grid, whose output is cropped or
        zero-padded back to ``size`` before the norm. On a backbone that rounds sizes up the grids are equal and
        nothing changes; on one that rounds down the conv still reads the whole finer map."""
        if size is None:
            return self.norm(self.conv(x, offset, mask))
        grid = [(n + 2 * p - k) // s + 1 for n, p, k, s in
                zip(x.shape[-2:], self.conv.padding, self.conv.kernel_size, self.conv.stride)]
        out = self.conv(x, _pad_to(offset, grid), _pad_to(mask, grid))
        return self.norm(_pad_to(out, size))


def _as_size_of(buffer: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Each sample's ``buffer`` read as ``(C, H, W)`` of ``like``'s size: its first ``C * H * W`` values in memory
    order (what mmcv's DCN kernel reads when given a larger offset map; see the module docstring)."""
    channels, (height, width) = buffer.shape[1], like.shape[-2:]
    return buffer.flatten(1)[:, : channels * height * width].unflatten(1, (channels, height, width))


def _pad_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``x`` zero-padded or cropped at the bottom/right to ``size`` (no branch: sizes stay symbolic in export)."""
    return F.pad(x, (0, size[1] - x.shape[-1], 0, size[0] - x.shape[-2]))


class DyHeadBlock(nn.Module):
    """One DyHead block over all levels (see the module docstring).

    Args:
        in_channels: channels of every input level.
        out_channels: channels of every output level.
        norm_layer: norm after each DCNv2, or None.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_layer: Optional[Callable[[int], nn.Module]]) -> None:
        super().__init__()
        self.spatial_conv_high = DyDCN(in_channels, out_channels, 1, norm_layer)
        self.spatial_conv_mid = DyDCN(in_channels, out_channels, 1, norm_layer)
        self.spatial_conv_low = DyDCN(in_channels, out_channels, 2, norm_layer)
        self.spatial_conv_offset = nn.Conv2d(in_channels, 3 * KERNEL_TAPS, 3, padding=1)
        self.scale_attn = ScaleAttention(out_channels)
        self.task_attn = DyReLU(out_channels)

    def forward(self, levels: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        outs = []
        for i, x in enumerate(levels):
            predicted = self.spatial_conv_offset(x)
            offset, mask = predicted[:, : 2 * KERNEL_TAPS], predicted[:, 2 * KERNEL_TAPS:].sigmoid()
            mid = self.spatial_conv_mid(x, offset, mask)
            total, count = self.scale_attn(mid), 1
            if i > 0:
                low = self.spatial_conv_low(levels[i - 1], offset, mask, size=x.shape[-2:])
                total = total + self.scale_attn(low)
                count += 1
            if i < len(levels) - 1:
                coarser = levels[i + 1]
                high = self.spatial_conv_high(coarser, _as_size_of(offset, coarser), _as_size_of(mask, coarser))
                high = F.interpolate(high, size=x.shape[-2:], mode="bilinear", align_corners=True)
                total = total + self.scale_attn(high)
                count += 1
            outs.append(self.task_attn(total / count))
        return outs


class DyHead(nn.Module):
    """``num_blocks`` :class:`DyHeadBlock` s on a same-width pyramid; strides and sizes unchanged.

    Args:
        spec: the levels (one width, strides doubling).
        out_channels: channels of every output.
        num_blocks: the blocks stacked.
        norm_layer: norm after each DCNv2, or None.
    """

    output_fmt = "NCHW"

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        out_channels: int,
        num_blocks: int,
        norm_layer: Optional[Callable[[int], nn.Module]],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.dyhead_blocks = nn.ModuleList(
            DyHeadBlock(spec.channels[0] if i == 0 else out_channels, out_channels, norm_layer)
            for i in range(num_blocks)
        )
        self.feature_info = make_feature_info([out_channels] * spec.num_levels, spec.reductions)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per level. Returns: one NCHW map per level."""
        check_module_inputs(self, features, self.spec)
        levels = list(features)
        if self.spec.input_fmt == "NHWC":
            levels = [x.permute(0, 3, 1, 2) for x in levels]
        for block in self.dyhead_blocks:
            levels = block(levels)
        return levels


def init_dyhead(neck: DyHead, zero_init_offset: bool) -> DyHead:
    """DynamicHead's initialisation: convs ``N(0, 0.01)`` with zero bias, the offset conv zero if asked,
    DCNv2 weights uniform in ``+-1/sqrt(fan_in)``, norms at identity."""
    for m in neck.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, ModulatedDeformConv):
            m.reset_parameters()
        elif isinstance(m, nn.GroupNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_offset:
        for block in neck.dyhead_blocks:
            nn.init.zeros_(block.spatial_conv_offset.weight)
            nn.init.zeros_(block.spatial_conv_offset.bias)
    return neck


def _check_pyramid(spec: FeatureSpec) -> None:
    reductions = list(spec.reductions)
    if len(set(spec.channels)) != 1 or any(c != 2 * f for f, c in zip(reductions, reductions[1:])):
        raise BackboneMismatch(
            f"dyhead takes maps of one width with strides doubling level to level, got channels "
            f"{list(spec.channels)} at strides {reductions}: use fpn_dyhead (an FPN first); on a single-stride "
            "ViT put a pyramid first (simple_pyramid_fpn)"
        )


@register_neck("dyhead")
def dyhead(
    spec: FeatureSpec,
    *,
    out_channels: Optional[int] = None,
    num_blocks: int = 6,
    zero_init_offset: bool = True,
    norm: LayerSpec = "groupnorm",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    before: Optional[str] = None,
    before_args: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """Build a DyHead (mmdet ``DyHead``'s defaults: 6 blocks, GroupNorm with 16 groups), optionally after a neck.

    Args:
        spec: the levels: one width, strides doubling (an FPN's outputs), unless ``before`` makes them.
        out_channels: channels of every output (and of ``before``'s unless ``before_args`` sets them); None
            keeps the input width.
        num_blocks: DyHead blocks stacked (the paper: 6).
        zero_init_offset: start the DCNv2 offsets (and masks, at 0.5) at zero (mmdet's default; the ATSS
            config sets False).
        norm: norm after each DCNv2 (``"groupnorm"``, a class, or None for a biased DCNv2).
        norm_kwargs: extra arguments of the norm (default ``{"num_groups": 16}`` for GroupNorm).
        before: a registered neck variant put first (``"fpn_p6p7"``), whose outputs DyHead takes.
        before_args: overrides for ``before``.

    Raises:
        BackboneMismatch: levels of different widths or strides that do not double (name a variant that fits).
        ValueError: a bad count, or a width GroupNorm cannot split into its groups.
    """
    check_count("num_blocks", num_blocks)
    if not isinstance(zero_init_offset, bool):
        raise TypeError(f"dyhead: zero_init_offset must be a bool, got {type(zero_init_offset).__name__}")
    if norm == "groupnorm" and norm_kwargs is None:
        norm_kwargs = {"num_groups": 16}
    norm_layer = resolve_norm(norm, norm_kwargs)
    first: Optional[nn.Module] = None
    if before is not None:
        inherit = {} if out_channels is None else {"out_channels": out_channels}
        first = _build_before(spec, before, before_args, inherit)
        spec = FeatureSpec(tuple(first.feature_info.channels()), tuple(first.feature_info.reduction()))
    elif before_args:
        raise ValueError(f"dyhead: before_args={dict(before_args)!r} is set but before is None (no first neck)")
    _check_pyramid(spec)
    width = spec.channels[0] if out_channels is None else out_channels
    check_count("out_channels", width)
    groups = (norm_kwargs or {}).get("num_groups") if norm == "groupnorm" else None
    if groups is not None and width % groups:
        raise ValueError(f"dyhead: out_channels={width} must be a multiple of GroupNorm's num_groups={groups}")
    neck = init_dyhead(DyHead(spec, out_channels=width, num_blocks=num_blocks, norm_layer=norm_layer),
                       zero_init_offset)
    return neck if first is None else ChainedNeck(first, neck)


def _build_before(
    spec: FeatureSpec, before: str, before_args: Optional[Mapping[str, Any]], inherit: Mapping[str, Any]
) -> nn.Module:
    """The ``before`` neck on ``spec`` (taking ``inherit`` unless ``before_args`` sets it):
    :func:`~fpn_zoo.necks.chain.chain_neck` builds it on a pass-through."""
    if not isinstance(before, str):
        raise TypeError(f"dyhead: before must be a registered neck name, got {type(before).__name__} {before!r}")
    try:
        neck_cfg(before)
    except ValueError as e:
        raise ValueError(f"dyhead: before={before!r}: {e}") from None
    return chain_neck(_PassThrough(spec), before, before_args, inherit=inherit, owner="dyhead").second


class _PassThrough(nn.Module):
    """The input levels as a 'neck' (only its ``feature_info`` is read), so another neck can be built on them."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.feature_info = make_feature_info(spec.channels, spec.reductions)
        self.output_fmt = spec.input_fmt
