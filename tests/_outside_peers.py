"""The peers from outside mmdet (ultralytics, Hugging Face transformers) for parity tests: built from their
shipped configs with random weights (nothing is downloaded), with non-trivial norm statistics."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import pytest
import torch
from torch import nn


def randomize_norms(module: nn.Module) -> None:
    """Non-trivial norm weights and running stats, so eval-mode norms are really compared."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 2), m.bias.uniform_(-1, 1)


def ultralytics_model(yaml_name: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A ``DetectionModel`` from a yaml shipped in the ultralytics package, random init, eval mode."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    model = tasks.DetectionModel(yaml_name, verbose=False)
    randomize_norms(model)
    return model.to(dtype).eval()


def run_capturing(model: nn.Module, layer_indices: Sequence[int], image: torch.Tensor) -> Dict[int, torch.Tensor]:
    """Run ``model`` on ``image`` and return the outputs of its layers ``layer_indices`` (hooks, no copies of
    ultralytics' forward loop)."""
    seen: Dict[int, torch.Tensor] = {}
    handles = [model.model[i].register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, out))
               for i in layer_indices]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for h in handles:
            h.remove()
    return seen


def max_abs(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> List[float]:
    return [(x - y).abs().max().item() for x, y in zip(a, b)]


def rtdetr_model(dtype: torch.dtype = torch.float64, **config_overrides) -> nn.Module:
    """A small ``RTDetrModel`` (tiny ResNet backbone, 32-wide encoder), random init, eval mode."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.rt_detr.modeling_rt_detr import RTDetrModel

    backbone = transformers.RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                               out_features=["stage2", "stage3", "stage4"])
    kwargs = dict(backbone_config=backbone, encoder_in_channels=[16, 24, 32], encoder_hidden_dim=32,
                  encoder_ffn_dim=48, encoder_attention_heads=4, d_model=32, decoder_layers=1, num_queries=10,
                  num_denoising=0, decoder_ffn_dim=32, decoder_attention_heads=4)
    kwargs.update(config_overrides)
    torch.manual_seed(0)
    model = RTDetrModel(transformers.RTDetrConfig(**kwargs))
    randomize_norms(model)
    return model.to(dtype).eval()


def rtdetr_encoder_outputs(model: nn.Module, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The peer's own modules on backbone maps: input projections, then the hybrid encoder."""
    with torch.no_grad():
        projected = [proj(x) for proj, x in zip(model.encoder_input_proj, maps)]
        return list(model.encoder(projected).last_hidden_state)


def upernet_head(in_channels: Sequence[int], dtype: torch.dtype = torch.float64, **config_overrides) -> nn.Module:
    """A transformers ``UperNetHead`` from ``UperNetConfig`` (random init, eval mode)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.upernet.modeling_upernet import UperNetHead

    kwargs = dict(hidden_size=16, num_labels=3)
    kwargs.update(config_overrides)
    torch.manual_seed(0)
    head = UperNetHead(transformers.UperNetConfig(**kwargs), in_channels=list(in_channels))
    randomize_norms(head)
    return head.to(dtype).eval()


def run_hooked(model: nn.Module, modules: Sequence[nn.Module], *args) -> List[torch.Tensor]:
    """Run ``model(*args)`` and return what each of ``modules`` output during the call."""
    seen: Dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, a, out, k=k: seen.__setitem__(k, out))
               for k, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return [seen[k] for k in range(len(modules))]


def deformable_detr_model(dtype: torch.dtype = torch.float64, levels: int = 4, **config_overrides) -> nn.Module:
    """A small ``DeformableDetrModel`` (tiny ResNet backbone, C3-C5 of 16/24/32 channels, 32-wide encoder of
    2 layers, 4 heads, 2 points), random init with non-trivial offsets and norms, eval mode.

    ``levels``: feature levels; 3 backbone levels + ``levels - 3`` stride-2 conv levels.
    """
    transformers = pytest.importorskip("transformers")
    from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrModel

    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                         out_features=["stage2", "stage3", "stage4"])
    kwargs = dict(backbone_config=backbone, d_model=32, encoder_layers=2, encoder_attention_heads=4,
                  encoder_n_points=2, encoder_ffn_dim=48, decoder_layers=1, decoder_attention_heads=4,
                  decoder_n_points=2, decoder_ffn_dim=32, num_queries=10, num_feature_levels=levels)
    kwargs.update(config_overrides)
    torch.manual_seed(0)
    model = DeformableDetrModel(transformers.DeformableDetrConfig(**kwargs))
    randomize_norms(model)
    with torch.no_grad():  # offsets that depend on the query (zero weights at init), reaching past the borders
        for layer in model.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.5)
            layer.self_attn.attention_weights.weight.normal_(0, 0.3)
    return model.to(dtype).eval()


def deformable_detr_encoder_outputs(model: nn.Module, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The peer model's own forward on backbone ``maps`` (its backbone replaced by a stub returning them, an
    all-valid pixel mask): ``encoder_last_hidden_state`` split back per level into NCHW maps."""

    class Stub(nn.Module):
        def forward(self, pixel_values):
            return list(maps)

    real, model.backbone.model = model.backbone.model, Stub()
    try:
        b, _, h, w = maps[0].shape
        with torch.no_grad():
            memory = model(torch.zeros(b, 3, 8 * h, 8 * w, dtype=maps[0].dtype)).encoder_last_hidden_state
    finally:
        model.backbone.model = real
    shapes = [tuple(x.shape[-2:]) for x in maps]
    for _ in range(len(model.input_proj) - len(maps)):
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    chunks = memory.split([h * w for h, w in shapes], dim=1)
    return [t.transpose(1, 2).reshape(b, -1, h, w) for t, (h, w) in zip(chunks, shapes)]
