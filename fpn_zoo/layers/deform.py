"""Modulated deformable convolution (DCNv2) without a compiled mmcv op.

Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results", CVPR 2019. https://arxiv.org/abs/1811.11168

Each kernel tap ``k`` of output pixel ``p`` samples the input bilinearly at ``p * stride - padding + k *
dilation + offset_k(p)`` (zero outside the map) and is scaled by a mask ``m_k(p)`` in ``[0, 1]``. Offsets are
``(dy, dx)`` pairs per tap, grouped by deformable group: the channel layout of torchvision and of mmcv's
``ModulatedDeformConv2d`` alike. The state-dict names are mmcv's (``weight``, ``bias``; ``conv_offset`` for the
module that predicts its own offsets), so its weights map one to one.

Example:
    >>> import torch
    >>> conv = ModulatedDeformConvPack(8, 16, 3, padding=1, deform_groups=2)
    >>> tuple(conv(torch.rand(1, 8, 9, 13)).shape)
    (1, 16, 9, 13)
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

from .._compat import is_compiling
from .sampling import bilinear_taps, weighted_row_sums

__all__ = ["ModulatedDeformConv", "ModulatedDeformConvPack", "sampled_deform_conv2d"]


def _tap_coordinates(x: torch.Tensor, offset: torch.Tensor, kernel: Tuple[int, int], stride: Tuple[int, int],
                     padding: Tuple[int, int], dilation: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(y, x)`` every tap reads, ``(n, deform_groups, taps, out_h, out_w)`` each."""
    n, taps = offset.shape[0], kernel[0] * kernel[1]
    out_h, out_w = offset.shape[-2:]
    rows = torch.arange(kernel[0], device=x.device, dtype=x.dtype) * dilation[0]
    cols = torch.arange(kernel[1], device=x.device, dtype=x.dtype) * dilation[1]
    base_y = rows.repeat_interleave(kernel[1])[:, None, None] \
        + (torch.arange(out_h, device=x.device, dtype=x.dtype) * stride[0] - padding[0])[None, :, None]
    base_x = cols.repeat(kernel[0])[:, None, None] \
        + (torch.arange(out_w, device=x.device, dtype=x.dtype) * stride[1] - padding[1])[None, None, :]
    shifts = offset.view(n, -1, taps, 2, out_h, out_w)
    return base_y + shifts[:, :, :, 0], base_x + shifts[:, :, :, 1]


def _deform_conv_by_grid_sample(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                                bias: Optional[torch.Tensor], stride: Tuple[int, int], padding: Tuple[int, int],
                                dilation: Tuple[int, int], mask: torch.Tensor) -> torch.Tensor:
    """:func:`sampled_deform_conv2d` through ``grid_sample`` (traced graphs): every tap sampled
    (``(2u + 1) / size - 1`` is pixel ``u``'s grid coordinate), times its mask, then a batched matmul."""
    n, c, h, w = x.shape
    out_channels, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
    out_h, out_w = offset.shape[-2:]
    taps = kh * kw
    deform_groups = offset.shape[1] // (2 * taps)
    at_y, at_x = _tap_coordinates(x, offset, (kh, kw), stride, padding, dilation)
    grid = torch.stack(((2 * at_x + 1) / w - 1, (2 * at_y + 1) / h - 1), dim=-1)
    sampled = F.grid_sample(x.reshape(n * deform_groups, c // deform_groups, h, w),
                            grid.reshape(n * deform_groups, taps * out_h, out_w, 2),
                            mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(n, deform_groups, c // deform_groups, taps, out_h, out_w) \
        * mask.view(n, deform_groups, 1, taps, out_h, out_w)
    # bmm on the expanded weight: matmul would first copy the (n, c * taps, h * w) taps into (n * h * w, c * taps)
    out = torch.bmm(weight.reshape(1, out_channels, c * taps).expand(n, -1, -1),
                    sampled.reshape(n, c * taps, out_h * out_w))
    out = out.view(n, out_channels, out_h, out_w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def sampled_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          stride: Tuple[int, int], padding: Tuple[int, int], dilation: Tuple[int, int],
                          mask: torch.Tensor) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` (one conv group) as masked bilinear reads of every tap, then a matmul.

    Tap ``(i, j)`` of output pixel ``(y, x)`` reads the input at ``(y * stride - padding + i * dilation + dy,
    x * stride - padding + j * dilation + dx)``, bilinearly with zeros outside the map, times its mask; the taps
    are then contracted with the weight as an im2col conv is. Each masked read is one weighted sum of four input
    pixels (:mod:`fpn_zoo.layers.sampling`, ``embedding_bag``, with its own backward), laid out position-major so
    that the contraction is one plain matmul. While ``torch.compile`` / ``torch.export`` trace, the reads go
    through ``grid_sample`` instead (ops every backend and ONNX know).
    """
    if is_compiling():
        return _deform_conv_by_grid_sample(x, offset, weight, bias, stride, padding, dilation, mask)
    n, c, h, w = x.shape
    out_channels, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
    out_h, out_w = offset.shape[-2:]
    taps = kh * kw
    groups = offset.shape[1] // (2 * taps)
    group_channels = c // groups
    at_y, at_x = _tap_coordinates(x, offset, (kh, kw), stride, padding, dilation)
    order = (0, 3, 4, 1, 2)  # reads laid out (n, out_h, out_w, group, tap): one im2col row per output pixel
    table = x.reshape(n, groups, group_channels, h * w).transpose(2, 3).reshape(n * groups * h * w, group_channels)
    first = (torch.arange(n * groups, device=x.device) * (h * w)).view(n, 1, 1, groups, 1)
    rows, weights = bilinear_taps(at_x.permute(order), at_y.permute(order), w, h,
                                  mask.view(n, groups, taps, out_h, out_w).permute(order), first)
    columns = weighted_row_sums(table, rows.reshape(-1, 4), weights.reshape(-1, 4))  # (n * hw * groups * taps, cg)
    # the weight's (out, group, group channel, tap) columns reordered to the reads' (group, tap, group channel)
    kernel = weight.reshape(out_channels, groups, group_channels, taps).transpose(2, 3).reshape(out_channels, -1)
    columns = columns.view(n * out_h * out_w, groups * taps * group_channels)
    out = torch.mm(columns, kernel.t()) if bias is None else torch.addmm(bias, columns, kernel.t())
    return out.view(n, out_h, out_w, out_channels).permute(0, 3, 1, 2)


class ModulatedDeformConv(nn.Module):
    """A DCNv2 conv whose offsets and masks are given to ``forward`` (mmcv ``ModulatedDeformConv2d``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: the kernel's side.
        stride: the conv's stride.
        padding: zero padding on each side.
        dilation: spacing of the kernel taps.
        groups: conv groups.
        deform_groups: channel groups with their own offsets and masks.
        bias: add a learned bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.groups = groups
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias: Optional[nn.Parameter] = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @property
    def offset_channels(self) -> int:
        """Channels of the offsets: a ``(dy, dx)`` pair per kernel tap and deformable group."""
        return 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]

    def reset_parameters(self) -> None:
        """mmcv's initialisation: uniform in ``+-1/sqrt(fan_in)``, zero bias."""
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: the map, offsets ``(N, offset_channels, H_out, W_out)``, masks ``(N, offset_channels / 2, H_out,
        W_out)``. Returns: ``(N, out_channels, H_out, W_out)``."""
        if x.device.type == "cpu" and self.groups == 1:
            return sampled_deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                         mask)
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)


class ModulatedDeformConvPack(ModulatedDeformConv):
    """A DCNv2 conv predicting its own offsets and masks with a conv of the same geometry (mmcv
    ``ModulatedDeformConv2dPack``, "DCNv2" in mmdet configs): offsets from the first two thirds of
    ``conv_offset``'s channels, masks as the sigmoid of the last third. ``conv_offset`` starts at zero (a plain
    conv with masks 0.5), as in the paper.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conv_offset = nn.Conv2d(
            self.in_channels, self.offset_channels * 3 // 2, self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation,
        )
        self.init_offset()

    def init_offset(self) -> None:
        """Zero offsets and masks 0.5 everywhere until trained."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Args: the map. Returns: the DCNv2 conv of it with offsets and masks predicted from it."""
        predicted = self.conv_offset(x)
        offset, mask = predicted[:, : self.offset_channels], predicted[:, self.offset_channels:].sigmoid()
        return super().forward(x, offset, mask)
