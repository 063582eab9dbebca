"""YOLOv8 / YOLO11's neck as ultralytics builds it: SPPF (+ C2PSA) on the coarsest map, then a concat PAN.

Jocher et al., Ultralytics YOLOv8 (2023) and YOLO11 (2024), https://github.com/ultralytics/ultralytics; the
path aggregation is PANet's (Liu et al. 2018, https://arxiv.org/abs/1803.01534), the blocks CSPNet's (Wang et
al. 2019, https://arxiv.org/abs/1911.11929), SPPF the fast form of SPP (He et al. 2014,
https://arxiv.org/abs/1406.4729).

The math is ultralytics 8.4's ``yolov8.yaml`` / ``yolo11.yaml`` from the end of the backbone to ``Detect``
(``ultralytics/nn/modules/block.py``: ``SPPF``, ``C2PSA``, ``C2f``, ``C3k2``; ``conv.py``: ``Conv``):

- coarse: ``SPPF`` (1x1 to half the channels, three chained 5x5 stride-1 max-pools, concatenation, 1x1 to the
  coarsest width) and, in YOLO11, ``C2PSA`` (a C2f-style split whose processed half runs position-sensitive
  attention blocks). The yamls list both as the last layers of the *backbone*; what a timm backbone lacks is
  exactly these, and the literature calls SPPF part of the neck, so they are here, on by default
  (``sppf=False, c2psa_blocks=0`` gives the yamls' ``head:`` section alone).
- top-down: upsample the running map (nearest) to the finer level's size, concatenate ``[upsampled, level]``,
  a C2f / C3k2 block at that level's width.
- bottom-up: a stride-2 3x3 conv of the output below, concatenate ``[down, top-down map]``, a C2f / C3k2 block.

Widths are per level, YOLO-style: ``base_channels * 2**level``, capped at ``max_channels``, times
``widen_factor``, rounded up to a multiple of 8 (yolov8n: 64 / 128 / 256). All convs are conv-BN-SiLU.

ultralytics upsamples by a fixed factor 2 (x2 map sizes only, as its 32-multiple inputs give); here the
upsampling goes to the finer map's size, the same on x2 sizes, and odd sizes work. ``csp_pan`` is the same
topology at one uniform width on the graph executor (and 1x1 laterals on every input); this family is
ultralytics' own layout, weight for weight (:func:`fpn_zoo.convert.from_ultralytics`).

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("yolov8n_neck", [16, 32, 64])
    >>> [tuple(f.shape[1:]) for f in neck([torch.rand(1, c, s, s + 2) for c, s in ((16, 29), (32, 15), (64, 8))])]
    [(64, 29, 31), (128, 15, 17), (256, 8, 10)]
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.blocks import init_weights
from ..layers.config import check_choice, check_count, check_knobs
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.resample import resize_to

__all__ = ["YOLO_BLOCKS", "C3K_PLACEMENTS", "Bottleneck", "C3k", "C2fBlock", "SPPF", "PSAttention", "PSABlock",
           "C2PSA", "YOLOPAN", "yolo_widths", "yolo_pan"]

#: The CSP blocks after each fusion: YOLOv8's C2f, YOLO11's C3k2 (a C2f whose inner blocks may be C3k).
YOLO_BLOCKS = ("c2f", "c3k2")
#: Which C3k2 blocks hold C3k inner blocks: none, the coarsest bottom-up one (YOLO11 n/s), all (YOLO11 m/l/x).
C3K_PLACEMENTS = ("none", "last", "all")
NormFactory = Optional[Callable[[int], nn.Module]]
ActFactory = Optional[Callable[[], nn.Module]]


class Bottleneck(nn.Module):
    """``conv2(conv1(x))``, plus ``x`` when ``shortcut``: two 3x3 conv-norm-acts through ``hidden`` channels.

    Args:
        channels: input = output channels.
        hidden: channels between the convs (C2f's and C3k's: ``channels``; C3k2's own: half).
        shortcut: add the input (YOLO11's neck does, YOLOv8's does not).
        norm_layer: norm factory, or None.
        act_layer: activation factory, or None.
    """

    def __init__(self, channels: int, hidden: int, shortcut: bool, norm_layer: NormFactory,
                 act_layer: ActFactory) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.conv1 = ConvNormAct(channels, hidden, 3, norm_layer=norm_layer, act_layer=act_layer)
        self.conv2 = ConvNormAct(hidden, channels, 3, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class C3k(nn.Module):
    """YOLO11's C3k: ``final(cat(blocks(main(x)), short(x)))``, two 3x3 bottlenecks at half the width."""

    def __init__(self, channels: int, shortcut: bool, norm_layer: NormFactory, act_layer: ActFactory,
                 num_blocks: int = 2) -> None:
        super().__init__()
        hidden = channels // 2
        self.main = ConvNormAct(channels, hidden, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.short = ConvNormAct(channels, hidden, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.blocks = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, norm_layer, act_layer)
                                      for _ in range(num_blocks)))
        self.final = ConvNormAct(2 * hidden, channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(torch.cat([self.blocks(self.main(x)), self.short(x)], dim=1))


class C2fBlock(nn.Module):
    """C2f / C3k2: a 1x1 split into two halves, inner blocks chained on the second, every output concatenated.

    Args:
        in_channels: channels of the (concatenated) input.
        out_channels: channels of the output.
        num_blocks: inner blocks.
        style: ``"c2f"`` (YOLOv8: bottlenecks at the half's width) or ``"c3k2"`` (YOLO11: bottlenecks
            through half the half's width, or :class:`C3k` blocks when ``c3k``).
        c3k: :class:`C3k` inner blocks (``c3k2`` only).
        shortcut: residual inner bottlenecks.
        norm_layer: norm factory, or None.
        act_layer: activation factory, or None.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, *, style: str, c3k: bool,
                 shortcut: bool, norm_layer: NormFactory, act_layer: ActFactory) -> None:
        super().__init__()
        self.hidden = hidden = out_channels // 2

        def inner() -> nn.Module:
            if c3k:
                return C3k(hidden, shortcut, norm_layer, act_layer)
            return Bottleneck(hidden, hidden if style == "c2f" else hidden // 2, shortcut, norm_layer, act_layer)

        self.split = ConvNormAct(in_channels, 2 * hidden, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.blocks = nn.ModuleList(inner() for _ in range(num_blocks))
        self.merge = ConvNormAct((2 + num_blocks) * hidden, out_channels, 1, norm_layer=norm_layer,
                                 act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.split(x).chunk(2, dim=1))
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.merge(torch.cat(parts, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: 1x1 to half the input, three chained ``k x k`` max-pools, concat, 1x1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormFactory,
                 act_layer: ActFactory) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.reduce = ConvNormAct(in_channels, hidden, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.pool = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)
        self.merge = ConvNormAct(4 * hidden, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.reduce(x)]
        for _ in range(3):
            parts.append(self.pool(parts[-1]))
        return self.merge(torch.cat(parts, dim=1))


class PSAttention(nn.Module):
    """Position-sensitive multi-head attention over all positions, plus a depthwise 3x3 "position" term on V.

    Queries and keys have half a head's width; ``qkv``, ``proj`` and ``pe`` are conv-norm without activation.
    """

    def __init__(self, channels: int, num_heads: int, norm_layer: NormFactory) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.key_dim = self.head_dim // 2
        self.scale = self.key_dim ** -0.5
        self.qkv = ConvNormAct(channels, channels + 2 * self.key_dim * num_heads, 1, norm_layer=norm_layer)
        self.proj = ConvNormAct(channels, channels, 1, norm_layer=norm_layer)
        self.pe = ConvNormAct(channels, channels, 3, groups=channels, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).view(b, self.num_heads, 2 * self.key_dim + self.head_dim, h * w).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)  # (b, heads, hw, hw)
        out = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(out)


class PSABlock(nn.Module):
    """``x + attn(x)``, then ``x + ffn(x)`` (1x1 conv-norm-act to twice the width, 1x1 conv-norm back)."""

    def __init__(self, channels: int, num_heads: int, norm_layer: NormFactory, act_layer: ActFactory) -> None:
        super().__init__()
        self.attn = PSAttention(channels, num_heads, norm_layer)
        self.ffn = nn.Sequential(ConvNormAct(channels, 2 * channels, 1, norm_layer=norm_layer, act_layer=act_layer),
                                 ConvNormAct(2 * channels, channels, 1, norm_layer=norm_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ffn(x)


class C2PSA(nn.Module):
    """YOLO11's C2PSA: a 1x1 split; one half through ``num_blocks`` :class:`PSABlock`; concat; 1x1 back.

    Heads: one per 64 hidden channels (at least one); the hidden width must divide evenly among them.
    """

    def __init__(self, channels: int, num_blocks: int, norm_layer: NormFactory, act_layer: ActFactory) -> None:
        super().__init__()
        self.hidden = hidden = channels // 2
        self.split = ConvNormAct(channels, 2 * hidden, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.blocks = nn.Sequential(*(PSABlock(hidden, psa_heads(hidden), norm_layer, act_layer)
                                      for _ in range(num_blocks)))
        self.merge = ConvNormAct(2 * hidden, channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, processed = self.split(x).chunk(2, dim=1)
        return self.merge(torch.cat([kept, self.blocks(processed)], dim=1))


def psa_heads(hidden: int) -> int:
    """ultralytics' head count: one per 64 channels, at least one."""
    return max(hidden // 64, 1)


class YOLOPAN(nn.Module):
    """The ultralytics YOLOv8 / YOLO11 neck (see the module docstring).

    Args:
        spec: the backbone's levels (distinct strides, finest first).
        widths: output channels per level.
        num_blocks: inner blocks per C2f / C3k2 block.
        style: ``"c2f"`` or ``"c3k2"`` blocks.
        c3k: per fusion block, top-down ones (finest first) then bottom-up ones: C3k inner blocks or not.
        shortcut: residual inner bottlenecks.
        sppf_kernel: max-pool kernel of SPPF on the coarsest map, or None for no SPPF.
        c2psa_blocks: PSA blocks of a C2PSA after it (0: none).
        upsample_mode: interpolation of the top-down path.
        norm_layer: norm factory, or None.
        act_layer: activation factory, or None.
    """

    output_fmt = "NCHW"

    def __init__(self, spec: FeatureSpec, widths: Sequence[int], *, num_blocks: int, style: str,
                 c3k: Sequence[bool], shortcut: bool, sppf_kernel: Optional[int], c2psa_blocks: int, upsample_mode: str,
                 norm_layer: NormFactory, act_layer: ActFactory) -> None:
        super().__init__()
        self.spec = spec
        self.upsample_mode = upsample_mode
        levels = range(spec.num_levels - 1)
        coarse: "OrderedDict[str, nn.Module]" = OrderedDict()
        coarse_channels = spec.channels[-1]
        if sppf_kernel is not None:
            coarse["sppf"] = SPPF(coarse_channels, widths[-1], sppf_kernel, norm_layer, act_layer)
            coarse_channels = widths[-1]
        if c2psa_blocks:
            coarse["c2psa"] = C2PSA(coarse_channels, c2psa_blocks, norm_layer, act_layer)
        self.coarse = nn.Sequential(coarse)
        # the map each top-down block receives from above, and that each bottom-up block fuses with
        above = [*widths[1:-1], coarse_channels]

        def block(cin: int, cout: int, with_c3k: bool) -> C2fBlock:
            return C2fBlock(cin, cout, num_blocks, style=style, c3k=with_c3k, shortcut=shortcut,
                            norm_layer=norm_layer, act_layer=act_layer)

        n = len(levels)
        self.top_down = nn.ModuleList(block(above[l] + spec.channels[l], widths[l], c3k[l]) for l in levels)
        self.down = nn.ModuleList(ConvNormAct(widths[l], widths[l], 3, 2, norm_layer=norm_layer, act_layer=act_layer)
                                  for l in levels)
        self.bottom_up = nn.ModuleList(block(widths[l] + above[l], widths[l + 1], c3k[n + l]) for l in levels)
        self.feature_info = make_feature_info(widths, spec.reductions)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: one NCHW map per level, finest first."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        n = len(features)
        tops: List[torch.Tensor] = [features[0]] * n  # placeholders; every entry is set below
        tops[-1] = running = self.coarse(features[-1])
        for level in reversed(range(n - 1)):
            up = resize_to(running, features[level].shape[-2:], self.upsample_mode)
            tops[level] = running = self.top_down[level](torch.cat([up, features[level]], dim=1))
        outs = [tops[0]]
        for level in range(n - 1):
            down = resize_to(self.down[level](outs[-1]), tops[level + 1].shape[-2:], self.upsample_mode)
            outs.append(self.bottom_up[level](torch.cat([down, tops[level + 1]], dim=1)))
        return outs


def yolo_widths(num_levels: int, base_channels: int, widen_factor: float, max_channels: int) -> List[int]:
    """ultralytics' scaled widths: ``ceil(min(base * 2**l, max_channels) * widen_factor / 8) * 8`` per level."""
    return [int(math.ceil(min(base_channels * 2 ** l, max_channels) * widen_factor / 8) * 8)
            for l in range(num_levels)]


def _check_factor(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"yolo_pan: {name} must be a positive number, got {value!r}")


@register_neck("yolo_pan")
def yolo_pan(
    spec: FeatureSpec,
    *,
    out_channels: Union[int, Sequence[int], None] = None,
    base_channels: int = 256,
    widen_factor: float = 1.0,
    max_channels: int = 512,
    num_blocks: int = 3,
    block: str = "c2f",
    c3k: str = "none",
    shortcut: bool = False,
    sppf: bool = True,
    sppf_kernel: int = 5,
    c2psa_blocks: int = 0,
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "silu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    upsample_mode: str = "nearest",
) -> YOLOPAN:
    """Build the ultralytics YOLO neck (defaults: ``yolov8l.yaml``'s, SPPF included).

    Args:
        spec: the backbone's levels, at distinct strides (ultralytics: P3-P5 at 8/16/32).
        out_channels: widths of the outputs: one for all levels, one per level, or None for the YOLO widths
            from ``base_channels``, ``max_channels`` and ``widen_factor``.
        base_channels: the finest level's width before scaling (doubling per level), when ``out_channels`` is None.
        widen_factor: ultralytics' width multiple (n 0.25, s 0.5, m 0.75, l 1.0, x 1.25 for YOLOv8).
        max_channels: ultralytics' cap on a width before ``widen_factor`` (1024 for n/s, 768 m, 512 l/x).
        num_blocks: inner blocks per C2f / C3k2 block, after ultralytics' depth multiple (v8n: 1, v8l: 3).
        block: ``"c2f"`` (YOLOv8) or ``"c3k2"`` (YOLO11).
        c3k: for ``c3k2``, which blocks hold C3k inner blocks: ``"none"``, ``"last"`` (the coarsest bottom-up
            block: YOLO11 n/s) or ``"all"`` (YOLO11 m/l/x).
        shortcut: residual inner bottlenecks (YOLO11's C3k2 default True; YOLOv8's neck C2f False).
        sppf: SPPF on the coarsest map, to the coarsest width.
        sppf_kernel: SPPF's max-pool kernel (odd).
        c2psa_blocks: PSA blocks of YOLO11's C2PSA after SPPF (0: no C2PSA; YOLO11n: 1).
        norm: norm after each conv (ultralytics: BatchNorm; None kwargs mean its ``eps=1e-3, momentum=0.03``).
        act: activation after each conv (SiLU).
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.
        upsample_mode: interpolation of the top-down path.

    Raises:
        BackboneMismatch: fewer than two levels, or levels at a repeated stride (a plain ViT).
        ValueError: a bad knob, a C2PSA width its heads do not divide.
    """
    for name, count in (("base_channels", base_channels), ("max_channels", max_channels), ("num_blocks", num_blocks),
                        ("sppf_kernel", sppf_kernel)):
        check_count(name, count)
    check_count("c2psa_blocks", c2psa_blocks, minimum=0)
    _check_factor("widen_factor", widen_factor)
    check_choice("block", block, YOLO_BLOCKS)
    check_choice("c3k", c3k, C3K_PLACEMENTS)
    if c3k != "none" and block != "c3k2":
        raise ValueError(f"yolo_pan: c3k={c3k!r} places C3k blocks, which only block='c3k2' has")
    if sppf_kernel % 2 == 0:
        raise ValueError(f"yolo_pan: sppf_kernel must be odd, got {sppf_kernel}")
    if spec.num_levels < 2 or len(set(spec.reductions)) != spec.num_levels:
        raise BackboneMismatch(
            f"yolo_pan fuses levels at distinct strides, but the backbone gives strides {list(spec.reductions)}: "
            "use 'simple_pyramid' to build a pyramid from a single-stride map first"
        )
    if out_channels is None:
        widths = yolo_widths(spec.num_levels, base_channels, widen_factor, max_channels)
    else:
        widths = [out_channels] * spec.num_levels if isinstance(out_channels, int) else list(out_channels)
        if len(widths) != spec.num_levels:
            raise ValueError(f"yolo_pan: out_channels has {len(widths)} entries for {spec.num_levels} levels")
    for width in widths:
        check_knobs(out_channels=width, upsample_mode=upsample_mode)
        smallest = 2 if block == "c2f" else 4
        if width < smallest:
            raise ValueError(f"yolo_pan: out_channels must be at least {smallest} ({block} halves them"
                             f"{'' if block == 'c2f' else ' twice'}), got {width}")
    if c2psa_blocks:
        hidden = (widths[-1] if sppf else spec.channels[-1]) // 2
        if hidden < 1 or hidden % psa_heads(hidden):
            raise ValueError(f"yolo_pan: C2PSA's hidden width {hidden} does not split evenly into "
                             f"{psa_heads(hidden)} heads of 64 channels (c2psa_blocks)")
    fusions = 2 * (spec.num_levels - 1)
    with_c3k = [c3k == "all" or (c3k == "last" and i == fusions - 1) for i in range(fusions)]
    if norm_kwargs is None and norm == "batchnorm":
        norm_kwargs = {"eps": 1e-3, "momentum": 0.03}
    neck = YOLOPAN(spec, widths, num_blocks=num_blocks, style=block, c3k=with_c3k, shortcut=bool(shortcut),
                   sppf_kernel=sppf_kernel if sppf else None, c2psa_blocks=c2psa_blocks, upsample_mode=upsample_mode,
                   norm_layer=resolve_norm(norm, norm_kwargs), act_layer=resolve_act(act, act_kwargs, inplace=True))
    return init_weights(neck)
