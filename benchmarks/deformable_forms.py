"""The two forms of deformable sampling in a whole detector: eager bilinear taps vs the traced grid_sample form.

    python benchmarks/deformable_forms.py NECK [--rounds 5] [--threads 1]      # needs: pip install ".[bench]"

Builds the accuracy benchmark's detector with NECK (``fpn_zoo.accuracy.recipe.build_detector``: its
pretrained backbone is made and cached first if missing) and times one training step and one eval forward on
one batch of its scenes, with the deformable sampling swapped between the default eager form
(``fpn_zoo.layers.sampling``: bilinear taps summed by ``embedding_bag``) and the form traced graphs use
(``grid_sample``). The two are interleaved in one process; the first round is a warm-up. Prints the medians and
new / old ratios with their range. NECK: deformable_detr_encoder, dino_encoder, fpn_dyhead or nasfcos_fpn.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

import fpn_zoo.layers.deform as deform
import fpn_zoo.necks.deformable_detr_encoder as attention
from fpn_zoo.accuracy.recipe import Recipe, build_detector, pretrained_backbone
from fpn_zoo.accuracy.scenes import DigitScenes


FORMS = {  # name: (multi-scale deformable attention, deformable conv)
    "grid_sample": (attention._attention_by_grid_sample, deform._deform_conv_by_grid_sample),
    "taps": (attention.multi_scale_deformable_attention, deform.sampled_deform_conv2d),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("neck")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = Recipe()
    torch.manual_seed(0)
    model = build_detector(args.neck, recipe, pretrained_backbone(recipe))
    images, targets = next(iter(DigitScenes("train", seed=0, config=recipe.scenes).batches(recipe.batch)))

    def train_step() -> None:
        model.train()
        model.zero_grad()
        sum(model(list(images), targets).values()).backward()

    def eval_forward() -> None:
        model.eval()
        with torch.no_grad():
            model(list(images))

    runs: Dict[str, Callable[[], None]] = {"train step": train_step, "eval": eval_forward}
    times: Dict[Tuple[str, str], List[float]] = {}
    for _ in range(args.rounds):
        for form, (attend, conv) in FORMS.items():
            attention.multi_scale_deformable_attention, deform.sampled_deform_conv2d = attend, conv
            for kind, run in runs.items():
                start = time.perf_counter()
                run()
                times.setdefault((kind, form), []).append(time.perf_counter() - start)
    attention.multi_scale_deformable_attention, deform.sampled_deform_conv2d = FORMS["taps"]
    print(f"{args.neck}: batch {recipe.batch} at {recipe.scenes.canvas} px, {args.threads} thread(s), "
          f"{args.rounds - 1} timed rounds")
    for kind in runs:
        old, new = times[(kind, "grid_sample")][1:], times[(kind, "taps")][1:]
        ratios = [n / o for n, o in zip(new, old)]
        print(f"{kind}: grid_sample {statistics.median(old):.2f} s, taps {statistics.median(new):.2f} s, "
              f"taps / grid_sample {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")


if __name__ == "__main__":
    main()
