"""fpn_zoo against the necks of torchvision, mmdet and effdet, at identical math, on the CPU.

    python benchmarks/bench_peers.py                       # everything, writes docs/benchmarks.md
    python benchmarks/bench_peers.py --cases fpn --rounds 1 --compile never --out -

For each case both modules get the same weights (converted with ``fpn_zoo.convert``); the script checks
that parameter counts are equal and outputs agree before timing anything. Repetitions are interleaved
(ours, peer, ours, peer, ...) so load on the machine hits both alike; each round gives a ratio of medians,
and the table reports the median ratio over rounds with its range. Peers that are not installed are
skipped with a note. Sections:

1. the default path (what ``create_neck`` builds) at 640 px and at 256 px batch 1 (the per-call overhead
   regime), forward and training step;
2. the opt-in inference path, ``fpn_zoo.accelerate`` (BatchNorm folded, layout measured, ``torch.compile``)
   against the peer given the same treatment (folded, channels-last, compiled), and against our default;
3. the training step's peak memory (RSS high-water mark of a fresh process, ours and the peer's);
4. achieved GFLOP/s against one 3x3 conv, and what BatchNorm folding gains.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision

import fpn_zoo
from fpn_zoo.measure import count_flops, cpu_name, time_interleaved

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

RESNET50 = ([512, 1024, 2048], [8, 16, 32])
EFFNET_B0 = ([40, 112, 320], [8, 16, 32])


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


def _maps(channels: Sequence[int], image: int, strides: Sequence[int], batch: int = 1) -> List[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(batch, c, -(-image // s), -(-image // s)) for c, s in zip(channels, strides)]


def _info(channels: Sequence[int], strides: Sequence[int]) -> List[dict]:
    return [dict(num_chs=c, reduction=s) for c, s in zip(channels, strides)]


def _mmdet():
    try:
        from _peers import mmdet_necks

        return mmdet_necks()
    except BaseException as e:  # pytest.skip raises a BaseException subclass outside pytest
        raise ImportError(f"mmdet not importable ({type(e).__name__})") from None


def fpn_vs_torchvision(image: int) -> Case:
    from fpn_zoo.convert.torchvision import from_torchvision_fpn

    channels, strides = RESNET50
    peer = torchvision.ops.FeaturePyramidNetwork(channels, 256)
    ours = fpn_zoo.create_neck("fpn", _info(channels, strides))
    ours.load_state_dict(from_torchvision_fpn(peer.state_dict()))

    def run_peer(xs):
        return list(peer(OrderedDict((str(i), x) for i, x in enumerate(xs))).values())

    return Case("fpn", f"ResNet-50 C3-C5, 256 ch, {image} px; torchvision FeaturePyramidNetwork",
                ours, peer, run_peer, _maps(channels, image, strides), 1.0, 1.0)


def fpn_vs_mmdet(image: int) -> Case:
    from fpn_zoo.convert.mmdet import from_mmdet_neck

    mm_fpn, _ = _mmdet()
    channels, strides = RESNET50
    peer = mm_fpn.FPN(channels, 256, num_outs=3)
    ours = fpn_zoo.create_neck("fpn", _info(channels, strides))
    ours.load_state_dict(from_mmdet_neck(peer.state_dict()))
    return Case("fpn", f"ResNet-50 C3-C5, 256 ch, {image} px; mmdet FPN",
                ours, peer, lambda xs: list(peer(xs)), _maps(channels, image, strides), 1.0, 1.0)


def pan_vs_mmdet(image: int) -> Case:
    from fpn_zoo.convert.mmdet import from_mmdet_neck

    _, pafpn = _mmdet()
    channels, strides = RESNET50
    peer = pafpn.PAFPN(channels, 256, num_outs=3)
    ours = fpn_zoo.create_neck("pan", _info(channels, strides))
    ours.load_state_dict(from_mmdet_neck(peer.state_dict()))
    return Case("pan", f"ResNet-50 C3-C5, 256 ch, {image} px; mmdet PAFPN",
                ours, peer, lambda xs: list(peer(xs)), _maps(channels, image, strides), 1.0, 1.0)


def bifpn_vs_effdet(image: int) -> Case:
    from effdet.config import get_efficientdet_config
    from effdet.efficientdet import BiFpn

    from fpn_zoo.convert.effdet import from_effdet_bifpn

    channels, strides = EFFNET_B0
    config = get_efficientdet_config("efficientdet_d0")
    config.image_size = (image, image)  # effdet fixes its map sizes from the config
    peer = BiFpn(config, _info(channels, strides))  # effdet edits the dicts it is given: fresh ones each
    ours = fpn_zoo.create_neck("bifpn", _info(channels, strides))
    ours.load_state_dict(from_effdet_bifpn(peer.state_dict(), ours))
    return Case("bifpn", f"EfficientNet-B0 C3-C5, D0 (64 ch, 3 cells, P3-P7), {image} px; effdet BiFpn",
                ours, peer, lambda xs: list(peer(list(xs))), _maps(channels, image, strides), 0.5, 0.6)


class TransformersDeformableEncoder(torch.nn.Module):
    """transformers' ``DeformableDetrModel`` run on given backbone maps (its backbone replaced by a stub, an
    all-valid pixel mask), returning ``encoder_last_hidden_state`` split per level into NCHW maps.

    Only the parts our neck reproduces are registered (input projections, level embeddings, encoder), so the
    parameter check compares like with like; the model's own forward also runs its decoder, here one layer on
    one query (a few percent of the encoder's time at these sizes), which counts against the peer.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.input_proj, self.encoder, self.level_embed = model.input_proj, model.encoder, model.level_embed
        object.__setattr__(self, "model", model)  # not a submodule: its backbone and decoder stay uncounted

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        class Stub(torch.nn.Module):
            def forward(self, pixel_values):
                return list(xs)

        real, self.model.backbone.model = self.model.backbone.model, Stub()
        try:
            b, _, h, w = xs[0].shape
            memory = self.model(torch.zeros(b, 3, 8 * h, 8 * w, dtype=xs[0].dtype)).encoder_last_hidden_state
        finally:
            self.model.backbone.model = real
        shapes = [tuple(x.shape[-2:]) for x in xs]
        while len(shapes) < len(self.input_proj):
            shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
        chunks = memory.split([sh * sw for sh, sw in shapes], dim=1)
        return [t.transpose(1, 2).reshape(b, -1, sh, sw) for t, (sh, sw) in zip(chunks, shapes)]


def deformable_encoder_vs_transformers(image: int) -> Case:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"transformers not importable ({e})") from None
    from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrModel

    from fpn_zoo.convert import from_module

    channels, strides = RESNET50
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, *channels], depths=[1, 1, 1, 1],
                                         layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    config = transformers.DeformableDetrConfig(backbone_config=backbone, decoder_layers=1, num_queries=1)
    torch.manual_seed(0)
    model = DeformableDetrModel(config).eval()  # the paper's encoder: 256 ch, 6 layers, 8 heads, 4 points, 4 levels
    peer = TransformersDeformableEncoder(model)
    ours = from_module(model, features=_info(channels, strides))
    return Case("deformable_detr_encoder", f"ResNet-50 C3-C5 (+1 level), 256 ch, 6 layers, {image} px; "
                "transformers DeformableDetrModel (pure-PyTorch attention)",
                ours, peer, peer, _maps(channels, image, strides), 1.0, 1.0)


CASES: Dict[str, Tuple[Callable[[int], Case], int]] = {  # key -> (builder, large image size)
    "fpn": (fpn_vs_torchvision, 640),
    "fpn_mmdet": (fpn_vs_mmdet, 640),
    "pan": (pan_vs_mmdet, 640),
    "bifpn": (bifpn_vs_effdet, 512),
    "deformable_detr": (deformable_encoder_vs_transformers, 384),  # 6 attention layers: 640 px takes seconds a call
}
SMALL_IMAGE = 256


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
    case.ours.eval(), case.peer.eval()
    return {"diff": diff, "eval_ours": eval_t["ours"], "eval_peer": eval_t["peer"],
            "train_ours": train_t["ours"], "train_peer": train_t["peer"]}


class PeerAsNeck(torch.nn.Module):
    """A peer's neck behind our calling convention (a list of maps in, a list out), so that
    ``fpn_zoo.accelerate`` can give it exactly the treatment it gives ours."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        self.peer = case.peer
        self._run = case.run_peer

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        return self._run(xs)


def run_inference_path(case: Case, reps: int, compile) -> Dict[str, float]:
    """Ours through ``fpn_zoo.accelerate`` against the peer through the very same call, and against our default."""
    xs = case.inputs
    rounds = max(3, reps // 2)
    fast = fpn_zoo.accelerate(case.ours, xs, compile=compile, rounds=rounds)
    peer = fpn_zoo.accelerate(PeerAsNeck(case), xs, compile=compile, rounds=rounds)
    default = case.ours.eval()
    t = interleaved_medians({
        "accelerated": lambda: _eval_step(fast, xs),
        "peer": lambda: _eval_step(peer, xs),
        "default": lambda: _eval_step(default, xs),
    }, reps)
    return {"ours": t["accelerated"], "peer": t["peer"], "default": t["default"], "layout": fast.layout,
            "compiled": fast.compiled, "peer_layout": peer.layout, "peer_compiled": peer.compiled}


MEMORY_PROBE = """
import json, sys, torch
sys.path.insert(0, {bench!r})
import bench_peers
torch.set_num_threads({threads})
case = bench_peers.CASES[{key!r}][0]({image})
module, fn = (case.ours, case.ours) if {side!r} == "ours" else (case.peer, case.run_peer)
module.train()
xs = case.inputs
bench_peers._train_step(module, fn, xs)  # warm-up: allocator caches and lazily made buffers
print(json.dumps(bench_peers.peak_rss_delta(lambda: bench_peers._train_step(module, fn, xs))))
"""


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_rss_delta(step: Callable[[], None]) -> float:
    """MiB by which ``step`` raises the process's resident set above where it started (Linux: the peak is
    reset through /proc/self/clear_refs, then read back as VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - start) / 1024


def train_peak_memory(key: str, image: int, threads: int) -> Dict[str, float]:
    """MiB a training step adds to a fresh process's peak RSS (ATen's allocations included), ours and the peer's."""
    out = {}
    for side in ("ours", "peer"):
        code = MEMORY_PROBE.format(bench=str(Path(__file__).parent), threads=threads, key=key, image=image, side=side)
        # Every allocation of 64 KiB or more gets its own mapping, returned to the system when freed, so the
        # resident set follows what is alive instead of what glibc's free lists happen to hold.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        out[side] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


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


def fold_gain(names: Sequence[str], reps: int) -> List[Tuple[str, float, float]]:
    """Eval latency before and after fpn_zoo.fold_batchnorm for variants with BatchNorm."""
    import copy

    rows = []
    for name, neck, xs in _resnet50_necks(names):
        if not any(isinstance(m, torch.nn.BatchNorm2d) for m in neck.modules()):
            continue
        fused = fpn_zoo.fold_batchnorm(copy.deepcopy(neck))
        t = interleaved_medians({"plain": lambda: _eval_step(neck, xs), "fused": lambda: _eval_step(fused, xs)}, reps)
        rows.append((name, t["plain"], t["fused"]))
    return rows


def _ratio_cell(values: Sequence[float], target: Optional[float] = None) -> str:
    values = sorted(values)
    mid = statistics.median(values)
    spread = f" [{values[0]:.2f}-{values[-1]:.2f}]" if len(values) > 1 else ""
    verdict = "" if target is None else f" ({'<=' if mid <= target else 'MISSED >'} {target})"
    return f"**{mid:.2f}**{spread}{verdict}"


def render(results, inference_rows, memory_rows, notes, efficiency, folded, args) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/bench_peers.py` "
        f"({datetime.date.today().isoformat()}, torch {torch.__version__}, {cpu_name()}, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds of {args.reps} "
        "interleaved repetitions).",
        "Ratios are ours / peer (lower is better): the median over rounds, [lowest-highest] in brackets; times are",
        "medians. Both sides get the same weights; parameter counts and outputs are checked equal before timing.",
        "Timing on a shared VM is noisy: trust the ratios (both sides measured in the same rounds), not the",
        "absolute times, and rerun on your machine.",
        "",
        "## The default path against the peers",
        "",
        "What `create_neck` builds: plain `nn.Conv2d` modules, the peers' math (max abs diff column).",
        "",
        "| case | config | batch | max abs diff | eval ours / peer (ms) | eval ratio (target) "
        "| train step ours / peer (ms) | train ratio (target) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, batch, rounds in results:
        def med(key: str) -> float:
            return statistics.median(r[key] for r in rounds)

        lines.append(
            f"| `{case.name}` | {case.config} | {batch} | {max(r['diff'] for r in rounds):.1e} "
            f"| {med('eval_ours') * 1e3:.1f} / {med('eval_peer') * 1e3:.1f} "
            f"| {_ratio_cell([r['eval_ours'] / r['eval_peer'] for r in rounds], case.target_eval)} "
            f"| {med('train_ours') * 1e3:.1f} / {med('train_peer') * 1e3:.1f} "
            f"| {_ratio_cell([r['train_ours'] / r['train_peer'] for r in rounds], case.target_train)} |"
        )
    lines += [f"- {note}" for note in notes]
    if inference_rows:
        lines += [
            "", "## The inference path: `fpn_zoo.accelerate`", "",
            f"`fpn_zoo.accelerate(neck, inputs, compile={args.compile!r})` on both sides: the peer's module goes",
            "through the very same call (BatchNorm folded, layout timed here, `torch.compile` kept where it measured",
            "faster). The last column compares our accelerated neck with our default path.",
            "",
            "| case | config | ours: layout, compiled | peer: layout, compiled | ours / peer (ms) | ratio "
            "| accelerated / default |",
            "|---|---|---|---|---|---|---|",
        ]
        for case, rows in inference_rows:
            lines.append(
                f"| `{case.name}` | {case.config} | {rows[0]['layout']}, {rows[0]['compiled']} "
                f"| {rows[0]['peer_layout']}, {rows[0]['peer_compiled']} "
                f"| {statistics.median(r['ours'] for r in rows) * 1e3:.1f} / "
                f"{statistics.median(r['peer'] for r in rows) * 1e3:.1f} "
                f"| {_ratio_cell([r['ours'] / r['peer'] for r in rows])} "
                f"| {_ratio_cell([r['ours'] / r['default'] for r in rows], 1.0)} |"
            )
    if memory_rows:
        lines += ["", "## Training-step peak memory", "",
                  "MiB that one training step (forward + backward, after a warm-up step) adds to the peak resident",
                  "set of a fresh process (`/proc/self/clear_refs`, then `VmHWM`), so ATen's allocations count",
                  "(`tracemalloc` cannot see them). glibc is told to map every allocation of 64 KiB or more on its own",
                  "and return it when freed, so the resident set follows the live tensors.", "",
                  "| case | config | ours (MiB) | peer (MiB) | ratio |", "|---|---|---|---|---|"]
        for case, mem in memory_rows:
            lines.append(f"| `{case.name}` | {case.config} | {mem['ours']:.0f} | {mem['peer']:.0f} "
                         f"| {mem['ours'] / max(mem['peer'], 1e-9):.2f} |")
    if efficiency:
        lines += ["", "## Achieved GFLOP/s vs one 3x3 conv", "",
                  "ResNet-50 C3-C5 maps at 640 px; the conv is a plain `nn.Conv2d`, `out_channels -> out_channels`",
                  "at the finest level, channels-last. FLOPs are `FlopCounterMode`'s counts for both.", "",
                  "| variant | neck GFLOP/s | 3x3 conv GFLOP/s | ratio |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {a:.1f} | {b:.1f} | {r:.2f} |" for n, a, b, r in efficiency]
    if folded:
        lines += ["", "## BatchNorm folding (`fpn_zoo.fold_batchnorm`)", "",
                  "| variant | eval ms | folded eval ms | gain |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {a * 1e3:.0f} | {b * 1e3:.0f} | {a / b:.2f}x |" for n, a, b in folded]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=3,
                        help="independent rounds per case; the table gives the median ratio and its range")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", default="measure", choices=["measure", "always", "never"],
                        help="torch.compile in the inference path: kept where measured faster (default), always, never")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--efficiency", default="fpn,fpn_deep3,fpn_bn_lrelu_64,pan,bifpn,nasfpn,qufpn,csp_pan_s",
                        help="comma-separated variant patterns for the GFLOP/s and folding tables ('' to skip)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file, or - for stdout")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results, inference_rows, memory_rows, notes = [], [], [], []
    for key in [c for c in args.cases.split(",") if c]:
        builder, large = CASES[key]
        for image in (large, SMALL_IMAGE):
            try:
                case = builder(image)
            except ImportError as e:
                notes.append(f"`{key}` skipped: peer not installed ({e})")
                print(notes[-1], file=sys.stderr)
                break
            print(f"running {key} at {image} px ...", file=sys.stderr)
            results.append((case, 1, [run_case(case, args.reps) for _ in range(args.rounds)]))
            compile = {"measure": "measure", "always": True, "never": False}[args.compile]
            inference_rows.append((case, [run_inference_path(case, args.reps, compile) for _ in range(args.rounds)]))
            if image == large and key in ("fpn", "pan") and not args.no_memory:
                memory_rows.append((case, train_peak_memory(key, image, args.threads)))
    names = fpn_zoo.list_necks(args.efficiency.split(",")) if args.efficiency else []
    print(f"GFLOP/s for {len(names)} variants ...", file=sys.stderr)
    efficiency = conv_efficiency(names, args.reps)
    folded = fold_gain(names, args.reps)
    text = render(results, inference_rows, memory_rows, notes, efficiency, folded, args)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
