"""Per-call overhead at small maps: ``fpn`` vs torchvision's FeaturePyramidNetwork, ``pan`` vs mmdet's PAFPN.

    python benchmarks/small_maps.py [--rounds 7] [--reps 30]

ResNet-50 C3-C5 channels (512, 1024, 2048) to 256, batch 1, one thread; both sides carry the same weights
(``fpn_zoo.convert``) and their outputs are compared first. Each round times ``reps`` calls of ours then
of the peer (the order alternates between rounds); the figures are medians over rounds of the per-call
time, and the ratio is ours / peer. Cases: 256 px (32x32, 16x16, 8x8 maps) and tiny maps (8x8, 4x4, 2x2);
forward (``no_grad``, eval) and a train step (forward + backward of the outputs' mean).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's fpn_zoo, and the tests' peer loaders

import torch  # noqa: E402
import torchvision  # noqa: E402

import fpn_zoo  # noqa: E402
from fpn_zoo.convert.mmdet import from_mmdet_neck  # noqa: E402
from fpn_zoo.convert.torchvision import from_torchvision_fpn  # noqa: E402


CHANNELS = [512, 1024, 2048]
SIZES = {"256px": (32, 16, 8), "tiny": (8, 4, 2)}


def _pairs():
    spec = [dict(num_chs=c, reduction=s) for c, s in zip(CHANNELS, (8, 16, 32))]
    torch.manual_seed(0)
    tv = torchvision.ops.FeaturePyramidNetwork(CHANNELS, 256)
    fpn = fpn_zoo.create_neck("fpn", spec)
    fpn.load_state_dict(from_torchvision_fpn(tv.state_dict()))
    yield "fpn vs torchvision FPN", fpn, tv, lambda m, xs: list(m({str(i): x for i, x in enumerate(xs)}).values())
    try:
        from _peers import mmdet_necks
        _, pafpn = mmdet_necks()
    except BaseException as e:  # noqa: BLE001 - pytest.skip raises a BaseException
        print(f"# mmdet not available ({e}): pan case skipped")
        return
    mm = pafpn.PAFPN(CHANNELS, 256, num_outs=3)
    pan = fpn_zoo.create_neck("pan", spec)
    pan.load_state_dict(from_mmdet_neck(mm.state_dict()))
    yield "pan vs mmdet PAFPN", pan, mm, lambda m, xs: list(m(tuple(xs)))


def _time(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# fpn_zoo from {fpn_zoo.__file__}")
    print("| case | maps | mode | ours ms | peer ms | ours/peer |\n|---|---|---|---|---|---|")
    for title, ours, peer, run_peer in _pairs():
        for size_name, sides in SIZES.items():
            xs = [torch.randn(1, c, s, s) for c, s in zip(CHANNELS, sides)]
            ours.eval(), peer.eval()
            with torch.no_grad():
                diff = max((a - b).abs().max().item() for a, b in zip(ours(xs), run_peer(peer, xs)))
            assert diff < 1e-3, f"{title}: outputs differ by {diff}"

            def fwd(m, run):
                def step():
                    with torch.no_grad():
                        run(m, xs)
                return step

            def train(m, run):
                def step():
                    sum(o.mean() for o in run(m, xs)).backward()
                return step

            for mode, make in (("forward", fwd), ("train step", train)):
                ours.train(mode != "forward"), peer.train(mode != "forward")
                a, b = make(ours, lambda m, x: m(x)), make(peer, run_peer)
                a(), b()  # warm up
                ta, tb = [], []
                for r in range(args.rounds):
                    order = ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta))
                    for fn, out in order:
                        out.append(_time(fn, args.reps))
                ma, mb = statistics.median(ta), statistics.median(tb)
                print(f"| {title} | {size_name} | {mode} | {ma * 1e3:.3f} | {mb * 1e3:.3f} | {ma / mb:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
