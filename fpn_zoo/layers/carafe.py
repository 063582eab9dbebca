"""CARAFE: content-aware reassembly of features, an upsampler whose kernels are predicted from the content.

Wang et al., "CARAFE: Content-Aware ReAssembly of FEatures", ICCV 2019. https://arxiv.org/abs/1905.02188

For an upsampling by ``s``, a 1x1 conv compresses the map to ``compressed_channels``; a ``k_enc x k_enc``
content encoder predicts, at every input pixel, ``s * s`` reassembly kernels of ``k_up x k_up`` weights
(per channel group); they are pixel-shuffled to the output resolution and softmax-normalised. Output pixel
``(y, x)`` is the kernel-weighted sum of the ``k_up x k_up`` neighbourhood of input pixel
``(y // s, x // s)`` (zeros outside the map).

The reassembly is plain PyTorch (``F.unfold`` and one ``einsum``), not mmcv's compiled ``carafe`` op; the
state-dict names are mmcv ``CARAFEPack``'s (``channel_compressor``, ``content_encoder``).

Example:
    >>> import torch
    >>> up = CARAFE(16, scale_factor=2, compressed_channels=8)
    >>> tuple(up(torch.rand(1, 16, 8, 11)).shape), tuple(up(torch.rand(1, 16, 8, 11), size=(15, 21)).shape)
    ((1, 16, 16, 22), (1, 16, 15, 21))
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CARAFE", "carafe_reassemble", "fit_to_size"]


def carafe_reassemble(
    x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, groups: int, scale: int
) -> torch.Tensor:
    """Reassemble ``x`` with per-output-pixel kernels (mmcv ``carafe``'s contract, in plain PyTorch).

    Args:
        x: the map to upsample, ``(N, C, h, w)``.
        kernels: normalised kernels at the output resolution, ``(N, groups * kernel_size**2, s*h, s*w)``;
            channel ``g * k*k + i * k + j`` weighs neighbour ``(i - k//2, j - k//2)`` for channel group ``g``.
        kernel_size: ``k_up``, odd.
        groups: channel groups sharing one kernel (``C`` is a multiple of it).
        scale: the upsampling factor ``s``.

    Returns:
        ``(N, C, s*h, s*w)``: ``out[n, c, y, x] = sum_ij kernels[n, g(c)*k*k + i*k + j, y, x] *
        x[n, c, y//s + i - k//2, x//s + j - k//2]``.
    """
    n, c, h, w = x.shape
    k2 = kernel_size * kernel_size
    neighbours = F.unfold(x, kernel_size, padding=kernel_size // 2).view(n, groups, c // groups, k2, h, w)
    # undo the pixel shuffle: output pixel (y*s + a, x*s + b) reads input pixel (y, x)
    weights = kernels.view(n, groups, k2, h, scale, w, scale)
    out = torch.einsum("ngckyx,ngkyaxb->ngcyaxb", neighbours, weights)
    return out.reshape(n, c, h * scale, w * scale)


def fit_to_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``x`` cropped to ``size`` at the bottom/right, or extended there by repeating its last row/column.

    An x``s`` upsampled map is cropped when the finer map is smaller (mmdet ``FPN_CARAFE``'s ``slice_as``: a
    backbone that rounds sizes up) and extended when it is larger (one that rounds down). Rows and columns are
    gathered by index, with no branch and no slice on the sizes, so they stay symbolic under ``torch.export``.
    """
    rows = torch.arange(size[0], device=x.device).clamp(max=x.shape[-2] - 1)
    cols = torch.arange(size[1], device=x.device).clamp(max=x.shape[-1] - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


class CARAFE(nn.Module):
    """The CARAFE upsampler (mmcv ``CARAFEPack``'s layout): compressor, content encoder, reassembly.

    Args:
        channels: channels of the map (kept).
        scale_factor: the upsampling factor ``s``.
        up_kernel: ``k_up``, the reassembly kernel size (odd).
        up_group: channel groups, each with its own kernels.
        encoder_kernel: ``k_enc``, the content encoder's kernel size (odd).
        encoder_dilation: the content encoder's dilation.
        compressed_channels: channels of the compressed map the encoder reads.
    """

    def __init__(
        self,
        channels: int,
        scale_factor: int = 2,
        up_kernel: int = 5,
        up_group: int = 1,
        encoder_kernel: int = 3,
        encoder_dilation: int = 1,
        compressed_channels: int = 64,
    ) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.up_kernel = up_kernel
        self.up_group = up_group
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels, up_group * up_kernel * up_kernel * scale_factor * scale_factor, encoder_kernel,
            padding=(encoder_kernel - 1) * encoder_dilation // 2, dilation=encoder_dilation,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's / mmcv's initialisation: xavier-uniform compressor, near-zero encoder (uniform kernels)."""
        nn.init.xavier_uniform_(self.channel_compressor.weight)
        nn.init.zeros_(self.channel_compressor.bias)
        nn.init.normal_(self.content_encoder.weight, std=0.001)
        nn.init.zeros_(self.content_encoder.bias)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised reassembly kernels at the output resolution, ``(N, up_group * k_up**2, s*h, s*w)``."""
        logits = F.pixel_shuffle(self.content_encoder(self.channel_compressor(x)), self.scale_factor)
        n, _, height, width = logits.shape
        k2 = self.up_kernel * self.up_kernel
        return logits.view(n, self.up_group, k2, height, width).softmax(dim=2).view(n, -1, height, width)

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Upsample ``x`` by ``scale_factor``; with ``size``, cropped or edge-extended to it (:func:`fit_to_size`)."""
        out = carafe_reassemble(x, self.kernels(x), self.up_kernel, self.up_group, self.scale_factor)
        return out if size is None else fit_to_size(out, size)
