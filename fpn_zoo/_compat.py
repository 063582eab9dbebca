"""What differs between torch releases and tracing modes, asked in one place.

The library checks inputs eagerly but keeps those checks out of compiled and exported graphs; every such
question goes through here so there is one answer for the whole package.
"""
from __future__ import annotations

import torch

__all__ = ["is_compiling", "is_exporting"]


def is_compiling() -> bool:
    """True while ``torch.compile`` / ``torch.export`` trace: input checks then stay out of the graph."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def is_exporting() -> bool:
    """True while ``torch.export`` (and the dynamo ONNX exporter) trace: resizes are then always written."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting())
