"""What a run of the accuracy benchmark looks like when FCOS's box regression dies.

    FPN_ZOO_CACHE=DIR python benchmarks/fcos_dead_regression.py [--neck single_level_64] [--steps 300]

torchvision's ``FCOSRegressionHead`` passes its box regression through a ReLU. If an update leaves the
pre-activation negative at every location, every predicted box has zero size: torchvision drops such boxes
before they are scored (no detection at all: AP and class-agnostic AP exactly 0), the GIoU loss of a point
inside its target box is exactly 1, and no gradient reaches the regression layer to bring it back.

This script trains the benchmark's detector three times for ``--steps`` steps (the recipe's schedule compressed
to them, seed 1): as built; with the regression layer's bias set to -20 before the first step (dead from the
start) and the recipe's guard off; and dead from the start with the guard on (it re-initialises the layer
after ``REVIVE_AFTER`` dead steps, fpn_zoo.accuracy.regression_guard.RegressionGuard). It prints each run's loss terms
(mean of the last 25 steps), AP and class-agnostic AP on test scenes, the fraction of locations whose
regression is non-zero, and the steps the guard revived it. A run with AP and agnostic AP exactly 0 at every
evaluation and a total loss stuck near the unguarded dead run's has this signature.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Dict, List

import torch

from fpn_zoo.accuracy.evaluate import evaluate_detector
from fpn_zoo.accuracy.recipe import Recipe, attachment, build_detector, pretrained_backbone, train_detector
from fpn_zoo.accuracy.regression_guard import REVIVE_AFTER


def run(neck: str, recipe: Recipe, backbone: Dict[str, torch.Tensor], dead: bool, guard: bool,
        test_scenes: int) -> Dict:
    torch.manual_seed(1)
    model = build_detector(neck, recipe, backbone, how=attachment(neck, recipe))
    regression = model.head.regression_head
    if dead:
        with torch.no_grad():
            regression.bbox_reg.bias.fill_(-20.0)
    terms: Dict[str, List[float]] = {}
    forward = model.forward

    def recording_forward(images, targets=None):
        out = forward(images, targets)
        if model.training:
            for k, v in out.items():
                terms.setdefault(k, []).append(v.item())
        return out

    model.forward = recording_forward
    trained = train_detector(model, recipe, seed=1, revive_after=REVIVE_AFTER if guard else 0)
    outputs: List[torch.Tensor] = []
    hook = regression.bbox_reg.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
    metrics = evaluate_detector(model, test_scenes, recipe.scenes)
    hook.remove()
    alive = torch.cat([o.flatten() for o in outputs]).gt(0).float().mean().item()
    return {"loss terms": {k: round(sum(v[-25:]) / len(v[-25:]), 3) for k, v in terms.items()},
            "AP": metrics["AP"], "agnostic AP": metrics["agnostic_AP"], "regression > 0": round(alive, 4),
            "revived at": trained["revived"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neck", default="single_level_64")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--test-scenes", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = dataclasses.replace(Recipe(), steps=args.steps, eval_every=0)
    backbone = pretrained_backbone(recipe)
    runs = {"as built": (False, True), "dead from step 0, no guard": (True, False),
            "dead from step 0, guarded": (True, True)}
    for label, (dead, guard) in runs.items():
        result = run(args.neck, recipe, backbone, dead, guard, args.test_scenes)
        total = sum(result["loss terms"].values())
        print(f"{label:28s} total loss {total:.3f} {result}")


if __name__ == "__main__":
    main()
