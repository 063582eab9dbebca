"""Winograd F(4x4, 3x3) against the direct conv, per map size and width: where ``WinogradConv2d`` should apply.

    python benchmarks/winograd.py                    # prints a markdown table
    python benchmarks/winograd.py --threads 2 --reps 11

For each (channels, side) it times a 3x3 stride-1 conv, float32, batch 1, both ways (interleaved repetitions,
medians): inference, and a training step (forward + backward for input, weight and bias). Ratios below 1 mean
Winograd is faster. ``fpn_zoo.layers.winograd.MIN_CHANNELS`` / ``MIN_PIXELS`` are read off this table.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from fpn_zoo.layers.winograd import MIN_CHANNELS, MIN_PIXELS, winograd_conv3x3
from fpn_zoo.measure import time_interleaved


def compare(channels: int, side: int, reps: int):
    torch.manual_seed(0)
    x = torch.randn(1, channels, side, side, requires_grad=True)
    weight = (torch.randn(channels, channels, 3, 3) * 0.05).requires_grad_()
    bias = torch.zeros(channels, requires_grad=True)
    grad = torch.randn(1, channels, side, side)

    def direct():
        return F.conv2d(x, weight, bias, padding=1)

    def winograd():
        return winograd_conv3x3(x, weight, bias)

    def train(fn):
        fn().backward(grad)
        x.grad = weight.grad = bias.grad = None

    t_eval = time_interleaved({"direct": direct, "winograd": winograd}, reps=reps, warmup=2)
    t_train = time_interleaved({"direct": lambda: train(direct), "winograd": lambda: train(winograd)},
                               reps=reps, warmup=2, inference=False)
    return t_eval, t_train


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--channels", default="64,128,256")
    parser.add_argument("--sides", default="20,32,40,64,80,160")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.reps} interleaved repetitions, medians; "
          f"the library uses Winograd from {MIN_CHANNELS} channels and {MIN_PIXELS} pixels\n")
    print("| channels | map | eval direct (ms) | eval Winograd (ms) | ratio | train direct (ms) | train Winograd (ms) | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for channels in [int(c) for c in args.channels.split(",")]:
        for side in [int(s) for s in args.sides.split(",")]:
            e, t = compare(channels, side, args.reps)
            print(f"| {channels} | {side}x{side} | {e['direct'] * 1e3:.2f} | {e['winograd'] * 1e3:.2f} | "
                  f"{e['winograd'] / e['direct']:.2f} | {t['direct'] * 1e3:.2f} | {t['winograd'] * 1e3:.2f} | "
                  f"{t['winograd'] / t['direct']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
