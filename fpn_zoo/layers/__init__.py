"""Building blocks shared by every family: knob tables, conv blocks, block sets, resampling, fusion, folding.

Layers never import the graph executor or a family (``graph`` imports ``layers``; families import both).
"""
from .blocks import ActConvNorm, Blocks, init_weights, preact_blocks, standard_blocks
from .config import (
    BIFPN_FUSIONS, CSP_BLOCKS, DOWNSAMPLES, EXTRA_OPS, EXTRA_SOURCES, FUSIONS, LATERALS, UPSAMPLE_MODES, check_knobs,
)
from .conv import ConvNormAct, LayerSpec, SeparableConvNormAct, conv_block, resolve_act, resolve_norm
from .fold import fold_batchnorm, fuse_batchnorm
from .fusion import ConcatFusion, GlobalAttnFusion, SumFusion, WeightedFusion, make_fusion
from .resample import ExtraLevels, Resample, max_pool_down, resize_to

__all__ = [
    "ActConvNorm", "Blocks", "init_weights", "preact_blocks", "standard_blocks",
    "BIFPN_FUSIONS", "CSP_BLOCKS", "DOWNSAMPLES", "EXTRA_OPS", "EXTRA_SOURCES", "FUSIONS", "LATERALS",
    "UPSAMPLE_MODES", "check_knobs",
    "ConvNormAct", "LayerSpec", "SeparableConvNormAct", "conv_block", "resolve_act", "resolve_norm",
    "fold_batchnorm", "fuse_batchnorm",
    "ConcatFusion", "GlobalAttnFusion", "SumFusion", "WeightedFusion", "make_fusion",
    "ExtraLevels", "Resample", "max_pool_down", "resize_to",
]
