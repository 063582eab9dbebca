"""A guard against FCOS's dead box regression, for the accuracy benchmark's training.

torchvision's ``FCOSRegressionHead`` passes its box regression through a ReLU, as the FCOS repository does with
normalised regression targets (`FCOS, Tian et al. 2019 <https://arxiv.org/abs/1904.01355>`_ maps it through
``exp(s x)``, which cannot die). If an update leaves the pre-activation negative at every location, every
predicted box has zero size: torchvision drops such boxes before scoring, the GIoU loss of every positive location
is exactly 1 whatever the layer does, and no gradient brings it back, so the run detects nothing.
:class:`RegressionGuard` re-initialises the layer when that lasts :data:`REVIVE_AFTER` steps; a run whose
regression never dies is computed exactly as without it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

import torch
from torch import nn

__all__ = ["REVIVE_AFTER", "RegressionWatch", "RegressionGuard"]

#: Steps in a row without a box of positive area after which FCOS's box regression layer is re-initialised.
REVIVE_AFTER = 10


class RegressionWatch:
    """Whether FCOS's box regression predicted any box of positive area since :meth:`reset`.

    A forward hook on the head's ``bbox_reg`` conv reads its output before torchvision's ReLU: a location's box,
    ``(l, t, r, b)`` distances after the ReLU, has positive area when ``l`` or ``r`` is positive and ``t`` or
    ``b`` is. The hook only reads the output, so watching changes nothing that is computed.
    """

    def __init__(self, layer: nn.Conv2d) -> None:
        self.layer = layer
        self.alive = False
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self.alive:
            return
        positive = (output.detach() > 0).unflatten(1, (-1, 4))  # (N, anchors, 4 = l t r b, H, W)
        width = positive[:, :, 0] | positive[:, :, 2]
        height = positive[:, :, 1] | positive[:, :, 3]
        self.alive = bool((width & height).any())

    def reset(self) -> None:
        self.alive = False

    def remove(self) -> None:
        self._handle.remove()


class RegressionGuard:
    """Re-initialises FCOS's box regression after ``patience`` training steps in a row without a box of positive
    area, as torchvision initialises it (normal, std 0.01; bias 0), and drops its optimizer state (the moments
    that drove it negative). ``revived`` lists the steps after which it did.

    A model without an FCOS regression head, or ``patience`` 0, is left alone.
    """

    def __init__(self, model: nn.Module, patience: int) -> None:
        layer = getattr(getattr(getattr(model, "head", None), "regression_head", None), "bbox_reg", None)
        self.watch = RegressionWatch(layer) if patience > 0 and isinstance(layer, nn.Conv2d) else None
        self.patience = patience
        self.dead_steps = 0
        self.revived: List[int] = []

    def before_step(self) -> None:
        if self.watch is not None:
            self.watch.reset()

    def after_step(self, step: int, opt: torch.optim.Optimizer) -> bool:
        """Count the step just taken (``step`` steps done); re-initialise if dead too long. True if it did."""
        if self.watch is None:
            return False
        self.dead_steps = 0 if self.watch.alive else self.dead_steps + 1
        if self.dead_steps < self.patience:
            return False
        layer = self.watch.layer
        with torch.no_grad():
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        for p in (layer.weight, layer.bias):
            opt.state.pop(p, None)
        self.revived.append(step)
        self.dead_steps = 0
        return True

    def state(self) -> Dict[str, Any]:
        return {"revived": list(self.revived), "dead_steps": self.dead_steps}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.revived, self.dead_steps = list(state.get("revived", [])), int(state.get("dead_steps", 0))

    def close(self) -> None:
        if self.watch is not None:
            self.watch.remove()
