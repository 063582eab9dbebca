"""Write the tiny checkpoints that tests/test_checkpoints.py loads. Run once per release that adds a family:
    python tests/data/make_checkpoints.py
Never regenerate an existing file: a checkpoint saved by an older version must keep loading."""
from __future__ import annotations

from pathlib import Path

import torch

import fpn_zoo

HERE = Path(__file__).resolve().parent
CHANNELS = [4, 8, 16]
# (file, variant, overrides) — tiny widths keep every file a few KB.
CHECKPOINTS = [
    ("fpn_v0.1.0.pt", "fpn_bn_lrelu_64", dict(out_channels=8)),
    ("pan_v0.1.0.pt", "pan", dict(out_channels=8, norm="batchnorm", extra_levels=1)),
]


def main() -> None:
    for filename, name, overrides in CHECKPOINTS:
        path = HERE / filename
        if path.exists():
            continue
        torch.manual_seed(0)
        neck = fpn_zoo.create_neck(name, CHANNELS, **overrides).eval()
        inputs = [torch.randn(1, c, 12 >> i, 12 >> i) for i, c in enumerate(CHANNELS)]
        with torch.no_grad():
            outputs = neck(inputs)
        torch.save({"name": name, "overrides": overrides, "channels": CHANNELS, "fpn_zoo": fpn_zoo.__version__,
                    "state_dict": neck.state_dict(), "inputs": inputs, "outputs": outputs}, path)
        print("wrote", path)


if __name__ == "__main__":
    main()
