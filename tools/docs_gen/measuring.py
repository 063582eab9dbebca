"""What the pages report, measured: every variant built on a reference backbone (or a fallback one it
accepts), and the configurations the questions page compares."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from fpn_zoo import FeatureSpec, create_neck, list_necks, neck_cfg
from fpn_zoo._registry import BUILTIN, NeckCfg
from fpn_zoo.diagram import mermaid
from fpn_zoo.measure import NeckStats, Reference, backbone_features, load_backbone, neck_stats

__all__ = [
    "REFERENCE", "FALLBACK_REFERENCES", "NOTES_BLOCK", "VariantDoc", "Bench", "select_necks", "measure_variants",
    "Question", "QUESTION_VARIANTS", "question_configs",
]

REFERENCE = Reference()  # resnet18, out_indices (2, 3, 4), 256 px: small, so regenerating is quick
# Tried in turn for a variant that declines the reference backbone (e.g. one made for single-stride ViTs).
FALLBACK_REFERENCES: Tuple[Reference, ...] = (Reference("vit_tiny_patch16_224", (-1,), (224, 224)),)
# The block the original notes used everywhere: Conv2dNormActivation with BatchNorm and LeakyReLU(0.1).
NOTES_BLOCK: Dict[str, Any] = {"norm": "batchnorm", "act": "leaky_relu", "act_kwargs": {"negative_slope": 0.1}}


@dataclass
class VariantDoc:
    """One variant as measured for the docs."""

    cfg: NeckCfg
    reference: Optional[Reference] = None
    inputs: Optional[FeatureSpec] = None  # the levels the neck was built on (the reference backbone's)
    stats: Optional[NeckStats] = None
    diagram: str = ""
    error: str = ""
    neck: Optional[nn.Module] = field(default=None, repr=False)


class Bench:
    """Backbones and their maps, built once per reference."""

    def __init__(self) -> None:
        self._cache: Dict[Reference, Tuple[nn.Module, List[torch.Tensor]]] = {}
        self._necks: Dict[Tuple[str, str, Reference], Tuple[nn.Module, NeckStats]] = {}

    def get(self, ref: Reference) -> Tuple[nn.Module, List[torch.Tensor]]:
        if ref not in self._cache:
            backbone = load_backbone(ref.backbone, ref.out_indices)
            self._cache[ref] = (backbone, backbone_features(backbone, ref.size))
        return self._cache[ref]

    def build(self, name: str, ref: Reference, **overrides: Any) -> Tuple[nn.Module, NeckStats]:
        """The neck and its stats; one module per distinct (family, arguments), so equal configurations
        reached under different names share their measurements (and their latency)."""
        cfg = neck_cfg(name)
        key = (cfg.family, repr(sorted({**cfg.args, **overrides}.items())), ref)
        if key not in self._necks:
            backbone, feats = self.get(ref)
            torch.manual_seed(0)
            neck = create_neck(name, backbone, **overrides).eval()
            self._necks[key] = (neck, neck_stats(name, neck, feats, ref.size))
        return self._necks[key]


def select_necks(patterns: Union[str, Sequence[str], None]) -> List[str]:
    """Built-in variants matching fnmatch ``patterns`` (comma-separated in a string); all for None.

    Plugins' variants are left out: the docs describe this package, whatever else is installed.
    """
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    names = list_necks(list(patterns)) if patterns else list_necks()
    return [n for n in names if neck_cfg(n).source == BUILTIN]


def measure_variants(bench: Bench, names: Sequence[str], references: Sequence[Reference],
                      step: Callable[[str], None]) -> List[VariantDoc]:
    docs = []
    for name in names:
        doc = VariantDoc(neck_cfg(name))
        errors = []
        for ref in references:
            try:
                neck, stats = bench.build(name, ref)
            except (ValueError, TypeError, RuntimeError) as e:
                errors.append(f"{ref.backbone}: {e}")
                continue
            doc.reference, doc.stats, doc.neck = ref, stats, neck
            info = bench.get(ref)[0].feature_info
            doc.inputs = FeatureSpec(tuple(info.channels()), tuple(info.reduction()))
            doc.diagram = mermaid(neck)
            break
        if doc.neck is None:
            doc.error = "; ".join(errors) if errors else "no reference backbone"
        step(name)
        docs.append(doc)
    return docs


@dataclass
class Question:
    key: str
    variant: str
    overrides: Dict[str, Any]
    stats: Optional[NeckStats] = None
    neck: Optional[nn.Module] = None
    error: str = ""


# The registered variants the questions page compares (the notes' block unless named otherwise): width, depth,
# direction (the notes' 64-channel pair and the papers' 256-channel defaults), and the two baselines.
QUESTION_VARIANTS: Tuple[str, ...] = (
    "fpn_bn_lrelu_64", "fpn_bn_lrelu_128", "fpn_bn_lrelu_256",
    "fpn_deep2_bn_lrelu_64", "fpn_deep3_bn_lrelu_64", "fpn_deep2", "fpn_deep3",
    "pan_bn_lrelu_64", "fpn", "pan",
    "single_level_64", "no_top_down_64",
)


def question_configs() -> List[Question]:
    """One :class:`Question` per variant of :data:`QUESTION_VARIANTS`, keyed by its name. They are built through
    :meth:`Bench.build`, so they share their modules (and latency) with the variants table."""
    return [Question(name, name, {}) for name in QUESTION_VARIANTS]
