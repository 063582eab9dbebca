"""Hugging Face transformers' Deformable DETR encoder -> the ``deformable_detr_encoder`` neck with its weights.

:func:`from_transformers_deformable_detr` takes a ``DeformableDetrForObjectDetection`` or ``DeformableDetrModel``
and returns the neck computing its input projections, position and level embeddings and encoder: its outputs
are the model's ``encoder_last_hidden_state`` split per level into NCHW maps (on an all-valid ``pixel_mask``).
The configuration is read from the modules and their ``config``; transformers is never imported here (modules
are recognised by class name).

The neck has no dropout: it equals the model in eval mode whatever ``config.dropout`` says. What it does not
reproduce (learned position embeddings, a non-ReLU/GELU/SiLU activation, a position embedding that is not
normalised) is a ``ValueError`` naming the attribute.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
from torch import nn

from .._features import FeatureSpec
from ..necks.deformable_detr_encoder import DeformableDETREncoder, deformable_detr_encoder
from .dispatch import load_exact, match_peer, register_converter
from .mmdet_families import _require, _spec
from .transformers_rtdetr import _act

__all__ = ["from_transformers_deformable_detr"]

# encoder-layer keys: transformers' names -> ours (the attention's own names are kept)
_LAYER_RENAMES = (("self_attn.", "self_attn."), ("self_attn_layer_norm.", "attn_norm."), ("mlp.fc1.", "fc1."),
                  ("mlp.fc2.", "fc2."), ("final_layer_norm.", "ffn_norm."))


def _layer_key(key: str) -> str:
    index, rest = key.split(".", 1)
    for theirs, ours in _LAYER_RENAMES:
        if rest.startswith(theirs):
            return f"layers.{index}.{ours}{rest[len(theirs):]}"
    raise ValueError(f"DeformableDetrEncoder: parameter layers.{key} has no fpn_zoo counterpart")


@register_converter("DeformableDetrForObjectDetection", "DeformableDetrModel")
def from_transformers_deformable_detr(peer: nn.Module, features: Any = None) -> DeformableDETREncoder:
    """Build the ``deformable_detr_encoder`` neck equivalent to a transformers Deformable DETR, with its weights.

    The result has the peer's dtype, device and train/eval mode; it takes the backbone maps (the model's
    ``backbone`` outputs) and returns one map per feature level.

    Args:
        peer: a ``DeformableDetrForObjectDetection`` or ``DeformableDetrModel``.
        features: the backbone levels it will run on (for the true strides); default: levels ending at stride 32
            (8, 16, 32 for three).

    Raises:
        TypeError: not a Deformable DETR model.
        ValueError: a configuration the neck does not reproduce (names the attribute).
    """
    model = getattr(peer, "model", peer)
    if type(model).__name__ != "DeformableDetrModel":
        raise TypeError(f"from_transformers_deformable_detr takes a DeformableDetrForObjectDetection or "
                        f"DeformableDetrModel, got {type(peer).__name__}")
    config = model.config
    pos = model.position_embedding
    _require(type(pos).__name__ == "DeformableDetrSinePositionEmbedding",
             f"config.position_embedding_type: {config.position_embedding_type!r}; only 'sine' converts")
    _require(pos.normalize and math.isclose(pos.scale, 2 * math.pi),
             f"position_embedding: normalize={pos.normalize}, scale={pos.scale}; only normalize=True, scale=2 pi "
             "converts")
    hidden = config.d_model
    backbone_levels = len(model.backbone.intermediate_channel_sizes) if config.num_feature_levels > 1 else 1
    projections = list(model.input_proj)
    extra = len(projections) - backbone_levels
    norms = []
    for i, proj in enumerate(projections):
        kernel, stride = (1, 1) if i < backbone_levels else (3, 2)
        _require(isinstance(proj, nn.Sequential) and len(proj) == 2 and type(proj[0]) is nn.Conv2d
                 and proj[0].kernel_size == (kernel, kernel) and proj[0].stride == (stride, stride)
                 and proj[0].bias is not None and type(proj[1]) is nn.GroupNorm and proj[1].affine,
                 f"input_proj.{i}: expected a biased {kernel}x{kernel} stride-{stride} Conv2d then an affine GroupNorm")
        norms.append((proj[1].num_groups, proj[1].eps))
    _require(len(set(norms)) == 1, f"input_proj: GroupNorms differ {sorted(set(norms))}; fpn_zoo uses one norm")
    groups, eps = norms[0]
    layers = list(model.encoder.layers)
    attn = layers[0].self_attn if layers else None
    _require(all(m.eps == 1e-5 for layer in layers for m in (layer.self_attn_layer_norm, layer.final_layer_norm)),
             "encoder.layers: LayerNorm eps other than 1e-5 does not convert")
    channels = tuple(proj[0].in_channels for proj in projections[:backbone_levels])
    spec = _spec(channels, None if features is None else FeatureSpec.resolve(features),  # default: ..., C4, C5
                 "from_transformers_deformable_detr", first_stride=2 ** max(0, 6 - len(channels)))
    neck = deformable_detr_encoder(
        spec, out_channels=hidden, num_layers=len(layers), num_heads=attn.n_heads if attn else 8,
        num_points=attn.n_points if attn else 4, ffn_channels=config.encoder_ffn_dim, extra_levels=extra,
        temperature=float(pos.temperature), position_offset=-0.5,
        ffn_act=_act(config.activation_function, "config.activation_function"),
        norm="groupnorm", norm_kwargs={"num_groups": groups, "eps": eps},
    )
    mapped: Dict[str, torch.Tensor] = {}
    if layers:
        mapped["level_embed"] = model.level_embed.detach()
    for key, value in nn.ModuleList(projections).state_dict().items():
        i, part, rest = key.split(".", 2)
        where = f"input_proj.{i}" if int(i) < backbone_levels else f"extra_proj.{int(i) - backbone_levels}"
        mapped[f"{where}.{'conv' if part == '0' else 'norm'}.{rest}"] = value
    for key, value in model.encoder.layers.state_dict().items():
        mapped[_layer_key(key)] = value
    return load_exact(match_peer(neck, model), mapped, "transformers DeformableDetrModel")  # dtype first: exact
