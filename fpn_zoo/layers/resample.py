"""Moving a feature map to another level: channel projection, down- and upsampling, extra levels.

Every resampling goes to the *target tensor's actual size* (as torchvision's FPN does), never by a fixed
factor alone: a 225 px image gives maps of 57, 29, 15, 8 px on a CNN, and ``2 * 8 != 15``. A strided op
brings the map close; a final nearest/bilinear resize fixes any off-by-one, so odd sizes, unusual
strides (7, 14, 12/17) and repeated strides all work.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import is_exporting

__all__ = ["Resample", "ExtraLevels", "max_pool_down", "resize_to"]


def resize_to(x: torch.Tensor, size: torch.Size, mode: str) -> torch.Tensor:
    """Resize ``x`` to spatial ``size`` (no-op when it already has it).

    While exporting (``torch.export``, ONNX) the resize is always written: comparing symbolic sizes would
    bake the export-time size relations between levels into the program as guards (a backbone that rounds
    differently would be rejected); resizing a map to its own size is exact.
    """
    if not is_exporting() and x.shape[-2:] == size:  # in this order: see above
        return x
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    return F.interpolate(x, size=size, mode=mode)


def max_pool_down(stride: int) -> nn.Module:
    """Max-pool by ``stride`` with a kernel one wider than the stride (EfficientDet's resampling)."""
    kernel = stride + 1
    return nn.MaxPool2d(kernel, stride=stride, padding=(kernel - 1) // 2)


class Resample(nn.Module):
    """One input edge of a fusion node: project channels, then bring the map to the node's size.

    Args:
        proj: channel projection (a 1x1 conv block) or None.
        down: strided op for an input from a finer level (pool or learned conv) or None.
        upsample_mode: interpolation mode used to go up, and to fix sizes after ``down``.
        resize: whether the map may arrive at another size than the node's (False for an input of the node's
            own level with no strided op: its size is the level's by construction).

    Children ``proj`` and ``down`` are ``nn.Identity`` when absent (state-dict names are stable); which of them
    run is worked out at construction (and again when one is assigned), not per call.
    """

    def __init__(
        self,
        proj: Optional[nn.Module],
        down: Optional[nn.Module],
        upsample_mode: str = "nearest",
        resize: bool = True,
    ) -> None:
        super().__init__()
        self.upsample_mode = upsample_mode
        self.resize = resize
        self.proj = proj if proj is not None else nn.Identity()
        self.down = down if down is not None else nn.Identity()
        self._plan_ready = True
        self._plan()

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name in ("proj", "down") and self.__dict__.get("_plan_ready"):
            self._plan()

    def _plan(self) -> None:
        self._steps = tuple(m for m in (self.proj, self.down) if not isinstance(m, nn.Identity))

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        for step in self._steps:
            x = step(x)
        return resize_to(x, size, self.upsample_mode) if self.resize else x


class ExtraLevels(nn.Module):
    """Coarser levels beyond the backbone's last one (P6, P7, ...), each at half the previous size.

    Args:
        in_channels: channels of the source map.
        out_channels: channels of every extra level.
        num_levels: how many levels to add.
        op: ``"subsample"`` (1x1 max-pool, stride 2: torchvision ``LastLevelMaxPool``, mmdet),
            ``"maxpool"`` (3x3 max-pool, stride 2: EfficientDet), or ``"conv"`` (3x3 stride-2 conv,
            activation between levels: RetinaNet ``LastLevelP6P7``).
        make_proj: builds the 1x1 projection used by the pooling ops when channels differ.
        make_conv: builds a 3x3 stride-2 conv block ``(in, out) -> module`` for ``op="conv"``.
        make_act: the activation between conv levels (ReLU in RetinaNet); it must not work in place.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_levels: int,
        op: str,
        make_proj: Callable[[int, int], nn.Module],
        make_conv: Callable[[int, int], nn.Module],
        make_act: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        self.op = op
        self.num_levels = num_levels
        self.proj = make_proj(in_channels, out_channels) if op != "conv" and in_channels != out_channels else nn.Identity()
        if op == "conv":
            self.convs = nn.ModuleList(
                make_conv(in_channels if i == 0 else out_channels, out_channels) for i in range(num_levels)
            )
            self.act = make_act()  # not in place: its input is a level already handed out as an output
        else:
            self.pool = nn.MaxPool2d(1, stride=2) if op == "subsample" else max_pool_down(2)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs: List[torch.Tensor] = []
        if self.op == "conv":
            for i, conv in enumerate(self.convs):
                x = conv(self.act(x) if i > 0 else x)
                outs.append(x)
            return outs
        x = self.proj(x)
        for _ in range(self.num_levels):
            x = self.pool(x)
            outs.append(x)
        return outs
