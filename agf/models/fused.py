"""Max-pooling and ELU in one pass over bfloat16 activations, or 8-bit codes, on the CPU
(compiled with numba).

In the bfloat16 inference copy (:func:`agf.models.cnn.inference_copy`), each convolution is
followed by max-pooling (but the last two) and ELU. PyTorch runs those as six element-wise
passes over memory (two maxima for the pooling; clamp, exp, subtract and a maximum for the
ELU), each widening bfloat16 to float32 and rounding back. Here one pass reads each
convolution output once, takes each window's maximum, computes ELU in float32 and rounds once
to bfloat16 (to nearest, ties to even): about 3x faster, and the result is PyTorch's float32
pooling and ELU rounded to bfloat16, bit for bit, for every input (tested over every
bfloat16 value, NaN and infinities included).

In the 8-bit copy, a convolution's outputs are uint8 codes, which keep the order of the values
they stand for: :func:`pool_lookup` takes each window's largest code and looks up its ELU in a
256-entry table (as the next layer's code, or as a float32 value).

Activations are channels-last (``torch.channels_last``), as the inference copy keeps them;
bfloat16 ones are read as their 16-bit patterns. One call runs on the calling thread; the kernels release the
GIL, so that forward passes on several threads (:func:`agf.models.serving.forward_threads`) run
side by side.
"""

import numpy as np
import torch

from agf.ingest.compiled import compile_lock, use_own_cache

use_own_cache()  # before numba is imported: compiled kernels go to agf's own cache folder

import numba  # noqa: E402 - after the cache folder is set
from numba.extending import overload  # noqa: E402

# Floating-point licences that let LLVM vectorise the loops; without 'nnan' and 'ninf', so that
# maxima keep their meaning for every input.
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
_LOG2_E = np.float32(1.4426950408889634)
# ln 2 in two parts, the first exact in few bits, so that x - k ln 2 loses nothing for |k| <= 126
_LN2_HIGH, _LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)
# Taylor-like coefficients of (e^r - 1 - r) / r^2 on |r| <= ln 2 / 2 (Cephes' expf), float32-accurate
_EXP_COEFFICIENTS = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                                     4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))


@numba.njit(inline="always", fastmath=_FAST)
def _widen(bits):
    """A bfloat16's 16 bits -> its float32 value."""
    return np.uint32(np.uint32(bits) << np.uint32(16)).view(np.float32)


@numba.njit(inline="always", fastmath=_FAST)
def _max(a, b):
    """The larger of two float32 values (NaN if either is, as max-pooling propagates it), or codes."""
    return a if a >= b or a != a else b  # on ties the first, as PyTorch's pooling keeps


@numba.njit(inline="always", fastmath=_FAST)
def _elu_bits(x):
    """ELU(x) = max(x, e^min(x, 0) - 1) in float32, rounded to the nearest bfloat16: its 16 bits."""
    m = max(min(x, np.float32(0.0)), np.float32(-87.0))  # e^-87 is float32's smallest normal scale
    k = np.rint(m * _LOG2_E)
    r = m - k * _LN2_HIGH - k * _LN2_LOW
    p = _EXP_COEFFICIENTS[0]
    p = p * r + _EXP_COEFFICIENTS[1]
    p = p * r + _EXP_COEFFICIENTS[2]
    p = p * r + _EXP_COEFFICIENTS[3]
    p = p * r + _EXP_COEFFICIENTS[4]
    p = p * r + _EXP_COEFFICIENTS[5]
    scale = np.uint32(np.uint32(np.int32(k) + np.int32(127)) << np.uint32(23)).view(np.float32)  # 2^k
    # e^m - 1 = 2^k (r + r^2 p) + (2^k - 1): exact in its last term, so accurate near 0 (k = 0)
    value = max(x, scale * (r + r * r * p) + (scale - np.float32(1.0)))
    bits = np.float32(value).view(np.uint32)
    return np.uint16((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


def _value(x):
    """What a kernel compares: a bfloat16's float32 value from its 16 bits, or an 8-bit code."""


@overload(_value, inline="always", jit_options={"fastmath": _FAST})
def _value_of(x):
    if x == numba.types.uint16:
        return lambda x: _widen(x)
    return lambda x: x


def _output(table, largest):
    """What a kernel writes for a window's largest value: its ELU rounded to a bfloat16's bits
    (``table`` unused), or ``table`` at a code."""


@overload(_output, inline="always", jit_options={"fastmath": _FAST})
def _output_of(table, largest):
    if isinstance(largest, numba.types.Float):
        return lambda table, largest: _elu_bits(largest)
    return lambda table, largest: table[largest]


@numba.njit(nogil=True, fastmath=_FAST, cache=True)
def _rows_kernel(src, dst, table, start, stop):
    """Rows ``start:stop`` of ``dst`` (n, h_out, length) from ``src`` (n, h, length): the output
    (:func:`_output`) of the larger of each pair of rows when h_out < h (pooling (2, 1)), of each
    row otherwise."""
    rows_out, length = dst.shape[1], dst.shape[2]
    pooled = rows_out != src.shape[1]
    for q in range(start, stop):
        n, h = q // rows_out, q % rows_out
        if pooled:
            for j in range(length):
                dst[n, h, j] = _output(table, _max(_value(src[n, 2 * h, j]), _value(src[n, 2 * h + 1, j])))
        else:
            for j in range(length):
                dst[n, h, j] = _output(table, _value(src[n, h, j]))


@numba.njit(nogil=True, fastmath=_FAST, cache=True)
def _squares_kernel(src, dst, table, start, stop):
    """Rows ``start:stop`` of ``dst`` (n, h // 2, w // 2, c) from ``src`` (n, h, w, c): the output
    (:func:`_output`) of the largest of each 2 x 2 window (pooling (2, 2); an odd last row or
    column is dropped)."""
    rows_out, columns_out, channels = dst.shape[1], dst.shape[2], dst.shape[3]
    for q in range(start, stop):
        n, h = q // rows_out, q % rows_out
        for w in range(columns_out):
            for c in range(channels):
                top = _max(_value(src[n, 2 * h, 2 * w, c]), _value(src[n, 2 * h, 2 * w + 1, c]))
                bottom = _max(_value(src[n, 2 * h + 1, 2 * w, c]), _value(src[n, 2 * h + 1, 2 * w + 1, c]))
                dst[n, h, w, c] = _output(table, _max(top, bottom))


def pool_elu(x: torch.Tensor, pool: tuple[int, int] | None) -> torch.Tensor:
    """ELU of ``x``'s max-pooling, in one pass: bfloat16 on the CPU.

    Parameters
    ----------
    x : torch.Tensor, shape (n, channels, height, width), bfloat16, CPU
        Activations, channels-last (other layouts are copied to it first).
    pool : (2, 1), (2, 2) or None
        The max-pooling window (stride equal to it; an odd last row or column is dropped, as
        ``nn.MaxPool2d`` does), or no pooling.

    Returns
    -------
    torch.Tensor, shape (n, channels, height // ph, width // pw), bfloat16, channels-last
        ``ELU(max_pool2d(x, pool))``: PyTorch's float32 ELU of each window's maximum, rounded
        to bfloat16, bit for bit.
    """
    if x.dtype != torch.bfloat16 or x.device.type != "cpu" or x.dim() != 4:
        raise ValueError(f"expected 4-d bfloat16 activations on the CPU, not {x.dim()}-d {x.dtype} on {x.device}")
    return _pooled(x, pool, torch.bfloat16, _NO_TABLE)


_NO_TABLE = np.zeros(1, np.uint16)  # bfloat16's ELU is computed, not looked up


def pool_lookup(codes: torch.Tensor, pool: tuple[int, int] | None, table: np.ndarray) -> torch.Tensor:
    """``table`` at the max-pooling of ``codes``, in one pass: quantized activations on the CPU.

    With ``codes`` an increasing quantization of a convolution's output, and ``table`` each
    code's ELU (as the next layer's code, or as its value), this is that layer's pooling and
    ELU: both keep order, so the largest code stands for the largest value.

    Parameters
    ----------
    codes : torch.Tensor, shape (n, channels, height, width), uint8, CPU
        Activations' codes, channels-last (other layouts are copied to it first).
    pool : (2, 1), (2, 2) or None
        As in :func:`pool_elu`.
    table : np.ndarray, shape (256,), uint8 or float32
        The output for each code.

    Returns
    -------
    torch.Tensor, shape (n, channels, height // ph, width // pw), ``table``'s dtype, channels-last
    """
    if codes.dtype != torch.uint8 or codes.device.type != "cpu" or codes.dim() != 4 or table.shape != (256,):
        raise ValueError(f"expected 4-d uint8 codes on the CPU and 256 outputs, not {codes.dim()}-d {codes.dtype} "
                         f"on {codes.device} and {table.shape}")
    return _pooled(codes, pool, torch.from_numpy(table).dtype, table)


def _pooled(x: torch.Tensor, pool: tuple[int, int] | None, dtype: torch.dtype, table: np.ndarray) -> torch.Tensor:
    """The kernels' output for ``x`` pooled by ``pool``: a new channels-last tensor of ``dtype``."""
    if pool not in ((2, 1), (2, 2), None):
        raise ValueError(f"pooling {pool} is not (2, 1), (2, 2) or None")
    x = x.contiguous(memory_format=torch.channels_last)
    n, channels, height, width = x.shape
    ph, pw = pool or (1, 1)
    out = torch.empty((n, channels, height // ph, width // pw), dtype=dtype, memory_format=torch.channels_last)
    src, dst = _as_array(x), _as_array(out)  # (n, h, w, c) views
    if pw == 1:  # rows only: each row's columns and channels are one run of memory
        kernel = _rows_kernel
        src, dst = src.reshape(n, height, width * channels), dst.reshape(n, height // ph, width * channels)
    else:
        kernel = _squares_kernel
    _compile(kernel, src, dst, table)
    kernel(src, dst, table, 0, n * (height // ph))
    return out


def _as_array(x: torch.Tensor) -> np.ndarray:
    """A channels-last tensor as a (n, h, w, c) array, no copy: a bfloat16 one as its 16-bit patterns."""
    x = x.permute(0, 2, 3, 1)
    return x.view(torch.int16).numpy().view(np.uint16) if x.dtype == torch.bfloat16 else x.numpy()


def _compile(kernel, src: np.ndarray, dst: np.ndarray, table: np.ndarray) -> None:
    """Compile ``kernel`` for these arrays' types, or load it from the cache, if this process has
    not: under agf's compile lock, so that two processes never write the cache at once."""
    key = (kernel, *map(_array_kind, (src, dst, table)))  # what numba's type of them depends on, cheaply
    if key not in _COMPILED:
        with compile_lock():
            kernel(src, dst, table, 0, 0)  # no rows: typed and compiled, nothing computed
        _COMPILED.add(key)


_COMPILED: set[tuple] = set()  # inherited by a forked child, whose numba has the same kernels


def _array_kind(a: np.ndarray) -> tuple:
    return a.dtype, a.ndim, a.flags.c_contiguous, a.flags.f_contiguous, a.flags.writeable, a.flags.aligned
