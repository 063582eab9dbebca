"""fpn_zoo against the necks of torchvision, mmdet and effdet, at identical math, on the CPU.

    python benchmarks/bench_peers.py                 # all cases, writes docs/benchmarks.md
    python benchmarks/bench_peers.py --cases fpn --reps 9 --rounds 1 --out -

For each case both modules get the same weights (converted with ``fpn_zoo.convert``); the script checks
that parameter counts are equal and outputs agree before timing anything. Repetitions are interleaved
(ours, peer, ours, peer, ...) so load on the machine hits both alike, and the table reports medians and
their ratio. Peers that are not installed are skipped with a note.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision

import fpn_zoo
from fpn_zoo.measure import count_flops, time_interleaved

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@dataclass
class Case:
    """One comparison: our neck and a peer's, fed the same maps."""

    name: str
    config: str
    ours: torch.nn.Module
    peer: torch.nn.Module
    run_peer: Callable[[List[torch.Tensor]], List[torch.Tensor]]
    inputs: List[torch.Tensor]
    target_eval: float
    target_train: float


def _maps(channels: Sequence[int], image: int, strides: Sequence[int]) -> List[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(1, c, -(-image // s), -(-image // s)) for c, s in zip(channels, strides)]


def fpn_vs_torchvision() -> Case:
    from fpn_zoo.convert.torchvision import from_torchvision_fpn

    channels, strides = [512, 1024, 2048], [8, 16, 32]
    peer = torchvision.ops.FeaturePyramidNetwork(channels, 256)
    ours = fpn_zoo.create_neck("fpn", [dict(num_chs=c, reduction=s) for c, s in zip(channels, strides)])
    ours.load_state_dict(from_torchvision_fpn(peer.state_dict()))

    def run_peer(xs):
        return list(peer(OrderedDict((str(i), x) for i, x in enumerate(xs))).values())

    return Case("fpn", "ResNet-50 C3-C5, 256 ch, 640 px, no norm/act; peer torchvision FeaturePyramidNetwork",
                ours, peer, run_peer, _maps(channels, 640, strides), 0.85, 0.9)


def pan_vs_mmdet() -> Optional[Case]:
    try:
        from _peers import mmdet_necks

        _, pafpn = mmdet_necks()
    except Exception as e:  # pytest.skip raises a BaseException subclass outside pytest
        raise ImportError(f"mmdet not importable ({type(e).__name__})") from None
    from fpn_zoo.convert.mmdet import from_mmdet_neck

    channels, strides = [512, 1024, 2048], [8, 16, 32]
    peer = pafpn.PAFPN(channels, 256, num_outs=3)
    ours = fpn_zoo.create_neck("pan", [dict(num_chs=c, reduction=s) for c, s in zip(channels, strides)])
    ours.load_state_dict(from_mmdet_neck(peer.state_dict()))
    return Case("pan", "ResNet-50 C3-C5, 256 ch, 640 px, no norm/act; peer mmdet PAFPN",
                ours, peer, lambda xs: list(peer(xs)), _maps(channels, 640, strides), 0.85, 0.9)


def bifpn_vs_effdet() -> Optional[Case]:
    from effdet.config import get_efficientdet_config
    from effdet.efficientdet import BiFpn

    from fpn_zoo.convert.effdet import from_effdet_bifpn

    channels, strides = [40, 112, 320], [8, 16, 32]
    config = get_efficientdet_config("efficientdet_d0")
    def info():  # effdet's BiFpn edits the dicts it is given
        return [dict(num_chs=c, reduction=s) for c, s in zip(channels, strides)]

    peer = BiFpn(config, info())
    ours = fpn_zoo.create_neck("bifpn", info())
    ours.load_state_dict(from_effdet_bifpn(peer.state_dict(), ours))
    return Case("bifpn", "EfficientNet-B0 C3-C5, D0 (64 ch, 3 cells, P3-P7), 512 px; peer effdet BiFpn",
                ours, peer, lambda xs: list(peer(list(xs))), _maps(channels, 512, strides), 0.6, 0.8)


CASES = {"fpn": fpn_vs_torchvision, "pan": pan_vs_mmdet, "bifpn": bifpn_vs_effdet}


def _eval_step(fn, xs):
    with torch.inference_mode():
        fn(xs)


def _train_step(module, fn, xs):
    outs = fn(xs)
    sum(o.float().mean() for o in outs).backward()
    module.zero_grad(set_to_none=True)


def interleaved_medians(steps: Dict[str, Callable[[], None]], reps: int) -> Dict[str, float]:
    """Median seconds per step, repetitions interleaved; the steps choose their own grad mode."""
    return time_interleaved(steps, reps=reps, warmup=2, inference=False)


def check_same_math(case: Case) -> float:
    n_ours = sum(p.numel() for p in case.ours.parameters())
    n_peer = sum(p.numel() for p in case.peer.parameters())
    if n_ours != n_peer:
        raise AssertionError(f"{case.name}: parameter counts differ ({n_ours} vs {n_peer}): not the same math")
    case.ours.eval(), case.peer.eval()
    with torch.inference_mode():
        ours, peer = case.ours(case.inputs), case.run_peer(case.inputs)
    diff = max((a - b).abs().max().item() for a, b in zip(ours, peer))
    scale = max(b.abs().max().item() for b in peer)
    if diff > 1e-4 * max(1.0, scale):
        raise AssertionError(f"{case.name}: outputs differ by {diff:.2e}: not the same math")
    return diff


def run_case(case: Case, reps: int) -> Dict[str, float]:
    diff = check_same_math(case)
    xs = case.inputs
    eval_t = interleaved_medians({
        "ours": lambda: _eval_step(case.ours, xs),
        "peer": lambda: _eval_step(case.run_peer, xs),
    }, reps)
    case.ours.train(), case.peer.train()
    train_t = interleaved_medians({
        "ours": lambda: _train_step(case.ours, case.ours, xs),
        "peer": lambda: _train_step(case.peer, case.run_peer, xs),
    }, reps)
    return {"diff": diff, "eval_ours": eval_t["ours"], "eval_peer": eval_t["peer"],
            "train_ours": train_t["ours"], "train_peer": train_t["peer"]}


def _resnet50_necks(names: Sequence[str]):
    """``(name, neck in eval mode, maps)`` on ResNet-50 C3-C5 at 640 px, for each variant that takes them."""
    channels, strides = [512, 1024, 2048], [8, 16, 32]
    info = [dict(num_chs=c, reduction=s) for c, s in zip(channels, strides)]
    xs = _maps(channels, 640, strides)
    for name in names:
        try:
            yield name, fpn_zoo.create_neck(name, info).eval(), xs
        except fpn_zoo.BackboneMismatch:
            continue


def conv_efficiency(names: Sequence[str], reps: int) -> List[Tuple[str, float, float, float]]:
    """Achieved GFLOP/s of each variant vs one 3x3 conv (out_channels -> out_channels) at the finest level."""
    rows = []
    for name, neck, xs in _resnet50_necks(names):
        width = neck.feature_info.channels()[0]
        conv = torch.nn.Conv2d(width, width, 3, padding=1).eval().to(memory_format=torch.channels_last)
        x = torch.randn(1, width, *xs[0].shape[-2:]).contiguous(memory_format=torch.channels_last)
        flops = {"neck": count_flops(neck, xs), "conv": count_flops(conv, x)}
        t = interleaved_medians({"neck": lambda: _eval_step(neck, xs), "conv": lambda: _eval_step(conv, x)}, reps)
        neck_rate, conv_rate = flops["neck"] / t["neck"] / 1e9, flops["conv"] / t["conv"] / 1e9
        rows.append((name, neck_rate, conv_rate, neck_rate / conv_rate))
    return rows


def fuse_gain(names: Sequence[str], reps: int) -> List[Tuple[str, float, float]]:
    """Eval latency before and after fpn_zoo.fuse_batchnorm for variants with BatchNorm."""
    import copy

    rows = []
    for name, neck, xs in _resnet50_necks(names):
        if not any(isinstance(m, torch.nn.BatchNorm2d) for m in neck.modules()):
            continue
        fused = fpn_zoo.fuse_batchnorm(copy.deepcopy(neck))
        t = interleaved_medians({"plain": lambda: _eval_step(neck, xs), "fused": lambda: _eval_step(fused, xs)}, reps)
        rows.append((name, t["plain"], t["fused"]))
    return rows


def render(results, notes, efficiency, fused, args) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/bench_peers.py` "
        f"({datetime.date.today().isoformat()}, torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds of {args.reps} interleaved repetitions).",
        "Ratios are ours / peer: the median over rounds, [lowest-highest] in brackets; times are medians.",
        "Both sides get the same weights; parameter counts and outputs are checked equal before timing.",
        "",
        "## Against the peers",
        "",
        "| case | config | max abs diff | eval ours / peer (ms) | eval ratio (target) | train step ours / peer (ms) | train ratio (target) |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, rounds in results:
        def med(key: str) -> float:
            return statistics.median(r[key] for r in rounds)

        def ratio(kind: str, target: float) -> str:
            values = sorted(r[f"{kind}_ours"] / r[f"{kind}_peer"] for r in rounds)
            mid = statistics.median(values)
            spread = f" [{values[0]:.2f}-{values[-1]:.2f}]" if len(values) > 1 else ""
            return f"**{mid:.2f}**{spread} ({'<=' if mid <= target else 'MISSED >'} {target})"

        lines.append(
            f"| `{case.name}` | {case.config} | {max(r['diff'] for r in rounds):.1e} "
            f"| {med('eval_ours') * 1e3:.0f} / {med('eval_peer') * 1e3:.0f} | {ratio('eval', case.target_eval)} "
            f"| {med('train_ours') * 1e3:.0f} / {med('train_peer') * 1e3:.0f} | {ratio('train', case.target_train)} |"
        )
    lines += [f"- {note}" for note in notes]
    lines += [
        "",
        "How to read it: at identical math most of `fpn`'s and `pan`'s time is the same oneDNN convolutions on",
        "both sides; outputs differ from the peer's by float32 rounding only (the max abs diff column).",
    ]
    if efficiency:
        lines += ["", "## Achieved GFLOP/s vs one 3x3 conv", "",
                  "ResNet-50 C3-C5 maps at 640 px; the conv is a plain `nn.Conv2d`, `out_channels -> out_channels`",
                  "at the finest level. FLOPs are the conventional direct-conv counts for both (`FlopCounterMode`).", "",
                  "| variant | neck GFLOP/s | 3x3 conv GFLOP/s | ratio (target >= 0.9) |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {a:.1f} | {b:.1f} | {r:.2f} |" for n, a, b, r in efficiency]
    if fused:
        lines += ["", "## BatchNorm folding (`fpn_zoo.fuse_batchnorm`)", "",
                  "| variant | eval ms | fused eval ms | gain |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {a * 1e3:.0f} | {b * 1e3:.0f} | {a / b:.2f}x |" for n, a, b in fused]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="fpn,pan,bifpn", help="comma-separated: fpn, pan, bifpn")
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=3,
                        help="independent rounds per case; the table gives the median ratio and its range")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--efficiency", default="fpn,fpn_deep3,fpn_bn_lrelu_64,pan,bifpn,nasfpn,qufpn,csp_pan_s",
                        help="comma-separated variant patterns for the GFLOP/s and fusion tables ('' to skip)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file, or - for stdout")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results, notes = [], []
    for key in [c for c in args.cases.split(",") if c]:
        try:
            case = CASES[key]()
        except ImportError as e:
            notes.append(f"`{key}` skipped: peer not installed ({e})")
            print(notes[-1], file=sys.stderr)
            continue
        print(f"running {key} ...", file=sys.stderr)
        results.append((case, [run_case(case, args.reps) for _ in range(args.rounds)]))
    names = fpn_zoo.list_necks(args.efficiency.split(",")) if args.efficiency else []
    print(f"GFLOP/s for {len(names)} variants ...", file=sys.stderr)
    efficiency = conv_efficiency(names, args.reps)
    fused = fuse_gain(names, args.reps)
    text = render(results, notes, efficiency, fused, args)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
