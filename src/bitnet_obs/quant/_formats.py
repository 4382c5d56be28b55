"""Absmean ternary weights, int8 activations and the I2_S byte layout of bitnet.cpp.

All three bitnet.cpp formats (I2_S, TL1, TL2) store the same ternary codes and the same float32
per-tensor scale; they differ only in how the codes are packed and how the kernel sums them.
The quantizer here is bitnet.cpp's converter to the bit (docs/quantization.md, "Exactness").
TL1/TL2 values live in ``_lut``, their file layout in ``_tiled``, the kernels in ``_kernels``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ._chunked import chunks, map_chunks, workers_for
from ._unpack import spread_2bit
from ._validate import (
    Layout,
    QuantInputError,
    check_format,
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
_WEIGHT_SCALE_FLOOR = np.float32(WEIGHT_SCALE_FLOOR)  # torch's clamp(min=1e-5) on float32
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
# The absmean sum adds each chunk up as rows of _SUM_WIDTH values in float64.
_SUM_WIDTH = 256


def _chunks(n: int, size: int = _CHUNK) -> Iterator[tuple[int, int]]:
    return chunks(n, size)


def _absmean_sum(flat: npt.NDArray[np.floating[Any]], whole: npt.NDArray[Any], name: str) -> float:
    """sum |fl32(W)| in float64 over the whole tensor.  The float64 sum is finite exactly when
    every element is (and fits float32), so the NaN/Inf check comes free with it.

    Each chunk's |W| (float16/float32 as they are, float64 rounded to float32 first, as the
    converter does) is added up in float64 as rows of 256 values (``np.einsum`` with a float64
    accumulator: every float16/float32 converts exactly), then pairwise.  All terms are >= 0, so
    whatever order the additions take, the total is within 300 * 2**-53 (3.3e-14) of exact,
    relative (up to 2**32 values: 255 additions in a row, under 40 levels of pairwise summation
    above): the float32 mean is the correctly rounded one unless that mean lies within 3.3e-14
    of a float32 rounding boundary (a float32 step is 6e-8 relative), where it can come out one
    float32 step off.
    """
    n = flat.size
    spans = list(_chunks(n, _TERNARY_CHUNK))
    width = min(_TERNARY_CHUNK, n)
    need32 = flat.dtype == np.float64

    def buffers() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        return np.empty(width, np.float32), (np.empty(width, np.float32) if need32 else None)

    @np.errstate(over="ignore", invalid="ignore")  # an overflowing or NaN sum is reported below
    def chunk_sum(k: int, bufs: tuple[npt.NDArray[np.float32], Any]) -> float:
        i, j = spans[k]
        u = np.abs(_f32_view(flat[i:j], bufs[1]), out=bufs[0][: j - i])
        cut = (j - i) // _SUM_WIDTH * _SUM_WIDTH
        rows = np.einsum("ij->i", u[:cut].reshape(-1, _SUM_WIDTH), dtype=np.float64)
        return float(np.add.reduce(rows)) + float(u[cut:].sum(dtype=np.float64))

    with np.errstate(over="ignore", invalid="ignore"):
        total = math.fsum(map_chunks(chunk_sum, len(spans), buffers, workers_for(n)))
    if not math.isfinite(total):
        finite_or_raise(whole, name)
        raise QuantInputError(
            f"{name} has |values| beyond float32 (up to {float(np.max(np.abs(whole))):.3g}); "
            "accepted: |w| <= 3.4e38 (bitnet.cpp quantizes float32 weights)"
        )
    return total


def _f32_view(
    src: npt.NDArray[np.floating[Any]], buf: npt.NDArray[np.float32] | None
) -> npt.NDArray[np.floating[Any]]:
    """float16/float32 as they are (every comparison with a float32 is exact on them); float64
    rounded to float32 in *buf*, the converter's first step for any other dtype."""
    if src.dtype != np.float64 or buf is None:
        return src
    out = buf[: src.size].reshape(src.shape)
    with np.errstate(over="ignore"):
        np.copyto(out, src, casting="same_kind")
    return out


class Absmean(NamedTuple):
    """The numbers of bitnet.cpp's absmean quantizer for one tensor (read with
    ``_absmean``).  Codes are ``t = clip(rint(fl32(W * inverse)), -1, 1)``; equivalently
    ``t = +1`` where ``W > threshold`` and ``-1`` where ``W < -threshold``."""

    mean: np.float32  # m = max(fl32(mean |W|), fl32(1e-5))
    inverse: np.float32  # s_inv = fl32(1 / m), the factor the converter multiplies by
    threshold: np.float32  # the largest float32 b with fl32(b * s_inv) <= 0.5
    scale: np.float32  # fl32(1 / s_inv): what the file stores when any code is non-zero


def _code_threshold(inverse: np.float32) -> np.float32:
    """Largest float32 b >= 0 with fl32(b * inverse) <= 0.5: ``rint`` sends 0.5 to 0, anything
    above (up to the clip) to 1, and rounding is monotonic, so ``t != 0`` exactly where
    ``|W| > b``.  Bisection over the ordered bit patterns of the non-negative float32s."""
    lo, hi = 0, 0x7F800000  # 0.0 maps to 0; +inf (times a positive inverse) to inf > 0.5
    half = np.float32(0.5)
    with np.errstate(over="ignore"):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if np.uint32(mid).view(np.float32) * inverse > half:
                hi = mid
            else:
                lo = mid
    return np.uint32(lo).view(np.float32)  # type: ignore[no-any-return]


def _absmean(flat: npt.NDArray[np.floating[Any]], whole: npt.NDArray[Any], name: str) -> Absmean:
    mean = _absmean_sum(flat, whole, name) / flat.size  # <= max|W|: float32's range
    m = max(np.float32(mean), _WEIGHT_SCALE_FLOOR)
    inverse = np.float32(1) / m
    return Absmean(m, inverse, _code_threshold(inverse), np.float32(1) / inverse)


def stored_scale(
    absmean: Absmean, any_code: bool, dtype: np.dtype[Any], fmt: str = "i2_s"
) -> float:
    """The scale bitnet.cpp's converter writes: fl32(1/s_inv), rounded to float16 for float16
    weights (the converter dequantizes in the checkpoint's dtype).  When every code is 0, I2_S
    stores 1e-5 (``quantize_to_i2_s`` finds no non-zero weight to read it from) and TL1/TL2
    store 0.0 (``transform_to_tl1/tl2`` store ``max|W_q|``, which is 0)."""
    if not any_code:
        return 0.0 if fmt in ("tl1", "tl2") else float(_WEIGHT_SCALE_FLOOR)
    if dtype == np.float16:
        with np.errstate(over="ignore"):
            return float(np.float16(absmean.scale))
    return float(absmean.scale)


def _ternarize(
    chunk: npt.NDArray[np.floating[Any]],
    threshold: np.float32,
    out: npt.NDArray[np.int8],
    pos: npt.NDArray[np.bool_],
    neg: npt.NDArray[np.bool_],
) -> None:
    """t = clip(rint(fl32(W * s_inv)), -1, 1) evaluated exactly: +1 above the threshold, -1
    below its negative (float16 chunks compare exactly against the float32 threshold)."""
    np.greater(chunk, threshold, out=pos)
    np.less(chunk, -threshold, out=neg)
    np.subtract(pos.view(np.int8), neg.view(np.int8), out=out)


def quantize_weights(w: object, format: str = "i2_s") -> tuple[npt.NDArray[np.int8], float]:
    """Absmean ternary quantization exactly as bitnet.cpp's converter does it.

    ``m = max(fl32(mean|W|), 1e-5)`` (the mean taken in float64 over the whole tensor),
    ``s_inv = fl32(1/m)``, codes ``t = clip(rint(fl32(W * s_inv)), -1, 1)`` (a float32
    product with the reciprocal, rounded half to even: not ``W / m``, which differs for
    elements one float32 step above ``m/2``).  Returns ``(codes, scale)`` where *scale* is the
    value the converter stores in the I2_S tail (and in TL1/TL2's ``_scale`` tensor):
    ``fl32(1/s_inv)``, rounded to float16 for float16 weights.  When every code is 0 the scale
    depends on *format* as the converter's does: 1e-5 for ``"i2_s"`` (the default), 0.0 for
    ``"tl1"`` and ``"tl2"`` (their ``<name>_scale`` tensor).  So ``codes * scale`` is exactly
    what bitnet.cpp's kernels reconstruct.  float64 weights are
    rounded to float32 first and bf16 ones converted to float32 (both exact for bf16).

    >>> codes, s = quantize_weights(np.array([[0.2, -1.0, 0.05, 2.0]], dtype=np.float32))
    >>> codes.tolist(), s  # m = 0.8125; 1/fl32(1/m) is one float32 step below it
    ([[0, -1, 0, 1]], 0.8124999403953552)
    """
    fmt = check_format(format)
    a = float_input(w, "w", (1, 2), "weights (M, K)", check_finite=False)
    flat = a.reshape(-1)
    am = _absmean(flat, a, "w")
    codes = np.empty(a.size, np.int8)
    size = min(_TERNARY_CHUNK, a.size)
    spans = list(_chunks(a.size, _TERNARY_CHUNK))

    def buffers() -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], Any]:
        f32 = np.empty(size, np.float32) if a.dtype == np.float64 else None
        return np.empty(size, np.bool_), np.empty(size, np.bool_), f32

    def ternarize(k: int, bufs: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], Any]) -> bool:
        i, j = spans[k]
        pos, neg, b32 = bufs
        _ternarize(_f32_view(flat[i:j], b32), am.threshold, codes[i:j], pos[: j - i], neg[: j - i])
        return bool(codes[i:j].any())

    any_code = any(map_chunks(ternarize, len(spans), buffers, workers_for(a.size)))
    return codes.reshape(a.shape), stored_scale(am, any_code, a.dtype, fmt)


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


def _i2s_block(layout: Layout, dims: tuple[int, ...]) -> int:
    """The block size, after checking that each row holds whole blocks: the x86 kernel reads
    K/128 blocks per row at offset row*K/4 (ARM: K/64), so a K that is not a multiple cannot be
    run by bitnet.cpp even when M*K is."""
    block = I2S_BLOCK[layout]
    k = dims[-1]
    if k % block:
        raise QuantInputError(
            f"I2_S ({layout}) rows must hold whole {block}-value blocks: shape {dims} has "
            f"K={k} ({k % block} left over per row; bitnet.cpp's kernel reads K/{block} blocks "
            f"per row); accepted: K divisible by {block}"
        )
    return block


def pack_i2s(codes: object, scale: object, layout: Layout = "x86") -> bytes:
    """Serialise ternary codes and their scale exactly as bitnet.cpp's I2_S tensor data.

    *codes* is (M, K) (or one row of K); K must be a multiple of 128 for the x86 layout, 64 for
    ``layout="arm"`` (the kernels read K/block blocks per row).  *scale* is the value the file
    stores, :func:`quantize_weights`' second result.

    >>> data = pack_i2s(np.ones((1, 128), np.int8), 0.5)
    >>> len(data), data[:2].hex(), data[32:36].hex()
    (64, 'aaaa', '0000003f')
    """
    c = codes_input(codes, "codes", (1, 2))
    s = check_scale(scale, allow_zero=True)
    lay = check_layout(layout)
    block = _i2s_block(lay, c.shape)
    v = (c.reshape(-1, 4, block // 4) + 1).astype(np.uint8)
    packed = (v[:, 0] << 6) | (v[:, 1] << 4) | (v[:, 2] << 2) | v[:, 3]
    tail = np.zeros(I2S_TAIL_BYTES, np.uint8)
    tail[:4] = np.frombuffer(np.array([s], dtype="<f4").tobytes(), dtype=np.uint8)
    return packed.tobytes() + tail.tobytes()


def unpack_i2s(
    data: object, shape: object, layout: Layout = "x86"
) -> tuple[npt.NDArray[np.int8], float]:
    """Inverse of :func:`pack_i2s`; returns ``(codes, scale)``.

    *data* is the tensor's bytes as bitnet.cpp sizes them (``M*K/4 + 32``: the codes, then the
    float32 scale and 28 bytes of padding).  A scale of 0.0 is accepted (llama-quantize writes it
    for an all-zero tensor; the Python converter writes 1e-5).  Truncated or padded data, a row
    length K that is not a multiple of the layout's block, the 2-bit value 3 (no code maps
    there), and a negative or non-finite scale raise :class:`QuantInputError`.

    >>> codes, s = unpack_i2s(pack_i2s(np.ones((2, 128), np.int8), 0.5), (2, 128))
    >>> codes.shape, s
    ((2, 128), 0.5)
    """
    dims = shape_input(shape)
    lay = check_layout(layout)
    n = math.prod(dims)
    group = _i2s_block(lay, dims) // 4
    buf = _bytes_input(data)
    expected = n // 4 + I2S_TAIL_BYTES
    if buf.size != expected:
        raise QuantInputError(
            f"I2_S data for shape {dims}: expected {expected} bytes ({n // 4} code bytes + "
            f"{I2S_TAIL_BYTES}-byte scale tail), got {buf.size} (truncated or corrupt)"
        )
    codes = spread_2bit(buf[: n // 4].reshape(-1, group), (6, 4, 2, 0), "I2_S").reshape(dims)
    scale = float(np.frombuffer(buf[n // 4 : n // 4 + 4].tobytes(), dtype="<f4")[0])
    if not (math.isfinite(scale) and scale >= 0):
        raise QuantInputError(
            f"corrupt I2_S tail: scale is {scale!r}; accepted: a finite float32 >= 0 (0.0 is "
            "what llama-quantize writes for an all-zero tensor)"
        )
    return codes, scale
