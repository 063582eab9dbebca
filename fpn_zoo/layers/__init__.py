"""Building blocks shared by every family: conv blocks, resampling, fusion."""
from .conv import ConvNormAct, LayerSpec, SeparableConvNormAct, conv_block, resolve_act, resolve_norm
from .fusion import FUSIONS, ConcatFusion, SumFusion, WeightedFusion, make_fusion
from .resample import ExtraLevels, Resample, max_pool_down, resize_to

__all__ = [
    "ConvNormAct", "LayerSpec", "SeparableConvNormAct", "conv_block", "resolve_act", "resolve_norm",
    "FUSIONS", "ConcatFusion", "SumFusion", "WeightedFusion", "make_fusion",
    "ExtraLevels", "Resample", "max_pool_down", "resize_to",
]
