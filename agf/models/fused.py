"""Max-pooling and ELU in one pass over bfloat16 activations on the CPU (compiled with numba).

In the bfloat16 inference copy (:func:`agf.models.cnn.inference_copy`), each convolution is
followed by max-pooling (but the last two) and ELU. PyTorch runs those as six element-wise
passes over memory (two maxima for the pooling; clamp, exp, subtract and a maximum for the
ELU), each widening bfloat16 to float32 and rounding back. Here one pass reads each
convolution output once, takes each window's maximum, computes ELU in float32 and rounds once
to bfloat16 (to nearest, ties to even): about 3x faster, and the result is PyTorch's float32
pooling and ELU rounded to bfloat16, bit for bit, for every input (tested over every
bfloat16 value, NaN and infinities included).

Activations are channels-last (``torch.channels_last``), as the inference copy keeps them, and
are read as their 16-bit patterns. One call runs on the calling thread; the kernels release the
GIL, so that forward passes on several threads (:func:`agf.models.serving.forward_threads`) run
side by side.
"""

import numpy as np
import torch

from agf.ingest.compiled import compile_lock, use_own_cache

use_own_cache()  # before numba is imported: compiled kernels go to agf's own cache folder

import numba  # noqa: E402 - after the cache folder is set

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
    """The larger of two float32 values, NaN if either is (as max-pooling propagates it)."""
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


@numba.njit(nogil=True, fastmath=_FAST, cache=True)
def _rows_kernel(src, dst, start, stop):
    """Rows ``start:stop`` of ``dst`` (n, h_out, length) from ``src`` (n, h, length): the ELU of
    the maximum of each pair of rows when h_out < h (pooling (2, 1)), of each row otherwise."""
    rows_out, length = dst.shape[1], dst.shape[2]
    pooled = rows_out != src.shape[1]
    for q in range(start, stop):
        n, h = q // rows_out, q % rows_out
        if pooled:
            for j in range(length):
                dst[n, h, j] = _elu_bits(_max(_widen(src[n, 2 * h, j]), _widen(src[n, 2 * h + 1, j])))
        else:
            for j in range(length):
                dst[n, h, j] = _elu_bits(_widen(src[n, h, j]))


@numba.njit(nogil=True, fastmath=_FAST, cache=True)
def _squares_kernel(src, dst, start, stop):
    """Rows ``start:stop`` of ``dst`` (n, h // 2, w // 2, c) from ``src`` (n, h, w, c): the ELU of
    the maximum of each 2 x 2 window (pooling (2, 2); an odd last row or column is dropped)."""
    rows_out, columns_out, channels = dst.shape[1], dst.shape[2], dst.shape[3]
    for q in range(start, stop):
        n, h = q // rows_out, q % rows_out
        for w in range(columns_out):
            for c in range(channels):
                top = _max(_widen(src[n, 2 * h, 2 * w, c]), _widen(src[n, 2 * h, 2 * w + 1, c]))
                bottom = _max(_widen(src[n, 2 * h + 1, 2 * w, c]), _widen(src[n, 2 * h + 1, 2 * w + 1, c]))
                dst[n, h, w, c] = _elu_bits(_max(top, bottom))


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
    if pool not in ((2, 1), (2, 2), None):
        raise ValueError(f"pooling {pool} is not (2, 1), (2, 2) or None")
    if x.dtype != torch.bfloat16 or x.device.type != "cpu" or x.dim() != 4:
        raise ValueError(f"expected 4-d bfloat16 activations on the CPU, not {x.dim()}-d {x.dtype} on {x.device}")
    x = x.contiguous(memory_format=torch.channels_last)
    n, channels, height, width = x.shape
    ph, pw = pool or (1, 1)
    out = torch.empty((n, channels, height // ph, width // pw), dtype=torch.bfloat16, memory_format=torch.channels_last)
    src, dst = _bits(x), _bits(out)  # (n, h, w, c) views
    if pw == 1:  # rows only: each row's columns and channels are one run of memory
        kernel = _rows_kernel
        src, dst = src.reshape(n, height, width * channels), dst.reshape(n, height // ph, width * channels)
    else:
        kernel = _squares_kernel
    _compile(kernel, src, dst)
    kernel(src, dst, 0, n * (height // ph))
    return out


def _bits(x: torch.Tensor) -> np.ndarray:
    """A channels-last bfloat16 tensor's 16-bit patterns as a (n, h, w, c) array, no copy."""
    return x.permute(0, 2, 3, 1).view(torch.int16).numpy().view(np.uint16)


def _compile(kernel, src: np.ndarray, dst: np.ndarray) -> None:
    """Compile ``kernel`` for these arrays' types, or load it from the cache, if this process has
    not: under agf's compile lock, so that two processes never write the cache at once."""
    key = (kernel, _array_kind(src), _array_kind(dst))  # what numba's type of them depends on, cheaply
    if key not in _COMPILED:
        with compile_lock():
            kernel(src, dst, 0, 0)
        _COMPILED.add(key)


_COMPILED: set[tuple] = set()  # inherited by a forked child, whose numba has the same kernels


def _array_kind(a: np.ndarray) -> tuple:
    return a.dtype, a.ndim, a.flags.c_contiguous, a.flags.f_contiguous, a.flags.writeable, a.flags.aligned
