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
