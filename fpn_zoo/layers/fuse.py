"""Deprecated module name: BatchNorm folding lives in :mod:`fpn_zoo.layers.fold` (delete once nothing imports it)."""
from .fold import fold_batchnorm, fuse_batchnorm  # noqa: F401

__all__ = ["fold_batchnorm", "fuse_batchnorm"]
