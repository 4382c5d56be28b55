"""Absmean ternary weights, int8 activations and the I2_S byte layout of bitnet.cpp.

All three bitnet.cpp formats (I2_S, TL1, TL2) store the same ternary codes and the same float32
per-tensor scale; they differ only in how the codes are packed and how the kernel sums them.
TL1/TL2 packing lives in ``_lut``, the kernels in ``_kernels``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from ._validate import (
    Layout,
    QuantInputError,
    check_layout,
    check_scale,
    codes_input,
    finite_or_raise,
    float_input,
    shape_input,
)

__all__ = [
    "I2S_BLOCK",
    "I2S_TAIL_BYTES",
    "code_fractions",
    "pack_i2s",
    "quantize_activations",
    "quantize_weights",
    "unpack_i2s",
]

WEIGHT_SCALE_FLOOR = 1e-5
ACT_AMAX_FLOOR = 1e-5

#: Values per I2_S block: QK_I2_S in ggml-bitnet-mad.cpp (128 on x86, 64 on ARM NEON).
I2S_BLOCK: dict[Layout, int] = {"x86": 128, "arm": 64}
#: Bytes after the codes; the first 4 hold the float32 scale ("32B for alignment").
I2S_TAIL_BYTES = 32

# Elements per chunk of the streaming passes: big enough to amortise call overhead, small enough
# that the working buffers stay in L2.
_CHUNK = 1 << 16
# The ternary codes pass has only byte-sized buffers: larger chunks (fewer calls) measure faster.
_TERNARY_CHUNK = 1 << 18
_F32_MAX = float(np.finfo(np.float32).max)
# The absmean sum takes each chunk as rows of _SUM_WIDTH values and adds the rows up with one
# float64 BLAS dgemv (a column sum); the per-chunk columns are totalled at the end.
_SUM_WIDTH = 256


def _chunks(n: int, size: int = _CHUNK) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


@np.errstate(over="ignore", invalid="ignore")  # an overflowing or NaN sum is reported below
def _absmean_scale(
    flat: npt.NDArray[np.floating[Any]], whole: npt.NDArray[Any], name: str
) -> float:
    """mean|W| in float64 over the whole tensor, floored, then rounded to float32 (bitnet.cpp's
    storage width).  The float64 sum is finite exactly when every element is, so the NaN/Inf
    check comes free with it.

    Each chunk is cast to float64 while taking |W| (float16/float32 convert exactly) and added
    up as 256 column sums by one dgemv.  All terms are >= 0, so whatever order the BLAS adds in,
    the total is within 300 * 2**-53 (3.3e-14) of exact, relative (up to 2**32 values: 255
    additions in a column, under 40 levels of pairwise summation above): the float32 scale is the
    correctly rounded mean unless that mean lies within 3.3e-14 of a float32 rounding boundary
    (a float32 step is 6e-8 relative), where it can come out one float32 step off.
    """
    n = flat.size
    width = min(_CHUNK, n)
    rows = width // _SUM_WIDTH
    buf = np.empty(width)
    ones = np.ones(rows)
    columns = np.zeros((-(-n // _CHUNK), _SUM_WIDTH))
    rest = 0.0  # chunks that are not whole rows: only ever the last one, or a small tensor
    for k, (i, j) in enumerate(_chunks(n)):
        b = buf[: j - i]
        np.abs(flat[i:j], out=b)
        if j - i == rows * _SUM_WIDTH and rows:
            np.matmul(ones, b.reshape(rows, _SUM_WIDTH), out=columns[k])
        else:
            rest += float(b.sum())
    total = float(columns.sum()) + rest
    if not math.isfinite(total):
        finite_or_raise(whole, name)
    mean = total / n
    if not mean <= _F32_MAX:
        raise QuantInputError(
            f"{name}: mean |value| is {mean:.3g}, beyond the float32 scale bitnet.cpp stores; "
            "accepted: mean |w| <= 3.4e38"
        )
    return float(np.float32(max(mean, WEIGHT_SCALE_FLOOR)))


def _ternary_half(scale: float, dtype: np.dtype[Any]) -> np.floating[Any]:
    """s/2 as a scalar of the comparison dtype (exact: s is a float32)."""
    return np.result_type(dtype, np.float32).type(scale) / 2  # type: ignore[no-any-return]


def _ternarize(
    chunk: npt.NDArray[np.floating[Any]],
    half: np.floating[Any],
    out: npt.NDArray[np.int8],
    pos: npt.NDArray[np.bool_],
    neg: npt.NDArray[np.bool_],
) -> None:
    """clip(rint(W/s), -1, 1) evaluated exactly: |W/s| = 0.5 rounds to 0, anything above to ±1."""
    np.greater(chunk, half, out=pos)
    np.less(chunk, -half, out=neg)
    np.subtract(pos.view(np.int8), neg.view(np.int8), out=out)


def quantize_weights(w: object) -> tuple[npt.NDArray[np.int8], float]:
    """Absmean ternary quantization: ``s = max(mean|W|, 1e-5)``, ``t = clip(rint(W/s), -1, 1)``.

    The mean is taken in float64 over the whole tensor and then rounded to float32, the width
    bitnet.cpp stores; the codes are computed against that stored float32 scale, so ``s * t`` is
    exactly what a kernel reconstructs.  Rounding is half-to-even, as ``np.rint``.

    >>> codes, s = quantize_weights(np.array([[0.2, -1.0, 0.05, 2.0]], dtype=np.float32))
    >>> codes.tolist(), round(s, 4)
    ([[0, -1, 0, 1]], 0.8125)
    """
    a = float_input(w, "w", (1, 2), "weights (M, K)", check_finite=False)
    flat = a.reshape(-1)
    scale = _absmean_scale(flat, a, "w")
    half = _ternary_half(scale, a.dtype)
    codes = np.empty(a.size, np.int8)
    size = min(_TERNARY_CHUNK, a.size)
    pos, neg = np.empty(size, np.bool_), np.empty(size, np.bool_)
    for i, j in _chunks(a.size, _TERNARY_CHUNK):
        _ternarize(flat[i:j], half, codes[i:j], pos[: j - i], neg[: j - i])
    return codes.reshape(a.shape), scale


def _f32_rows(a: npt.NDArray[np.floating[Any]], name: str) -> npt.NDArray[np.float32]:
    """Activations as (rows, K) float32: bitnet.cpp quantizes them from float32."""
    if a.dtype == np.float64:
        peak = float(np.max(np.abs(a)))
        if peak > _F32_MAX:
            raise QuantInputError(
                f"{name} has |values| up to {peak:.3g}, beyond float32; accepted: |x| <= 3.4e38 "
                "(activations are quantized from float32, as in bitnet.cpp)"
            )
    return np.asarray(a, dtype=np.float32).reshape(-1, a.shape[-1])


def _quantize_rows(
    x32: npt.NDArray[np.float32], *, floor: bool
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    """Per-row absmax int8; returns (q, scales, rows the kernel cannot scale).

    ``floor=True`` is I2_S's ``max(1e-5, max|x|)``.  ``floor=False`` is the TL1/TL2 ``lut_scale``,
    which divides by ``max|x|`` unguarded: all-zero rows (and rows so small that ``127/max|x|``
    overflows float32) are reported and quantized to zeros instead of dividing by zero.
    """
    amax = np.max(np.abs(x32), axis=1).astype(np.float64)
    if floor:
        bad = np.flatnonzero(amax == 0)
        scales64 = 127.0 / np.maximum(amax, ACT_AMAX_FLOOR)
    else:
        scales64 = np.ones_like(amax)
        ok = amax > 0
        np.divide(127.0, amax, out=scales64, where=ok)
        ok &= scales64 <= _F32_MAX
        scales64[~ok] = 1.0
        bad = np.flatnonzero(~ok)
    scales = scales64.astype(np.float32)
    y = x32 * scales[:, None]
    np.rint(y, out=y)
    np.clip(y, -128, 127, out=y)
    q = y.astype(np.int8)
    q[bad] = 0
    return q, scales, bad


def quantize_activations(x: object) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Per-token int8 absmax: ``s_x = 127 / max(1e-5, max|x|)``, ``q = clip(rint(x*s_x))``.

    Mirrors ``quantize_row_i8_s``: the row maximum in float64, ``s_x`` rounded to float32, the
    product in float32.  A 1-D *x* is one token.  Returns ``(q, scales)`` with ``q`` shaped like
    *x* and ``scales`` of shape ``(rows,)``; dequantize with ``q / scales[:, None]``.

    >>> q, s = quantize_activations(np.array([0.5, -1.0, 0.25], dtype=np.float32))
    >>> q.tolist(), s.tolist()
    ([64, -127, 32], [127.0])
    """
    a = float_input(x, "x", (1, 2), "activations (tokens, K)")
    q, scales, _ = _quantize_rows(_f32_rows(a, "x"), floor=True)
    return q.reshape(a.shape), scales


def code_fractions(codes: object) -> tuple[float, float, float]:
    """Fractions of -1, 0 and +1 codes; for Gaussian weights about 0.345 / 0.310 / 0.345."""
    c = codes_input(codes, "codes", (1, 2))
    n = c.size
    neg = int(np.count_nonzero(c < 0))
    pos = int(np.count_nonzero(c > 0))
    return neg / n, (n - neg - pos) / n, pos / n


# I2_S layout, read from src/ggml-bitnet-mad.cpp, quantize_i2_s(): codes -1/0/+1 are stored as
# 0/1/2 in two bits; the tensor is flattened row-major into blocks of QK_I2_S values; value j of a
# block goes to byte (j % (QK_I2_S/4)) of that block at shift 6 - 2*(j // (QK_I2_S/4)).  On x86
# that is the ACT_PARALLEL branch (ACT_PARALLEL is defined in include/gemm-config.h; the other x86
# branch is a different 4-row interleave we do not emulate), on ARM the __ARM_NEON branch.  After
# n/4 code bytes comes the float32 scale, and the returned size adds 32 bytes for alignment.


def _bytes_input(data: object) -> npt.NDArray[np.uint8]:
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        return data.reshape(-1)
    raise QuantInputError(
        f"data: got {type(data).__name__}; accepted: bytes, bytearray, memoryview or uint8 array"
    )


def _i2s_block(layout: Layout, n: int) -> int:
    block = I2S_BLOCK[layout]
    if n % block:
        raise QuantInputError(
            f"I2_S ({layout}) packs blocks of {block} values but the tensor has {n} values "
            f"({n % block} left over); accepted: a size divisible by {block}"
        )
    return block


def pack_i2s(codes: object, scale: object, layout: Layout = "x86") -> bytes:
    """Serialise ternary codes and their scale exactly as bitnet.cpp's I2_S tensor data.

    >>> data = pack_i2s(np.ones((1, 128), np.int8), 0.5)
    >>> len(data), data[:2].hex(), data[32:36].hex()
    (64, 'aaaa', '0000003f')
    """
    c = codes_input(codes, "codes", (1, 2))
    s = check_scale(scale)
    lay = check_layout(layout)
    block = _i2s_block(lay, c.size)
    v = (c.reshape(-1, 4, block // 4) + 1).astype(np.uint8)
    packed = (v[:, 0] << 6) | (v[:, 1] << 4) | (v[:, 2] << 2) | v[:, 3]
    tail = np.zeros(I2S_TAIL_BYTES, np.uint8)
    tail[:4] = np.frombuffer(np.array([s], dtype="<f4").tobytes(), dtype=np.uint8)
    return packed.tobytes() + tail.tobytes()


def unpack_i2s(
    data: object, shape: object, layout: Layout = "x86"
) -> tuple[npt.NDArray[np.int8], float]:
    """Inverse of :func:`pack_i2s`; returns ``(codes, scale)``.

    Truncated or padded data, the 2-bit value 3 (no code maps there) and a non-finite or
    non-positive scale all raise :class:`QuantInputError`.
    """
    dims = shape_input(shape)
    lay = check_layout(layout)
    n = math.prod(dims)
    group = _i2s_block(lay, n) // 4
    buf = _bytes_input(data)
    expected = n // 4 + I2S_TAIL_BYTES
    if buf.size != expected:
        raise QuantInputError(
            f"I2_S data for shape {dims}: expected {expected} bytes ({n // 4} code bytes + "
            f"{I2S_TAIL_BYTES}-byte scale tail), got {buf.size} (truncated or corrupt)"
        )
    b = buf[: n // 4].reshape(-1, 1, group)
    shifts = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)
    v = (b >> shifts) & 3
    if np.any(v == 3):
        blk, grp, pos = (int(i) for i in np.unravel_index(int(np.argmax(v == 3)), v.shape))
        raise QuantInputError(
            f"corrupt I2_S data: byte {blk * group + pos} holds the unused 2-bit value 3 at "
            f"shift {6 - 2 * grp}; accepted: 2-bit codes 0/1/2 for -1/0/+1"
        )
    scale = float(np.frombuffer(buf[n // 4 : n // 4 + 4].tobytes(), dtype="<f4")[0])
    if not (math.isfinite(scale) and scale > 0):
        raise QuantInputError(
            f"corrupt I2_S tail: scale is {scale!r}; accepted: a finite float32 > 0"
        )
    codes = (v.astype(np.int8) - 1).reshape(dims)
    return codes, scale
