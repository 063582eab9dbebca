"""Hugging Face transformers' RT-DETR encoder -> the ``rtdetr_encoder`` neck with its configuration and weights.

:func:`from_transformers_rtdetr` takes an ``RTDetrForObjectDetection`` or ``RTDetrModel`` (input projections +
``RTDetrHybridEncoder``) or the ``RTDetrHybridEncoder`` alone (its inputs are already projected), reads the
configuration from the modules and their ``config``, builds ``rtdetr_encoder`` and loads the weights with an
exact key correspondence. transformers is never imported here: modules are recognised by class name.

An encoder fpn_zoo does not reproduce (pre-norm layers, AIFI on another level than the coarsest, a fixed
``eval_size`` position embedding, dropout, an activation it has no name for ...) is a ``ValueError`` naming the
attribute.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .._features import FeatureSpec
from ..necks.rtdetr_encoder import RTDETRHybridEncoder, rtdetr_encoder
from .dispatch import register_converter

__all__ = ["from_transformers_rtdetr"]

# transformers' activation names -> timm's (ACT2CLS / ACT2FN keys)
_ACTS = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu"}
# (pattern, replacement) on encoder keys, first match wins; {L} is filled with the level count.
_BLOCK_RENAMES = [(r"\.conv1\.", ".main."), (r"\.conv2\.", ".short."), (r"\.conv3\.", ".out.")]
_REP_RENAMES = [(r"^bottlenecks\.(\d+)\.conv1\.", r"blocks.\1.conv3x3."),
                (r"^bottlenecks\.(\d+)\.conv2\.", r"blocks.\1.conv1x1.")]
_AIFI_RENAMES = [("self_attn.q_proj.", "q_proj."), ("self_attn.k_proj.", "k_proj."), ("self_attn.v_proj.", "v_proj."),
                 ("self_attn.o_proj.", "out_proj."), ("self_attn_layer_norm.", "attn_norm."), ("mlp.fc1.", "fc1."),
                 ("mlp.fc2.", "fc2."), ("final_layer_norm.", "ffn_norm.")]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _parts(peer: nn.Module) -> Tuple[Optional[nn.ModuleList], nn.Module]:
    """(input projections or None, the hybrid encoder) of a detector, a model or an encoder."""
    model = getattr(peer, "model", peer)
    if type(model).__name__ == "RTDetrModel":
        return model.encoder_input_proj, model.encoder
    if type(peer).__name__ == "RTDetrHybridEncoder":
        return None, peer
    raise TypeError(f"from_transformers_rtdetr takes an RTDetrForObjectDetection, RTDetrModel or "
                    f"RTDetrHybridEncoder, got {type(peer).__name__}")


def _act(name: Any, where: str) -> str:
    _require(isinstance(name, str) and name in _ACTS, f"{where}: {name!r} has no fpn_zoo equivalent ({sorted(_ACTS)})")
    return _ACTS[name]


def _block_key(rest: str) -> str:
    """A key inside a CSP-Rep block (``conv1``/``conv2``/``conv3``/``bottlenecks``), in our names."""
    for pattern, replacement in _REP_RENAMES:
        new, hits = re.subn(pattern, replacement, rest)
        if hits:
            return new
    for pattern, replacement in _BLOCK_RENAMES:
        new, hits = re.subn(pattern, replacement, "." + rest)
        if hits:
            return new[1:]
    raise ValueError(f"CSP-Rep block key {rest!r} has no fpn_zoo counterpart")


def _encoder_key(key: str, levels: int) -> str:
    """An ``RTDetrHybridEncoder`` state-dict key in our names (transformers counts top-down stages from the top)."""
    match = re.match(r"^aifi\.0\.layers\.(\d+)\.(.*)$", key)
    if match:
        layer, rest = match.groups()
        for theirs, ours in _AIFI_RENAMES:
            if rest.startswith(theirs):
                return f"aifi.{layer}.{ours}{rest[len(theirs):]}"
    match = re.match(r"^(lateral_convs|fpn_blocks|downsample_convs|pan_blocks)\.(\d+)\.(.*)$", key)
    if match:
        kind, index, rest = match.groups()
        level = levels - 2 - int(index) if kind in ("lateral_convs", "fpn_blocks") else int(index)
        ours = {"lateral_convs": "lateral", "fpn_blocks": "top_down", "downsample_convs": "down",
                "pan_blocks": "bottom_up"}[kind]
        return f"{ours}.{level}.{_block_key(rest) if kind.endswith('blocks') else rest}"
    raise ValueError(f"RTDetrHybridEncoder: parameter {key!r} has no fpn_zoo counterpart")


def _batchnorm_eps(modules: List[Tuple[str, nn.Module]]) -> float:
    eps = set()
    for where, m in modules:
        _require(type(m) is nn.BatchNorm2d and m.affine and m.track_running_stats,
                 f"{where}: {type(m).__name__}; only an affine BatchNorm2d with running stats converts")
        eps.add(m.eps)
    _require(len(eps) == 1, f"RT-DETR encoder: BatchNorm epsilons differ {sorted(eps)} (config.batch_norm_eps vs the "
                            "input projections' 1e-5); fpn_zoo uses one norm")
    return eps.pop()


@register_converter("RTDetrForObjectDetection", "RTDetrModel", "RTDetrHybridEncoder")
def from_transformers_rtdetr(peer: nn.Module, features: Any = None) -> RTDETRHybridEncoder:
    """Build the ``rtdetr_encoder`` neck equivalent to a transformers RT-DETR encoder, with its weights.

    The result has the peer's dtype, device and train/eval mode. From a model or detector it includes the input
    projections and takes the backbone maps; from an ``RTDetrHybridEncoder`` alone it takes projected maps
    (``input_proj=False``). Its outputs are the encoder's ``last_hidden_state`` maps.

    Args:
        peer: an ``RTDetrForObjectDetection``, ``RTDetrModel`` or ``RTDetrHybridEncoder``.
        features: the backbone levels it will run on (for the true strides); default ``config.feat_strides``.

    Raises:
        TypeError: not an RT-DETR module.
        ValueError: a configuration ``rtdetr_encoder`` does not reproduce (names the attribute).
    """
    projections, encoder = _parts(peer)
    config = encoder.config
    levels = len(encoder.lateral_convs) + 1
    hidden = encoder.encoder_hidden_dim
    _require(not config.normalize_before, "config.normalize_before: pre-norm AIFI layers are not supported")
    _require(config.eval_size is None, f"config.eval_size: {config.eval_size}; transformers then drops the position "
                                       "embedding in eval mode, which fpn_zoo does not reproduce")
    for name in ("dropout", "activation_dropout"):
        _require(getattr(config, name) == 0, f"config.{name}: {getattr(config, name)}; only 0 converts")
    aifi_layers = 0
    if config.encoder_layers > 0:
        _require(list(encoder.encode_proj_layers) == [levels - 1],
                 f"config.encode_proj_layers: {list(encoder.encode_proj_layers)}; only AIFI on the coarsest level "
                 f"([{levels - 1}]) converts")
        aifi_layers = len(encoder.aifi[0].layers)
    attn = encoder.aifi[0].layers[0].self_attn if aifi_layers else None
    blocks = list(encoder.fpn_blocks) + list(encoder.pan_blocks)
    norms = [(f"encoder.{n}", m) for n, m in encoder.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if projections is not None:
        for i, proj in enumerate(projections):
            _require(isinstance(proj, nn.Sequential) and len(proj) == 2 and type(proj[0]) is nn.Conv2d
                     and proj[0].kernel_size == (1, 1) and proj[0].bias is None,
                     f"encoder_input_proj.{i}: expected a bias-free 1x1 Conv2d then a norm")
            norms.append((f"encoder_input_proj.{i}.1", proj[1]))
        channels = tuple(proj[0].in_channels for proj in projections)
    else:
        channels = (hidden,) * levels
    eps = _batchnorm_eps(norms)
    spec = FeatureSpec(channels, tuple(int(s) for s in encoder.feat_strides))
    if features is not None:
        hint = FeatureSpec.resolve(features)
        _require(hint.channels == channels, f"from_transformers_rtdetr: features have channels {list(hint.channels)}, "
                                            f"but the encoder reads {list(channels)}")
        spec = hint
    neck = rtdetr_encoder(
        spec, out_channels=hidden, input_proj=projections is not None,
        num_heads=hidden // attn.head_dim if attn is not None else 8, ffn_channels=config.encoder_ffn_dim,
        num_encoder_layers=aifi_layers,
        ffn_act=_act(config.encoder_activation_function, "config.encoder_activation_function"),
        layer_norm_eps=config.layer_norm_eps, temperature=float(config.positional_encoding_temperature),
        hidden_expansion=config.hidden_expansion, num_blocks=len(blocks[0].bottlenecks),
        act=_act(config.activation_function, "config.activation_function"), norm_kwargs={"eps": eps},
    )
    mapped: Dict[str, torch.Tensor] = {}
    for key, value in encoder.state_dict().items():
        mapped[_encoder_key(key, levels)] = value
    if projections is not None:
        for key, value in projections.state_dict().items():
            i, part, rest = key.split(".", 2)
            mapped[f"input_proj.{i}.{'conv' if part == '0' else 'norm'}.{rest}"] = value
    ours = neck.state_dict()
    missing, unexpected = sorted(set(ours) - set(mapped)), sorted(set(mapped) - set(ours))
    _require(not missing and not unexpected, f"RT-DETR encoder: state dicts do not correspond; fpn_zoo tensors with "
                                             f"no peer tensor {missing}, peer tensors with none here {unexpected}")
    for key, value in mapped.items():
        _require(ours[key].shape == value.shape, f"RT-DETR encoder: {key} is {tuple(value.shape)} in the peer, "
                                                 f"{tuple(ours[key].shape)} here")
    param = next(encoder.parameters())
    neck.to(device=param.device, dtype=param.dtype)
    neck.load_state_dict(mapped)
    return neck.train(encoder.training)
