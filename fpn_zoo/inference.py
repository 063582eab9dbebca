"""An opt-in inference path: fold BatchNorm, choose the memory layout by measuring it here, optionally compile.

The default path of every neck is plain PyTorch modules: exact, trainable, exportable. For deployment,
:func:`accelerate` returns an *inference snapshot* of a neck:

1. a copy of the neck, in eval mode, with every foldable BatchNorm folded into its conv
   (:func:`fpn_zoo.fold_batchnorm`) and gradients off;
2. the memory layout of its maps (``contiguous`` NCHW or ``channels_last``) chosen by **timing both on the
   running machine** with the example inputs — oneDNN picks different kernels on different CPUs, so no
   layout is right everywhere; the choice is remembered for the rest of the process per (architecture,
   input shapes, dtype, threads), so accelerating a second neck of the same kind times nothing;
3. optionally ``torch.compile`` (``compile=True``), kept only where it is measured faster than eager
   (``compile="measure"``) or always (``compile=True``, e.g. to pay the compile once per deployment).

The snapshot is built from the weights as they are when :func:`accelerate` is called and never follows later
updates of the original (an optimizer step, EMA, ``load_state_dict``): accelerate again after training.
Nothing is cached from weights anywhere else in the library, so no update path can leave a stale result.
A snapshot refuses ``train()``.

Example:
    >>> import torch, fpn_zoo
    >>> neck = fpn_zoo.create_neck("fpn_bn_lrelu_64", [32, 64, 128])
    >>> xs = [torch.rand(1, c, s, s) for c, s in ((32, 16), (64, 8), (128, 4))]
    >>> fast = fpn_zoo.accelerate(neck, xs, rounds=1)
    >>> fast.layout in ("contiguous", "channels_last")
    True
    >>> [tuple(f.shape) for f in fast(xs)] == [tuple(f.shape) for f in neck.eval()(xs)]
    True
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .layers.fold import fold_batchnorm as _fold_batchnorm

__all__ = ["accelerate", "InferenceNeck", "LAYOUTS", "clear_layout_cache"]

LAYOUTS = ("contiguous", "channels_last")

_decisions: Dict[Tuple[Any, ...], Tuple[str, Dict[str, float]]] = {}
_decisions_lock = threading.Lock()


def clear_layout_cache() -> None:
    """Forget the layouts measured so far in this process (the next :func:`accelerate` times again)."""
    with _decisions_lock:
        _decisions.clear()


def _memory_format(layout: str) -> torch.memory_format:
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def _set_layout(module: nn.Module, layout: str) -> None:
    """Make ``module`` run its maps in ``layout``: necks that convert their inputs are told; weights follow."""
    for m in module.modules():
        if hasattr(type(m), "channels_last") and isinstance(getattr(m, "channels_last", None), (bool, type(None))):
            m.channels_last = layout == "channels_last"
    module.to(memory_format=_memory_format(layout))


class InferenceNeck(nn.Module):
    """What :func:`accelerate` returns: a folded, eval-only copy of a neck and the layout measured for it.

    Attributes:
        module: the folded copy (eval mode, no gradients).
        layout: ``"contiguous"`` or ``"channels_last"``: how input maps are laid out before the call.
        compiled: whether the forward runs through ``torch.compile``.
        timings: the measured median seconds per candidate (``{"contiguous": ..., "channels_last": ...,
            "compiled": ...}``); empty when the decision came from this process's cache.
        feature_info: the original neck's ``feature_info``.
    """

    def __init__(self, module: nn.Module, layout: str, compiled: bool = False,
                 timings: Optional[Dict[str, float]] = None) -> None:
        super().__init__()
        self.module = module
        self.layout = layout
        self.compiled = compiled
        self.timings = dict(timings or {})
        self.feature_info = getattr(module, "feature_info", None)
        self._run: Callable[..., Any] = torch.compile(module) if compiled else module

    def train(self, mode: bool = True) -> "InferenceNeck":
        if mode:
            raise RuntimeError(
                "an accelerated neck is an inference snapshot of the weights it was built from (BatchNorm folded, "
                "no gradients): train the original neck and call fpn_zoo.accelerate(neck, inputs) again"
            )
        return super().train(False)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: the maps the original neck takes. Returns: its outputs (NCHW maps)."""
        fmt = _memory_format(self.layout)
        with torch.inference_mode():
            return self._run([f.contiguous(memory_format=fmt) if f.dim() == 4 else f for f in features])


def _signature(module: nn.Module, inputs: Sequence[torch.Tensor]) -> Tuple[Any, ...]:
    """What a layout decision depends on: the architecture, the input shapes and dtype, the threads."""
    arch = tuple((name, tuple(p.shape)) for name, p in module.state_dict().items())
    shapes = tuple((tuple(x.shape), str(x.dtype)) for x in inputs)
    return type(module).__qualname__, arch, shapes, torch.get_num_threads()


def _median_times(steps: Dict[str, Callable[[], Any]], rounds: int) -> Dict[str, float]:
    """Median seconds per step over ``rounds`` interleaved repetitions (after one warm-up each)."""
    for step in steps.values():
        step()
    times: Dict[str, List[float]] = {k: [] for k in steps}
    order = list(steps)
    for r in range(rounds):
        for key in order[r % len(order):] + order[:r % len(order)]:  # rotate who goes first
            start = time.perf_counter()
            steps[key]()
            times[key].append(time.perf_counter() - start)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def accelerate(
    neck: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    *,
    fold_batchnorm: bool = True,
    layout: Optional[str] = None,
    compile: Union[bool, str] = False,
    rounds: int = 5,
) -> InferenceNeck:
    """An inference snapshot of ``neck``, with what is measured faster on this machine.

    Args:
        neck: any module taking a list of maps (a neck from :func:`fpn_zoo.create_neck`, a
            ``BackboneWithNeck`` takes one tensor: pass ``[images]`` only for modules taking a list).
        example_inputs: maps of the shapes it will serve (layouts are timed on them).
        fold_batchnorm: fold BatchNorm into the convs (same function, one pass less per norm).
        layout: ``"contiguous"`` or ``"channels_last"`` to skip measuring; None measures both (once per
            process for a given architecture and input shapes).
        compile: False (eager), True (always ``torch.compile``), or ``"measure"`` (compile, keep it only if
            faster than eager on these inputs).
        rounds: timed repetitions per candidate; medians decide.

    Returns:
        An :class:`InferenceNeck`; its ``layout``, ``compiled`` and ``timings`` say what was chosen and why.

    Raises:
        TypeError: ``neck`` is not a module or ``example_inputs`` not a list of tensors.
        ValueError: an unknown ``layout`` or ``compile`` value, or ``rounds < 1``.
    """
    if not isinstance(neck, nn.Module):
        raise TypeError(f"accelerate takes a neck module, got {type(neck).__name__}")
    if isinstance(example_inputs, torch.Tensor) or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise TypeError("example_inputs must be a list of feature maps (tensors), as the neck takes them")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} or None (measure), got {layout!r}")
    if compile not in (True, False, "measure"):
        raise ValueError(f"compile must be True, False or 'measure', got {compile!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")

    module = copy.deepcopy(neck).eval()
    if fold_batchnorm:
        _fold_batchnorm(module)
    module.requires_grad_(False)
    inputs = list(example_inputs)

    timings: Dict[str, float] = {}
    if layout is None:
        key = _signature(module, inputs)
        with _decisions_lock:
            cached = _decisions.get(key)
        if cached is not None:
            layout = cached[0]
        else:
            candidates = {name: copy.deepcopy(module) for name in LAYOUTS}
            for name, candidate in candidates.items():
                _set_layout(candidate, name)
            steps = {name: (lambda c=candidates[name], n=name: InferenceNeck(c, n)(inputs)) for name in LAYOUTS}
            timings = _median_times(steps, rounds)
            layout = min(timings, key=timings.get)
            with _decisions_lock:
                _decisions[key] = (layout, dict(timings))
    _set_layout(module, layout)

    eager = InferenceNeck(module, layout, timings=timings)
    if not compile:
        return eager
    fast = InferenceNeck(module, layout, compiled=True, timings=timings)
    if compile == "measure":
        t = _median_times({"eager": lambda: eager(inputs), "compiled": lambda: fast(inputs)}, rounds)
        for neck_ in (eager, fast):
            neck_.timings.update(t)
        return fast if t["compiled"] < t["eager"] else eager
    return fast
