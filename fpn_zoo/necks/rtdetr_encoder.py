"""RT-DETR's hybrid encoder: input projections, AIFI (self-attention on the coarsest map), CCFM (CSP-Rep PAN).

Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection", CVPR 2024. https://arxiv.org/abs/2304.08069

- Input projections: a 1x1 conv + BatchNorm (no activation) takes every level to ``out_channels``.
- AIFI: transformer encoder layers (post-norm: attention, add, LayerNorm; MLP, add, LayerNorm) over the
  flattened coarsest map, a 2-D sin-cos position embedding added to queries and keys.
- CCFM, top-down: a 1x1 conv-BN-SiLU on the running map (which also replaces that level's map for the
  bottom-up path), nearest upsampling to the finer level, concatenation ``[upsampled, level]``, a CSP-Rep block.
  Bottom-up: a stride-2 3x3 conv-BN-SiLU, concatenation with the level's top-down map, a CSP-Rep block.
- CSP-Rep block (``RepC3``): two 1x1 conv-BN-SiLU branches; one runs ``num_blocks`` RepVGG blocks
  (``act(bn(conv3x3) + bn(conv1x1))``); the branches are summed, then a 1x1 conv-BN-SiLU when the hidden
  width differs from the output.

The math is Hugging Face transformers' ``RTDetrModel.encoder_input_proj`` + ``RTDetrHybridEncoder``
(``transformers/models/rt_detr/modeling_rt_detr.py``, transformers 5.x), whose position embedding is laid out
``[sin h, cos h, sin w, cos w]`` (the reference repository's on square maps); transformers upsamples by a fixed
factor 2, here to the finer map's size (the same on x2 sizes). Every output has ``out_channels`` channels.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("rtdetr_r18_encoder", [16, 32, 64], out_channels=32)
    >>> [tuple(f.shape[1:]) for f in neck([torch.rand(1, c, s, s + 2) for c, s in ((16, 29), (32, 15), (64, 8))])]
    [(32, 29, 31), (32, 15, 17), (32, 8, 10)]
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._features import BackboneMismatch, FeatureSpec, check_module_inputs, make_feature_info
from .._registry import register_neck
from ..layers.blocks import init_weights
from ..layers.config import check_count, check_knobs
from ..layers.conv import ConvNormAct, LayerSpec, resolve_act, resolve_norm
from ..layers.resample import resize_to

__all__ = ["sincos_position_embedding", "RepVGGBlock", "CSPRepBlock", "AIFILayer", "RTDETRHybridEncoder",
           "rtdetr_encoder"]

NormFactory = Optional[Callable[[int], nn.Module]]
ActFactory = Optional[Callable[[], nn.Module]]


def sincos_position_embedding(height: int, width: int, channels: int, temperature: float,
                              dtype: torch.dtype, device: Optional[torch.device] = None) -> torch.Tensor:
    """``(height * width, channels)`` embedding, rows first: ``[sin(h w_k), cos(h w_k), sin(w w_k), cos(w w_k)]``.

    Frequencies ``w_k = temperature ** (-k / (channels / 4))``; computed in float64, returned in ``dtype``.
    """
    quarter = channels // 4
    freqs = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=device),
                                torch.arange(width, dtype=torch.float64, device=device), indexing="ij")
    by_row, by_col = rows.flatten().outer(freqs), cols.flatten().outer(freqs)
    return torch.cat([by_row.sin(), by_row.cos(), by_col.sin(), by_col.cos()], dim=1).to(dtype)


class RepVGGBlock(nn.Module):
    """``act(conv3x3-norm(x) + conv1x1-norm(x))`` (RepVGG, https://arxiv.org/abs/2101.03697, before folding)."""

    def __init__(self, channels: int, norm_layer: NormFactory, act_layer: ActFactory) -> None:
        super().__init__()
        self.conv3x3 = ConvNormAct(channels, channels, 3, norm_layer=norm_layer)
        self.conv1x1 = ConvNormAct(channels, channels, 1, norm_layer=norm_layer)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv3x3(x) + self.conv1x1(x))


class CSPRepBlock(nn.Module):
    """RT-DETR's ``RepC3``: ``out(blocks(main(x)) + short(x))``; ``out`` is a 1x1 conv or nothing.

    Args:
        in_channels: channels of the (concatenated) input.
        out_channels: output channels.
        hidden_channels: width of the branches (``out_channels * hidden_expansion``).
        num_blocks: RepVGG blocks on the main branch.
        norm_layer: norm factory, or None.
        act_layer: activation factory, or None.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, num_blocks: int,
                 norm_layer: NormFactory, act_layer: ActFactory) -> None:
        super().__init__()
        self.main = ConvNormAct(in_channels, hidden_channels, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.short = ConvNormAct(in_channels, hidden_channels, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.blocks = nn.Sequential(*(RepVGGBlock(hidden_channels, norm_layer, act_layer) for _ in range(num_blocks)))
        self.out = (ConvNormAct(hidden_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)
                    if hidden_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.main(x)) + self.short(x))


class AIFILayer(nn.Module):
    """One post-norm transformer encoder layer; the position embedding is added to queries and keys only.

    Args:
        channels: token width.
        num_heads: attention heads (dividing ``channels``).
        ffn_channels: hidden width of the MLP.
        ffn_act: activation factory of the MLP (GELU).
        layer_norm_eps: epsilon of both LayerNorms.
    """

    def __init__(self, channels: int, num_heads: int, ffn_channels: int, ffn_act: Callable[[], nn.Module],
                 layer_norm_eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(channels, channels) for _ in range(4))
        self.attn_norm = nn.LayerNorm(channels, eps=layer_norm_eps)
        self.fc1 = nn.Linear(channels, ffn_channels)
        self.act = ffn_act()
        self.fc2 = nn.Linear(ffn_channels, channels)
        self.ffn_norm = nn.LayerNorm(channels, eps=layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Args: ``tokens`` ``(batch, positions, channels)``; ``pos`` ``(1, positions, channels)``."""
        with_pos = tokens + pos
        attn = F.scaled_dot_product_attention(self._heads(self.q_proj(with_pos)), self._heads(self.k_proj(with_pos)),
                                              self._heads(self.v_proj(tokens)))
        tokens = self.attn_norm(tokens + self.out_proj(attn.transpose(1, 2).flatten(2)))
        return self.ffn_norm(tokens + self.fc2(self.act(self.fc1(tokens))))


class RTDETRHybridEncoder(nn.Module):
    """RT-DETR's hybrid encoder (see the module docstring).

    Args:
        spec: the backbone's levels (distinct strides, finest first).
        out_channels: width of the encoder and of every output.
        input_proj: project every input to ``out_channels`` first (False: inputs already have that width,
            as transformers' ``RTDetrHybridEncoder`` takes them).
        num_heads: AIFI attention heads.
        ffn_channels: AIFI MLP width.
        num_encoder_layers: AIFI layers on the coarsest map.
        ffn_act: AIFI MLP activation factory.
        layer_norm_eps: AIFI LayerNorm epsilon.
        temperature: position-embedding temperature.
        hidden_expansion: CSP-Rep branch width relative to ``out_channels``.
        num_blocks: RepVGG blocks per CSP-Rep block.
        upsample_mode: interpolation of the top-down path.
        norm_layer: norm factory of the convs, or None.
        act_layer: activation factory of the convs, or None.
        proj_norm_layer: norm factory of the input projections.
    """

    output_fmt = "NCHW"

    def __init__(self, spec: FeatureSpec, *, out_channels: int, input_proj: bool, num_heads: int, ffn_channels: int,
                 num_encoder_layers: int, ffn_act: Callable[[], nn.Module], layer_norm_eps: float, temperature: float,
                 hidden_expansion: float, num_blocks: int, upsample_mode: str, norm_layer: NormFactory,
                 act_layer: ActFactory, proj_norm_layer: NormFactory) -> None:
        super().__init__()
        self.spec = spec
        self.out_channels = c = out_channels
        self.temperature = temperature
        self.upsample_mode = upsample_mode
        levels = range(spec.num_levels - 1)
        self.input_proj = nn.ModuleList(ConvNormAct(cin, c, 1, norm_layer=proj_norm_layer) for cin in spec.channels
                                        ) if input_proj else None
        self.aifi = nn.ModuleList(AIFILayer(c, num_heads, ffn_channels, ffn_act, layer_norm_eps)
                                  for _ in range(num_encoder_layers))
        hidden = int(c * hidden_expansion)

        def csp_rep() -> CSPRepBlock:
            return CSPRepBlock(2 * c, c, hidden, num_blocks, norm_layer, act_layer)

        # lateral[l]: 1x1 on the running map of level l + 1 before it goes up into level l
        self.lateral = nn.ModuleList(ConvNormAct(c, c, 1, norm_layer=norm_layer, act_layer=act_layer) for _ in levels)
        self.top_down = nn.ModuleList(csp_rep() for _ in levels)
        self.down = nn.ModuleList(ConvNormAct(c, c, 3, 2, norm_layer=norm_layer, act_layer=act_layer) for _ in levels)
        self.bottom_up = nn.ModuleList(csp_rep() for _ in levels)
        self.feature_info = make_feature_info([c] * spec.num_levels, spec.reductions)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """AIFI on one NCHW map."""
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        pos = sincos_position_embedding(h, w, c, self.temperature, x.dtype, x.device).unsqueeze(0)
        for layer in self.aifi:
            tokens = layer(tokens, pos)
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: one map per backbone level. Returns: one NCHW map per level, finest first."""
        check_module_inputs(self, features, self.spec)
        if self.spec.input_fmt == "NHWC":
            features = [x.permute(0, 3, 1, 2) for x in features]
        maps = list(features) if self.input_proj is None else [proj(x) for proj, x in zip(self.input_proj, features)]
        n = len(maps)
        running = self.encode(maps[-1]) if len(self.aifi) else maps[-1]
        tops: List[torch.Tensor] = list(maps)
        for level in reversed(range(n - 1)):
            tops[level + 1] = running = self.lateral[level](running)
            up = resize_to(running, maps[level].shape[-2:], self.upsample_mode)
            tops[level] = running = self.top_down[level](torch.cat([up, maps[level]], dim=1))
        outs = [tops[0]]
        for level in range(n - 1):
            down = resize_to(self.down[level](outs[-1]), tops[level + 1].shape[-2:], self.upsample_mode)
            outs.append(self.bottom_up[level](torch.cat([down, tops[level + 1]], dim=1)))
        return outs


@register_neck("rtdetr_encoder")
def rtdetr_encoder(
    spec: FeatureSpec,
    *,
    out_channels: int = 256,
    input_proj: bool = True,
    num_heads: int = 8,
    ffn_channels: int = 1024,
    num_encoder_layers: int = 1,
    ffn_act: LayerSpec = "gelu",
    layer_norm_eps: float = 1e-5,
    temperature: float = 10000.0,
    hidden_expansion: float = 1.0,
    num_blocks: int = 3,
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "silu",
    norm_kwargs: Optional[Mapping[str, Any]] = None,
    act_kwargs: Optional[Mapping[str, Any]] = None,
    upsample_mode: str = "nearest",
) -> RTDETRHybridEncoder:
    """Build RT-DETR's hybrid encoder (defaults: transformers' ``RTDetrConfig``, RT-DETR-R50).

    Args:
        spec: the backbone's levels, at distinct strides (RT-DETR: 8/16/32).
        out_channels: encoder width (``encoder_hidden_dim``); a multiple of 4 and of ``num_heads``.
        input_proj: 1x1 conv + norm projections of the inputs (``RTDetrModel.encoder_input_proj``).
        num_heads: AIFI attention heads.
        ffn_channels: AIFI MLP width (``encoder_ffn_dim``).
        num_encoder_layers: AIFI layers (``encoder_layers``); 0 skips AIFI.
        ffn_act: AIFI MLP activation (``encoder_activation_function``).
        layer_norm_eps: AIFI LayerNorm epsilon.
        temperature: position-embedding temperature.
        hidden_expansion: CSP-Rep branch width relative to ``out_channels`` (R18/R34: 0.5).
        num_blocks: RepVGG blocks per CSP-Rep block.
        norm: norm after every conv, the input projections' included (BatchNorm, eps 1e-5).
        act: activation of the CCFM convs (``activation_function``).
        norm_kwargs: extra arguments of the norm layer.
        act_kwargs: extra arguments of the activation.
        upsample_mode: interpolation of the top-down path.

    Raises:
        BackboneMismatch: fewer than two levels, or levels at a repeated stride (a plain ViT).
        ValueError: a bad knob, or unprojected inputs of another width than ``out_channels``.
    """
    check_knobs(out_channels=out_channels, upsample_mode=upsample_mode, num_heads=num_heads,
                ffn_channels=ffn_channels, num_blocks=num_blocks)
    check_count("num_encoder_layers", num_encoder_layers, minimum=0)
    if out_channels % 4 or out_channels % num_heads:
        raise ValueError(f"rtdetr_encoder: out_channels ({out_channels}) must be a multiple of 4 (the sin-cos "
                         f"embedding) and of num_heads ({num_heads})")
    for name, value in (("hidden_expansion", hidden_expansion), ("temperature", temperature),
                        ("layer_norm_eps", layer_norm_eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"rtdetr_encoder: {name} must be a positive number, got {value!r}")
    if int(out_channels * hidden_expansion) < 1:
        raise ValueError(f"rtdetr_encoder: hidden_expansion={hidden_expansion} leaves the CSP-Rep blocks no channels")
    if spec.num_levels < 2 or len(set(spec.reductions)) != spec.num_levels:
        raise BackboneMismatch(
            f"rtdetr_encoder fuses levels at distinct strides, but the backbone gives strides "
            f"{list(spec.reductions)}: use 'simple_pyramid' to build a pyramid from a single-stride map first"
        )
    if not input_proj and any(c != out_channels for c in spec.channels):
        raise ValueError(f"rtdetr_encoder: input_proj=False needs inputs of out_channels={out_channels} channels, "
                         f"got {list(spec.channels)}")
    ffn_layer = resolve_act(ffn_act)
    if ffn_layer is None:
        raise ValueError("rtdetr_encoder: ffn_act must name an activation, got None")
    norm_layer = resolve_norm(norm, norm_kwargs)
    neck = RTDETRHybridEncoder(
        spec, out_channels=out_channels, input_proj=bool(input_proj), num_heads=num_heads, ffn_channels=ffn_channels,
        num_encoder_layers=num_encoder_layers, ffn_act=ffn_layer, layer_norm_eps=float(layer_norm_eps),
        temperature=float(temperature), hidden_expansion=float(hidden_expansion), num_blocks=num_blocks,
        upsample_mode=upsample_mode, norm_layer=norm_layer, act_layer=resolve_act(act, act_kwargs, inplace=True),
        proj_norm_layer=norm_layer,
    )
    return init_weights(neck)
