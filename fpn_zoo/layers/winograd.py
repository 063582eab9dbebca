"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3), for the CPU.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, https://arxiv.org/abs/1509.09308.

A stride-1 3x3 conv makes each 4x4 tile of its output from a 6x6 tile of its input. Transformed into the
Winograd domain, that is 36 element-wise products per (input, output) channel pair instead of 144: the conv
becomes 36 independent ``(tiles x C_in) @ (C_in x C_out)`` matrix products, a quarter of the multiply-adds
of the direct conv, plus cheap linear transforms of the tiles before and after. It computes the same
function as the direct conv; the float32 rounding differs (about 1e-5 of the output's magnitude, a few
times the direct conv's own rounding). Neck smoothing convs (256 -> 256 channels on stride-8 maps) are where
it pays: on this project's 2-core CPU it took 0.7x the time of oneDNN's direct conv at 80x80 and 256
channels (forward, and 0.8x for a training step), and lost below about 32x32 or 192 channels
(``benchmarks/winograd.py``).

:class:`WinogradConv2d` is an ``nn.Conv2d`` (same parameters, same state dict) that takes this path only
where it wins, and the direct conv everywhere else: other dtypes or devices, other kernels, small maps, and whenever
something watches the ops (``torch.compile``, ``torch.export``, tracing, ``FlopCounterMode``): compilers
choose their own algorithms, exported programs stay plain convolutions, and FLOP counts stay the
conventional direct-conv counts.
"""
from __future__ import annotations

import weakref
from functools import lru_cache
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._features import is_compiling

__all__ = ["WinogradConv2d", "winograd_conv3x3"]

TILE = 4  # output tile side (m)
WINDOW = TILE + 2  # input tile side (m + r - 1)

# The transforms for F(4, 3) with interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray, sec. 4).
_INPUT_T = [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
]
_FILTER = [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
]
_OUTPUT_T = [
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1],
]

# Where the Winograd path wins (benchmarks/winograd.py, float32, 2 threads): at 256 channels it took
# 0.69-0.72x the direct conv's time from 64x64 up and 0.94x at 32x32-40x40; at 192 channels 0.87-0.91x;
# at 128 channels and below it only broke even or lost (the transforms' memory traffic outweighs the
# saved multiplies), and below 32x32 it lost everywhere.
MIN_CHANNELS = 192
MIN_PIXELS = 32 * 32

# Tiles are processed in chunks of about this many (whole tile rows of one image, or whole images), so
# the transformed tiles of a chunk stay in cache between the transforms and the matrix products, and the
# scratch memory does not grow with the batch (160 tiles = 8 tile rows of an 80x80 map: 6 MB at 256 ch).
_TILES_PER_CHUNK = 160


@lru_cache(maxsize=None)
def _transforms(dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2-D transforms as matrices on flattened tiles: input (36x36), filter (36x9), output (16x36)."""

    def as_2d(matrix):
        m = torch.tensor(matrix, dtype=torch.float64)
        return torch.kron(m, m).to(dtype=dtype, device=device)

    with torch.inference_mode(False):  # cached: must stay usable by autograd if first made in inference mode
        return as_2d(_INPUT_T), as_2d(_FILTER), as_2d(_OUTPUT_T)


def _filter_transform(weight: torch.Tensor, filter_t: torch.Tensor) -> torch.Tensor:
    """``(C_out, C_in, 3, 3)`` weights -> ``(36, C_in, C_out)`` Winograd-domain weights, row-major.

    (``torch.bmm`` with ``out=`` copies column-major operands matrix by matrix, so the layout matters.)
    """
    c_out, c_in = weight.shape[:2]
    taps = weight.permute(2, 3, 1, 0).reshape(9, c_in * c_out)
    return (filter_t @ taps).view(WINDOW * WINDOW, c_in, c_out)


def _input_tiles(x: torch.Tensor) -> torch.Tensor:
    """Overlapping 6x6 input tiles, stride 4, as a view ``(N, C, tiles_h, tiles_w, 6, 6)``."""
    height, width = x.shape[-2:]
    tiles_h, tiles_w = -(-height // TILE), -(-width // TILE)
    padded = F.pad(x, (1, tiles_w * TILE + 1 - width, 1, tiles_h * TILE + 1 - height))
    return padded.unfold(2, WINDOW, TILE).unfold(3, WINDOW, TILE)


def winograd_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    transformed_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 kernel, stride 1, no groups, by F(4x4, 3x3).

    Any size (tiles past the edge are cropped), any memory format in; channels-last out. Differentiable
    once: the input and weight gradients are Winograd computations too (no double backward).
    ``transformed_weight`` is ``weight`` already in the Winograd domain (inference caches it).
    """
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[-2:] != (3, 3) or weight.shape[1] != x.shape[1]:
        raise ValueError(f"winograd_conv3x3 needs NCHW input and (C_out, {x.shape[1]}, 3, 3) weights, "
                         f"got input {tuple(x.shape)} and weights {tuple(weight.shape)}")
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and needs_grad:
        return _WinogradConv3x3.apply(x, weight, bias)
    if transformed_weight is None:
        transformed_weight = _filter_transform(weight, _transforms(weight.dtype, weight.device)[1])
    return _conv(x, transformed_weight, bias)


class _WinogradConv3x3(torch.autograd.Function):
    """Forward and both gradients by F(4x4, 3x3); saves only the input and the weight, like a conv."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _conv(x, _filter_transform(weight, _transforms(weight.dtype, weight.device)[1]), bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        filter_t = _transforms(weight.dtype, weight.device)[1]
        if ctx.needs_input_grad[0]:
            # The input gradient of a stride-1 "same" conv is the same conv of the output gradient with
            # the kernel rotated by 180 degrees and its channel axes swapped.
            rotated = weight.flip(2, 3).transpose(0, 1)
            grad_x = _conv(grad_out, _filter_transform(rotated, filter_t), None)
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(x, grad_out)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, grad_bias


class _Chunk(NamedTuple):
    """Images ``first_image:last_image``, tile rows ``top:bottom`` of each."""

    first_image: int
    last_image: int
    top: int
    bottom: int

    @property
    def images(self) -> int:
        return self.last_image - self.first_image

    @property
    def rows(self) -> int:
        return self.bottom - self.top


def _chunks(batch: int, tiles_h: int, tiles_w: int) -> Tuple[List[_Chunk], int]:
    """The chunks covering every tile, and the most tiles any of them holds."""
    rows = max(1, min(tiles_h, _TILES_PER_CHUNK // tiles_w))
    if rows < tiles_h:  # parts of one image at a time
        chunks = [_Chunk(n, n + 1, top, min(tiles_h, top + rows)) for n in range(batch) for top in range(0, tiles_h, rows)]
        return chunks, rows * tiles_w
    images = max(1, min(batch, _TILES_PER_CHUNK // (tiles_h * tiles_w)))  # whole images at a time
    chunks = [_Chunk(n, min(batch, n + images), 0, tiles_h) for n in range(0, batch, images)]
    return chunks, images * tiles_h * tiles_w


def _conv(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The forward computation, chunk by chunk, into one channels-last output."""
    batch, _, height, width = x.shape
    c_in, c_out = u.shape[1:]
    input_t, _, output_t = _transforms(x.dtype, x.device)
    tiles = _input_tiles(x)
    tiles_h, tiles_w = tiles.shape[2:4]
    out = torch.empty((batch, c_out, height, width), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    out_nhwc = out.permute(0, 2, 3, 1)
    chunks, most_tiles = _chunks(batch, tiles_h, tiles_w)
    area = WINDOW * WINDOW
    # One set of buffers, reused by every chunk (fresh multi-MB allocations cost page faults each time).
    d_buf = x.new_empty(area * most_tiles * c_in)
    v_buf = torch.empty_like(d_buf)
    m_buf = x.new_empty(area * most_tiles * c_out)
    y_buf = x.new_empty(TILE * TILE * most_tiles * c_out)
    for chunk in chunks:
        images, rows = chunk.images, chunk.rows
        n_tiles = images * rows * tiles_w
        d = d_buf[: area * n_tiles * c_in].view(WINDOW, WINDOW, images, rows, tiles_w, c_in)
        d.copy_(tiles[chunk.first_image:chunk.last_image, :, chunk.top:chunk.bottom].permute(4, 5, 0, 2, 3, 1))
        v = v_buf[: area * n_tiles * c_in].view(area, n_tiles * c_in)
        torch.mm(input_t, d.view(area, n_tiles * c_in), out=v)
        m = m_buf[: area * n_tiles * c_out].view(area, n_tiles, c_out)
        torch.bmm(v.view(area, n_tiles, c_in), u, out=m)
        y = y_buf[: TILE * TILE * n_tiles * c_out].view(TILE * TILE, n_tiles * c_out)
        torch.mm(output_t, m.view(area, n_tiles * c_out), out=y)
        y = y.view(TILE, TILE, images, rows, tiles_w, c_out).permute(2, 3, 0, 4, 1, 5)
        y = y.reshape(images, rows * TILE, tiles_w * TILE, c_out)
        first_row, last_row = chunk.top * TILE, min(height, chunk.bottom * TILE)
        source = y[:, : last_row - first_row, :width]
        target = out_nhwc[chunk.first_image:chunk.last_image, first_row:last_row]
        if bias is None:
            target.copy_(source)
        else:
            torch.add(source, bias, out=target)
    return out


def _weight_grad(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """``d loss / d weight`` in the Winograd domain: ``sum over tiles of V^T @ (A grad_Y A^T)``, chunked."""
    batch, c_in, height, width = x.shape
    c_out = grad_out.shape[1]
    input_t, filter_t, output_t = _transforms(x.dtype, x.device)
    tiles = _input_tiles(x)
    tiles_h, tiles_w = tiles.shape[2:4]
    # Output-gradient tiles do not overlap: pad to whole tiles (zeros past the edge) and view.
    grad_tiles = F.pad(grad_out, (0, tiles_w * TILE - width, 0, tiles_h * TILE - height))
    grad_tiles = grad_tiles.view(batch, c_out, tiles_h, TILE, tiles_w, TILE)
    chunks, most_tiles = _chunks(batch, tiles_h, tiles_w)
    area = WINDOW * WINDOW
    d_buf = x.new_empty(area * c_in * most_tiles)
    vt_buf = torch.empty_like(d_buf)
    gy_buf = x.new_empty(TILE * TILE * most_tiles * c_out)
    gm_buf = x.new_empty(area * most_tiles * c_out)
    grad_u = x.new_empty(area, c_in, c_out)
    for i, chunk in enumerate(chunks):
        images, rows = chunk.images, chunk.rows
        n_tiles = images * rows * tiles_w
        part = (slice(chunk.first_image, chunk.last_image), slice(None), slice(chunk.top, chunk.bottom))
        # Input tiles transposed per position, (36, C_in, tiles): V^T comes out row-major.
        d = d_buf[: area * c_in * n_tiles].view(WINDOW, WINDOW, c_in, images, rows, tiles_w)
        d.copy_(tiles[part].permute(4, 5, 1, 0, 2, 3))
        vt = vt_buf[: area * c_in * n_tiles].view(area, c_in * n_tiles)
        torch.mm(input_t, d.view(area, c_in * n_tiles), out=vt)
        gy = gy_buf[: TILE * TILE * n_tiles * c_out].view(TILE, TILE, images, rows, tiles_w, c_out)
        gy.copy_(grad_tiles[part].permute(3, 5, 0, 2, 4, 1))
        gm = gm_buf[: area * n_tiles * c_out].view(area, n_tiles * c_out)
        torch.mm(output_t.t(), gy.view(TILE * TILE, n_tiles * c_out), out=gm)
        if i == 0:
            torch.bmm(vt.view(area, c_in, n_tiles), gm.view(area, n_tiles, c_out), out=grad_u)
        else:
            grad_u.baddbmm_(vt.view(area, c_in, n_tiles), gm.view(area, n_tiles, c_out))
    grad_taps = filter_t.t() @ grad_u.view(area, c_in * c_out)
    return grad_taps.view(3, 3, c_in, c_out).permute(3, 2, 0, 1).contiguous()


try:  # private helpers, resolved once: the checks below run on every conv call
    from torch.utils._python_dispatch import _get_current_dispatch_mode
except ImportError:  # pragma: no cover - moved in some torch release
    def _get_current_dispatch_mode():
        return None

_is_functorch_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", lambda x: False)


def _observed() -> bool:
    """Is something watching the ops: a compiler, exporter, tracer, or a dispatch mode (FLOP counter, fake tensors)?

    Those see the plain conv: compilers choose their own kernels, exported programs stay portable, and FLOP
    counts stay the conventional direct-conv counts.
    """
    if is_compiling():
        return True  # first, and alone: the compilers trace this function
    return torch.jit.is_tracing() or torch.jit.is_scripting() or _get_current_dispatch_mode() is not None


def _autocasting() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that runs large stride-1 3x3 convs on the CPU by Winograd F(4x4, 3x3).

    Parameters, state dict and every other behaviour are ``nn.Conv2d``'s. The Winograd path is taken when
    the conv is 3x3, stride 1, padding 1, no dilation or groups, zero padding, the input is a float32 CPU
    tensor of at least ``MIN_PIXELS`` pixels, both channel counts are at least ``MIN_CHANNELS``, no autocast, and
    nothing is watching the ops (compiler, exporter, tracer, FLOP counter, ``torch.func`` transform: they
    all see the direct conv). Set ``use_winograd = False`` on an instance (or the class) to always run
    the direct conv, e.g. to reproduce another library's float32 output to the last bit.
    """

    use_winograd: bool = True
    _cached_weight: Optional[Tuple[tuple, torch.Tensor]] = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The conv's geometry is fixed at construction: decide once whether it can ever take the path.
        self.winograd_geometry = (
            self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and min(self.in_channels, self.out_channels) >= MIN_CHANNELS
        )

    def winograd_applies(self, x: torch.Tensor) -> bool:
        return (
            self.use_winograd
            and self.winograd_geometry  # most convs stop here
            and not _observed()  # before looking at x: compilers trace from here on
            and x.dim() == 4
            and x.shape[-2] * x.shape[-1] >= MIN_PIXELS
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and not _is_functorch_wrapped(x)
            and not _autocasting()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.winograd_applies(x):
            return super().forward(x)
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return winograd_conv3x3(x, self.weight, self.bias)
        return winograd_conv3x3(x, self.weight, self.bias, transformed_weight=self._inference_weight())

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_cached_weight", None)  # a cache (and a weak reference: not picklable); copies rebuild it
        return state

    def _inference_weight(self) -> torch.Tensor:
        """The Winograd-domain weight, kept between calls until the weight changes.

        "Changes" means another tensor object (a reassigned parameter, ``fuse_batchnorm``), other storage
        (``.data =``, ``.to()``) or an in-place update (optimizer step, ``load_state_dict``: the version).
        The tensor is held by weak reference, so a freed weight's address cannot alias a new one.
        """
        weight = self.weight
        cached = self._cached_weight
        if cached is not None:
            (ref, data_ptr, version), transformed = cached
            if ref() is weight and data_ptr == weight.data_ptr() and version == weight._version:
                return transformed
        with torch.no_grad():
            transformed = _filter_transform(weight, _transforms(weight.dtype, weight.device)[1])
        self._cached_weight = ((weakref.ref(weight), weight.data_ptr(), weight._version), transformed)
        return transformed
