"""Deformable DETR's encoder: input projections, extra levels, then multi-scale deformable self-attention layers.

Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object Detection", ICLR 2021.
https://arxiv.org/abs/2010.04159 (the "neck + encoder" of Deformable DETR, DINO, Co-DETR, Grounding DINO).

- Input projections: a biased 1x1 conv + GroupNorm(32) takes every backbone level to ``out_channels`` (d);
  ``extra_levels`` more are made by biased stride-2 3x3 convs + GroupNorm, the first from the coarsest
  *backbone* map, the next ones from the previous extra level.
- Tokens: the ``L`` maps are flattened (rows first) and concatenated, ``N = sum_l H_l W_l`` tokens of width d.
  Each token ``q`` of level ``l`` at row ``i``, column ``j`` gets a position ``p_q`` = the 2-D sine embedding
  ``[PE(y), PE(x)]`` (d / 2 channels each; ``y = (i + 1 + offset) / (H_l + 1e-6) * 2 pi``, likewise ``x``;
  ``PE(t)_{2k} = sin(t / T^(2k / (d/2)))``, ``PE(t)_{2k+1} = cos(t / T^(2k / (d/2)))``) plus the learned
  ``level_embed[l]``, and a reference point ``r_q = ((j + 0.5) / W_l, (i + 0.5) / H_l)`` in [0, 1]^2.
- Each encoder layer (post-norm) is ``x = LN(x + MSDeformAttn(x + p, r, x))`` then ``x = LN(x + FFN(x))``,
  ``FFN = Linear(d, ffn) -> ReLU -> Linear(ffn, d)``. Multi-scale deformable attention with M heads, K points:

  ``MSDeformAttn(z_q, r_q, x) = W_o [ sum_{l,k} A_{mlqk} * V_m^l(r_q + dp_{mlqk} / (W_l, H_l)) ]_{m=1..M}``

  where ``dp = Linear(z)`` (``sampling_offsets``), ``A = softmax_{l,k}(Linear(z))`` per head
  (``attention_weights``), ``V^l`` = level l of ``value_proj(x)`` split into M heads and read bilinearly at a
  fractional location (``grid_sample``, zeros outside, ``align_corners=False``), ``W_o`` = ``output_proj``.
- Outputs: the encoder's memory split back per level into NCHW maps, one per level (backbone levels, then the
  extra levels), all ``out_channels`` wide.

The math is Hugging Face transformers' ``DeformableDetrModel`` (``input_proj``, ``position_embedding`` with
``normalize=True`` on an all-valid mask, ``level_embed``) + ``DeformableDetrEncoder``
(``transformers/models/deformable_detr/modeling_deformable_detr.py``, transformers 5.x) with its pure-PyTorch
``multi_scale_deformable_attention``; weights load through :func:`fpn_zoo.convert.from_module`. DINO's encoder
is the same with ``temperature=20`` and ``position_offset=0`` (mmdet's DINO config, transformers' Grounding
DINO). There is no dropout: the eval-mode math, also in training (Deformable DETR trains with dropout 0.1,
DINO with 0). No padding mask: every position of every map is valid.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("deformable_detr_encoder", [16, 32, 64], out_channels=32, num_layers=1)
    >>> neck.feature_info.reduction()
    [8, 16, 32, 64]
    >>> [tuple(f.shape[1:]) for f in neck([torch.rand(1, c, s, s + 2) for c, s in ((16, 15), (32, 8), (64, 4))])]
    [(32, 15, 17), (32, 8, 10), (32, 4, 6), (32, 2, 3)]
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import is_compiling
from .._features import FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.blocks import init_weights
from ..layers.config import check_count, check_knobs
from ..layers.conv import LayerSpec, resolve_act, resolve_norm
from ..layers.sampling import bilinear_taps, weighted_row_sums

__all__ = ["sine_position_embedding", "reference_points", "multi_scale_deformable_attention",
           "MultiScaleDeformableAttention", "DeformableEncoderLayer", "DeformableDETREncoder",
           "deformable_detr_encoder"]

NormFactory = Optional[Callable[[int], nn.Module]]
Shapes = List[Tuple[int, int]]


def sine_position_embedding(height: int, width: int, channels: int, temperature: float, offset: float,
                            dtype: torch.dtype, device: Optional[torch.device] = None,
                            dim_t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(height * width, channels)`` normalized 2-D sine embedding, rows first: ``[PE(y), PE(x)]``.

    ``y = (row + 1 + offset) / (height + 1e-6) * 2 pi`` (likewise ``x``); each half interleaves
    ``sin(t / T^(2k / half)), cos(t / T^(2k / half))``. Computed in float64, returned in ``dtype``. ``dim_t``:
    the ``channels // 4`` divisors ``T^(2k / half)``, when the caller computed them already (once per forward).
    """
    half = channels // 2
    if dim_t is None:
        dim_t = temperature ** (torch.arange(0, half, 2, dtype=torch.float64, device=device) / half)

    def embed(n: int) -> torch.Tensor:  # (n, half)
        t = (torch.arange(1, n + 1, dtype=torch.float64, device=device) + offset) / (n + 1e-6) * (2 * math.pi)
        t = t[:, None] / dim_t
        return torch.stack((t.sin(), t.cos()), dim=2).flatten(1)

    pos_y = embed(height)[:, None, :].expand(height, width, half)
    pos_x = embed(width)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).reshape(height * width, channels).to(dtype)


def reference_points(shapes: Shapes, dtype: torch.dtype, device: Optional[torch.device] = None) -> torch.Tensor:
    """``(sum H W, 2)``: every position's centre ``((j + 0.5) / W, (i + 0.5) / H)``, levels concatenated."""
    points = []
    for height, width in shapes:
        ref_y, ref_x = torch.meshgrid((torch.arange(height, dtype=dtype, device=device) + 0.5) / height,
                                      (torch.arange(width, dtype=dtype, device=device) + 0.5) / width, indexing="ij")
        points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), dim=-1))
    return torch.cat(points, dim=0)


def _attention_by_grid_sample(value: torch.Tensor, shapes: Shapes, sampling_locations: torch.Tensor,
                               attention_weights: torch.Tensor) -> torch.Tensor:
    """:func:`multi_scale_deformable_attention` through ``grid_sample``, one level at a time (traced graphs).

    Each level's samples are weighted and summed as soon as they are drawn, instead of stacking every level's
    samples first as transformers does: the same sum in another order, without the
    ``(batch * heads, head_dim, queries, levels * points)`` copy.
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels, points)
    out: Optional[torch.Tensor] = None  # (batch * heads, head_dim, queries)
    for level, (height, width) in enumerate(shapes):
        value_l = values[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (batch * heads, queries, points, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        term = (sampled * weights[..., level, :]).sum(-1)
        out = term if out is None else out + term
    assert out is not None, "shapes names no level"
    return out.view(batch, heads * head_dim, queries).transpose(1, 2)


def multi_scale_deformable_attention(value: torch.Tensor, shapes: Shapes, sampling_locations: torch.Tensor,
                                     attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention in plain PyTorch: the math of transformers' pure-PyTorch fallback.

    Every query's output is one weighted sum of value rows: its ``levels * points`` samples' four bilinear taps
    each (:mod:`fpn_zoo.layers.sampling`), summed by ``embedding_bag`` (with a backward of its own), without the
    sampled values (``grid_sample`` makes a ``(batch * heads, head_dim, queries, points)`` tensor per level, then
    multiplies and sums it). The same sum to float32 rounding; on the CPU a detector's training step with the
    whole encoder takes about 0.6x the time, inference about 0.75x. On other devices (not measured here), and
    while ``torch.compile`` / ``torch.export`` trace, the level-by-level ``grid_sample`` form is used (ops every
    backend and ONNX know).

    Args:
        value: ``(batch, tokens, heads, head_dim)``, the levels' maps flattened and concatenated.
        shapes: ``(height, width)`` of each level.
        sampling_locations: ``(batch, queries, heads, levels, points, 2)``, ``(x, y)`` in [0, 1].
        attention_weights: ``(batch, queries, heads, levels, points)``.

    Returns:
        ``(batch, queries, heads * head_dim)``.
    """
    if is_compiling() or value.device.type != "cpu":
        return _attention_by_grid_sample(value, shapes, sampling_locations, attention_weights)
    batch, tokens, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    device = value.device
    table = value.transpose(1, 2).reshape(batch * heads * tokens, head_dim)  # rows: batch, head, token
    extents = torch.tensor([[w, h] for h, w in shapes], device=device)  # (levels, 2): x, y extents
    starts = torch.tensor([0] + [h * w for h, w in shapes][:-1], device=device).cumsum(0)
    pixel = sampling_locations.transpose(1, 2) * extents[:, None].to(value.dtype) - 0.5  # (b, m, q, l, k, 2)
    first = (torch.arange(batch * heads, device=device) * tokens).view(batch, heads, 1, 1, 1) + starts[:, None]
    rows, weights = bilinear_taps(pixel[..., 0], pixel[..., 1], extents[:, 0, None], extents[:, 1, None],
                                  attention_weights.transpose(1, 2), first)
    taps = levels * points * 4
    out = weighted_row_sums(table, rows.reshape(-1, taps), weights.reshape(-1, taps))  # (batch * heads * queries, d)
    return out.view(batch, heads, queries, head_dim).transpose(1, 2).reshape(batch, queries, heads * head_dim)


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention (see the module docstring); transformers' parameter names.

    Args:
        channels: token width (d).
        num_heads: heads M (dividing ``channels``).
        num_levels: levels L every query samples.
        num_points: points K per head and level.
    """

    def __init__(self, channels: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(channels, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(channels, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: offsets start on a ring of directions, one per head, at radius
        1..K pixels; uniform attention weights; Xavier value / output projections."""
        m, lv, k = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(m, dtype=torch.float64) * (2.0 * math.pi / m)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(m, 1, 1, 2).repeat(1, lv, k, 1)
        grid = grid * torch.arange(1, k + 1, dtype=torch.float64).view(1, 1, k, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, value: torch.Tensor, ref: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        """Args: ``query`` (with positions) and ``value`` ``(batch, tokens, channels)``; ``ref`` ``(tokens, 2)``;
        ``shapes`` the levels' ``(height, width)``. Returns ``(batch, tokens, channels)``."""
        b, n, c = query.shape
        m, lv, k = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value).view(b, value.shape[1], m, c // m)
        offsets = self.sampling_offsets(query).view(b, n, m, lv, k, 2)
        weights = F.softmax(self.attention_weights(query).view(b, n, m, lv * k), -1).view(b, n, m, lv, k)
        per_level = [torch.stack((offsets[:, :, :, level, :, 0] / w, offsets[:, :, :, level, :, 1] / h), dim=-1)
                     for level, (h, w) in enumerate(shapes)]  # offsets in pixels of each level, normalised
        locations = ref[None, :, None, None, None, :] + torch.stack(per_level, dim=3)
        return self.output_proj(multi_scale_deformable_attention(v, shapes, locations, weights))


class DeformableEncoderLayer(nn.Module):
    """One post-norm encoder layer: deformable self-attention, add, LayerNorm; ReLU FFN, add, LayerNorm.

    Args:
        channels: token width.
        num_heads: attention heads.
        num_levels: levels.
        num_points: sampling points per head and level.
        ffn_channels: hidden width of the FFN.
        ffn_act: activation factory of the FFN.
    """

    def __init__(self, channels: int, num_heads: int, num_levels: int, num_points: int, ffn_channels: int,
                 ffn_act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(channels, num_heads, num_levels, num_points)
        self.attn_norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, ffn_channels)
        self.act = ffn_act()
        self.fc2 = nn.Linear(ffn_channels, channels)
        self.ffn_norm = nn.LayerNorm(channels)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        tokens = self.attn_norm(tokens + self.self_attn(tokens + pos, tokens, ref, shapes))
        return self.ffn_norm(tokens + self.fc2(self.act(self.fc1(tokens))))


def _projection(in_channels: int, out_channels: int, kernel_size: int, stride: int,
                norm_layer: NormFactory) -> nn.Sequential:
    """A biased conv (as Deformable DETR's: the bias is not redundant before a GroupNorm of several channels per
    group) then the norm; children ``conv``, ``norm``."""
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2))
    if norm_layer is not None:
        layers["norm"] = norm_layer(out_channels)
    return nn.Sequential(layers)


class DeformableDETREncoder(nn.Module):
    """Deformable DETR's input projections + encoder (see the module docstring).

    Args:
        spec: the backbone's levels (any number, any strides).
        out_channels: width d of the encoder and of every output.
        num_layers: encoder layers (0: the projections and extra levels only).
        num_heads: attention heads.
        num_points: sampling points per head and level.
        ffn_channels: FFN hidden width.
        extra_levels: stride-2 conv levels beyond the coarsest backbone level.
        temperature: position-embedding temperature T.
        position_offset: added to the 1-based position before normalising (-0.5: centres).
        ffn_act: FFN activation factory.
        norm_layer: norm factory of the projections, or None.
    """

    output_fmt = "NCHW"

    def __init__(self, spec: FeatureSpec, *, out_channels: int, num_layers: int, num_heads: int, num_points: int,
                 ffn_channels: int, extra_levels: int, temperature: float, position_offset: float,
                 ffn_act: Callable[[], nn.Module], norm_layer: NormFactory) -> None:
        super().__init__()
        self.spec = spec
        self.out_channels = c = out_channels
        self.temperature, self.position_offset = temperature, position_offset
        levels = spec.num_levels + extra_levels
        self.input_proj = nn.ModuleList(_projection(cin, c, 1, 1, norm_layer) for cin in spec.channels)
        self.extra_proj = nn.ModuleList(_projection(spec.channels[-1] if i == 0 else c, c, 3, 2, norm_layer)
                                        for i in range(extra_levels))
        self.level_embed = nn.Parameter(torch.empty(levels, c)) if num_layers else None
        self.layers = nn.ModuleList(DeformableEncoderLayer(c, num_heads, levels, num_points, ffn_channels, ffn_act)
                                    for _ in range(num_layers))
        reductions = list(spec.reductions) + [spec.reductions[-1] * 2 ** (i + 1) for i in range(extra_levels)]
        self.feature_info = make_feature_info([c] * levels, reductions)

    def encode(self, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The encoder on projected NCHW maps (one per level, ``out_channels`` wide); the same maps back."""
        if self.level_embed is None:
            return list(maps)
        shapes: Shapes = [(x.shape[-2], x.shape[-1]) for x in maps]
        b, c = maps[0].shape[:2]
        tokens = torch.cat([x.flatten(2).transpose(1, 2) for x in maps], dim=1)
        dim_t = self.temperature ** (torch.arange(0, c // 2, 2, dtype=torch.float64, device=tokens.device) / (c // 2))
        pos = torch.cat([sine_position_embedding(h, w, c, self.temperature, self.position_offset, tokens.dtype,
                                                 tokens.device, dim_t) + self.level_embed[level]
                         for level, (h, w) in enumerate(shapes)], dim=0).unsqueeze(0)
        ref = reference_points(shapes, tokens.dtype, tokens.device)
        for layer in self.layers:
            tokens = layer(tokens, pos, ref, shapes)
        return [t.transpose(1, 2).reshape(b, c, h, w)
                for t, (h, w) in zip(tokens.split([h * w for h, w in shapes], dim=1), shapes)]

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: one NCHW map per backbone level, then the extra levels."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        maps = [proj(x) for proj, x in zip(self.input_proj, features)]
        source = features[-1]
        for extra in self.extra_proj:
            source = extra(source)
            maps.append(source)
        return self.encode(maps)


@register_neck("deformable_detr_encoder")
def deformable_detr_encoder(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    num_layers: int = 6,
    num_heads: int = 8,
    num_points: int = 4,
    ffn_channels: int = 1024,
    extra_levels: int = 1,
    temperature: float = 10000.0,
    position_offset: float = -0.5,
    ffn_act: LayerSpec = "relu",
    norm: LayerSpec = "groupnorm",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
) -> DeformableDETREncoder:
    """Build Deformable DETR's input projections + encoder (defaults: transformers' ``DeformableDetrConfig``).

    Args:
        spec: the backbone's levels: any number (one for a plain ViT), any strides.
        out_channels: encoder width (``d_model``); a multiple of 4 (the sine embedding), of ``num_heads`` and of
            the norm's groups (GroupNorm: 32).
        num_layers: encoder layers (``encoder_layers``); 0 keeps the projections only.
        num_heads: attention heads (``encoder_attention_heads``).
        num_points: sampling points per head and level (``encoder_n_points``).
        ffn_channels: FFN width (``encoder_ffn_dim``; DINO: 2048).
        extra_levels: stride-2 3x3 conv levels after the coarsest (``num_feature_levels`` - backbone levels).
        temperature: position-embedding temperature (DINO: 20).
        position_offset: added to the 1-based positions before normalising (DINO: 0).
        ffn_act: FFN activation (``activation_function``).
        norm: norm after every projection conv (GroupNorm, 32 groups unless ``norm_kwargs`` say otherwise).
        norm_kwargs: extra arguments of the norm layer.

    Raises:
        TypeError: a count that is not an int.
        ValueError: a bad knob, or ``out_channels`` not divisible as above.
    """
    check_knobs(out_channels=out_channels, extra_levels=extra_levels, num_heads=num_heads, num_points=num_points,
                ffn_channels=ffn_channels)
    check_count("num_layers", num_layers, minimum=0)
    if out_channels % 4 or out_channels % num_heads:
        raise ValueError(f"deformable_detr_encoder: out_channels ({out_channels}) must be a multiple of 4 (the sine "
                         f"embedding) and of num_heads ({num_heads})")
    for name, value in (("temperature", temperature), ("position_offset", position_offset)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"deformable_detr_encoder: {name} must be a finite number, got {value!r}")
    if not temperature > 0:
        raise ValueError(f"deformable_detr_encoder: temperature must be positive, got {temperature!r}")
    ffn_layer = resolve_act(ffn_act)
    if ffn_layer is None:
        raise ValueError("deformable_detr_encoder: ffn_act must name an activation, got None")
    norm_layer = resolve_norm(norm, norm_kwargs)
    if norm_layer is not None:
        try:
            norm_layer(out_channels)
        except (ValueError, AssertionError, RuntimeError) as e:
            raise ValueError(f"deformable_detr_encoder: out_channels ({out_channels}) must be divisible by the "
                             f"norm's groups (GroupNorm: num_groups, 32 by default): {e}") from None
    neck = DeformableDETREncoder(
        spec, out_channels=out_channels, num_layers=num_layers, num_heads=num_heads, num_points=num_points,
        ffn_channels=ffn_channels, extra_levels=extra_levels, temperature=float(temperature),
        position_offset=float(position_offset), ffn_act=ffn_layer, norm_layer=norm_layer,
    )
    init_weights(neck)  # convs, norms; the attention modules initialised themselves
    if neck.level_embed is not None:
        nn.init.normal_(neck.level_embed)
    return neck
