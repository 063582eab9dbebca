"""The CPU deformable conv (``fpn_zoo.layers.deform.sampled_deform_conv2d``) against torchvision's kernel.

    python benchmarks/deform_conv.py [--threads 1] [--reps 5]

DCNv2 convs at the shapes DyHead and NAS-FCOS run (3x3, 256 channels, maps of 4-80 px): inference, and
forward + backward (training). Repetitions are interleaved; the table gives medians and the ratios to
torchvision (lower is better) of the eager form (bilinear taps summed by ``embedding_bag``) and of the form
traced graphs use (``grid_sample``). All compute the same function (tests/test_dyhead.py checks it in float64),
so the fastest is what ``ModulatedDeformConv`` should run on this machine.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict

import torch
from torchvision.ops import deform_conv2d

from fpn_zoo.layers.deform import _deform_conv_by_grid_sample, sampled_deform_conv2d

SHAPES = ((1, 256, 80), (1, 256, 40), (1, 256, 10), (8, 256, 16), (8, 256, 8), (8, 256, 4))


def interleaved(fns: Dict[str, Callable[[], None]], reps: int) -> Dict[str, float]:
    times: Dict[str, list] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(reps):
        for k, f in fns.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.reps} interleaved repetitions")
    print("| batch x channels x side | mode | torchvision (ms) | taps (ms) | grid_sample (ms) | taps / torchvision "
          "| grid_sample / torchvision |")
    print("|---|---|---|---|---|---|---|")
    for n, c, side in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(n, c, side, side, requires_grad=True)
        weight = torch.randn(c, c, 3, 3, requires_grad=True)
        bias = torch.zeros(c, requires_grad=True)
        offset = torch.randn(n, 18, side, side, requires_grad=True)
        mask = torch.rand(n, 9, side, side, requires_grad=True)

        def tv():
            return deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)

        def ours():
            return sampled_deform_conv2d(x, offset, weight, bias, (1, 1), (1, 1), (1, 1), mask)

        def traced_form():
            return _deform_conv_by_grid_sample(x, offset, weight, bias, (1, 1), (1, 1), (1, 1), mask)

        for mode in ("inference", "training"):
            if mode == "inference":
                def run(f):
                    return lambda: torch.inference_mode()(f)()
            else:
                def run(f):
                    return lambda: f().square().mean().backward()
            t = interleaved({"tv": run(tv), "ours": run(ours), "grid": run(traced_form)}, args.reps)
            print(f"| {n} x {c} x {side} | {mode} | {t['tv'] * 1e3:.1f} | {t['ours'] * 1e3:.1f} | "
                  f"{t['grid'] * 1e3:.1f} | {t['ours'] / t['tv']:.2f} | {t['grid'] / t['tv']:.2f} |")


if __name__ == "__main__":
    main()
