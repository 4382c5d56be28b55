"""Numpy emulation of the bitnet.cpp ternary matmul kernels.

``matmul`` answers "what does the format's kernel output for these activations", so it can be
compared with float ``x @ W.T`` (quantization error) or with another format (kernel fidelity).

Two models of the I2_S kernel, chosen with ``kernel=``:

* ``"exact"`` (the default): the integer dot product, exactly.  It is what the TL1/TL2 lookup
  kernels, ARM's dot-product kernel, and the x86 AVX2 kernel compute whenever no 16-bit lane of
  the latter overflows.
* ``"avx2"``: bitnet.cpp's x86 kernel (``ggml_vec_dot_i2_i8_s`` in ``src/ggml-bitnet-mad.cpp``)
  lane by lane.  Each 128-value block is loaded as 32 code bytes (four 2-bit fields of 32 values)
  and multiplied with ``_mm256_maddubs_epi16`` into 16 int16 lanes (lane l takes values
  ``32*f + 2*l`` and ``32*f + 2*l + 1`` of each field f), and the lanes are summed over 32 blocks
  with the wrapping ``_mm256_add_epi16`` before being widened to int32.  A lane sums 256 products
  ``(t + 1) * q`` of up to 254 each, so rows with many same-signed products wrap: codes all +1,
  K = 4096 and activations all 1 give -4160.504 instead of 4096.  The float output is then
  ``(fl32(sum) - fl32(sum q)) / act_scale * scale``, as the llama.cpp fork computes it.

:func:`kernel_overflows` finds the (token, row) pairs where the AVX2 kernel wraps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ._formats import I2S_BLOCK, _f32_rows, _quantize_rows
from ._lut import TL2_DEFAULT_BK, encode_tl1, encode_tl2, tl1_sums, tl2_sums
from ._validate import (
    Format,
    QuantInputError,
    check_format,
    check_scale,
    check_tiling,
    codes_input,
    float_input,
    int8_input,
)

__all__ = [
    "KERNELS",
    "Kernel",
    "MatmulReport",
    "integer_dot",
    "kernel_dot",
    "kernel_overflows",
    "matmul",
    "matmul_report",
]

Kernel = Literal["exact", "avx2"]
KERNELS: tuple[Kernel, ...] = ("exact", "avx2")

# Weight elements converted per block of the chunked BLAS/int products (bounds the temporaries).
_BLOCK_ELEMS = 1 << 20
# The AVX2 kernel: 16 int16 lanes, summed over groups of 32 blocks of 128 values.
_LANES = 16
_GROUP = 32 * I2S_BLOCK["x86"]
_INT16 = (-(1 << 15), (1 << 15) - 1)


@dataclass(frozen=True, eq=False)
class MatmulReport:
    """Kernel output, the tokens the kernel could not scale, and the AVX2 overflows.

    ``zero_rows`` lists activation rows whose ``max|x|`` is 0, in every format (for TL1/TL2 also
    rows so small that ``127/max|x|`` overflows float32).  I2_S's 1e-5 floor keeps such rows
    finite, but bitnet.cpp's TL kernels divide by zero there; we output 0 and report the rows so a
    caller can count them.  ``overflow_mask`` (tokens, M) marks the outputs where bitnet.cpp's
    x86 AVX2 I2_S kernel wraps a 16-bit lane (all False for TL1/TL2, and for K that the x86
    kernel cannot run); ``overflows`` counts them.  With ``kernel="exact"`` those outputs hold the
    exact value, with ``kernel="avx2"`` the wrapped one.  It unpacks as ``y, zero_rows``.
    """

    y: npt.NDArray[np.float32]
    zero_rows: npt.NDArray[np.intp]
    overflow_mask: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros((0, 0), np.bool_))

    @property
    def overflows(self) -> int:
        return int(np.count_nonzero(self.overflow_mask))

    def __iter__(self) -> Any:
        return iter((self.y, self.zero_rows))


def _check_kernel(kernel: object, fmt: Format, k: int) -> Kernel:
    if kernel not in KERNELS:
        raise QuantInputError(f"kernel={kernel!r}; accepted: {', '.join(KERNELS)}")
    if kernel == "avx2":
        if fmt != "i2_s":
            raise QuantInputError(
                f"kernel='avx2' models bitnet.cpp's x86 I2_S kernel, not {fmt}; accepted: "
                "format='i2_s' with kernel='avx2', or kernel='exact'"
            )
        _x86_k(k)
    return kernel


def _x86_k(k: int) -> None:
    block = I2S_BLOCK["x86"]
    if k % block:
        raise QuantInputError(
            f"the x86 I2_S kernel reads K/{block} blocks per row, but K={k} leaves {k % block} "
            f"over; accepted: K divisible by {block}"
        )


def _rows(a: npt.NDArray[Any], c: npt.NDArray[np.int8], name: str) -> npt.NDArray[Any]:
    """View *a* as (rows, K) after checking its K against the codes."""
    k = c.shape[1]
    if a.shape[-1] != k:
        raise QuantInputError(
            f"{name} has K={a.shape[-1]} (shape {tuple(a.shape)}) but codes have shape "
            f"{tuple(c.shape)}; accepted: {name} of shape (rows, {k}) or ({k},)"
        )
    return a.reshape(-1, k)


def _m_step(k: int) -> int:
    return max(1, _BLOCK_ELEMS // k)


def integer_dot(q: object, codes: object) -> npt.NDArray[np.int64]:
    """Reference ``sum_k t[m, k] * q[r, k]`` in int64, the number every format's kernel must hit.

    *q* is (rows, K) or (K,) int8, *codes* (M, K) ternary; returns (rows, M) or (M,).
    """
    qa = int8_input(q, "q")
    c = codes_input(codes, "codes")
    q64 = _rows(qa, c, "q").astype(np.int64)
    out = np.empty((q64.shape[0], c.shape[0]), np.int64)
    step = _m_step(c.shape[1])
    for i in range(0, c.shape[0], step):
        out[:, i : i + step] = q64 @ c[i : i + step].astype(np.int64).T
    return out if qa.ndim == 2 else out[0]


def _i2s_sums(q: npt.NDArray[np.int8], c: npt.NDArray[np.int8]) -> npt.NDArray[np.int64]:
    """I2_S computes ``sum((t+1)*q) - sum(q)`` (codes stored as 0/1/2, unsigned x signed).

    Summed with float64 BLAS: every term and partial sum is an integer below 2**53, so the
    result is exact.
    """
    q64 = q.astype(np.float64)
    out = np.empty((q.shape[0], c.shape[0]), np.int64)
    step = _m_step(c.shape[1])
    for i in range(0, c.shape[0], step):
        out[:, i : i + step] = np.rint(q64 @ (c[i : i + step] + 1).astype(np.float64).T)
    out -= q.sum(axis=1, dtype=np.int64)[:, None]
    return out


def _lane_major(a: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """(N, K) -> (lanes, N, 256) float32: the 256 values one AVX2 int16 lane sums, per group of
    32 blocks (a short last group is padded with zeros, which add nothing)."""
    n, k = a.shape
    groups = -(-k // _GROUP)
    padded = np.zeros((n, groups * _GROUP), np.float32)
    padded[:, :k] = a
    v = padded.reshape(n, groups, 32, 4, _LANES, 2)  # (.., block, field, lane, pair)
    out: npt.NDArray[np.float32] = v.transpose(1, 4, 0, 2, 3, 5).reshape(groups * _LANES, n, 256)
    return out


def _may_overflow(q: npt.NDArray[np.int8]) -> bool:
    """False when no lane can leave int16 for any codes: a lane is at most 2 * its positive
    activations and at least 2 * its negative ones (codes are stored as 0, 1, 2)."""
    lanes = _lane_major(q)
    top = 2 * np.maximum(lanes, 0).sum(axis=-1).max()
    bottom = 2 * np.minimum(lanes, 0).sum(axis=-1).min()
    return bool(top > _INT16[1] or bottom < _INT16[0])


def _avx2_sums(
    q: npt.NDArray[np.int8], c: npt.NDArray[np.int8]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """The AVX2 kernel's ``sumi`` (sum of (t + 1) * q with every lane wrapped to int16, then
    the total to int32) and the mask of (token, row) pairs where a lane wrapped.

    Lane sums are float32 BLAS products: every term and partial sum is an integer of magnitude
    at most 256 * 254 < 2**24, so they are exact whatever order the BLAS adds in.
    """
    rows, k = q.shape
    ql = _lane_major(q)
    out = np.empty((rows, c.shape[0]), np.int64)
    mask = np.zeros((rows, c.shape[0]), np.bool_)
    step = _m_step(k)
    for i in range(0, c.shape[0], step):
        cl = _lane_major(c[i : i + step] + 1)  # codes stored as 0/1/2
        lanes = np.matmul(ql, cl.transpose(0, 2, 1)).astype(np.int64)  # (lanes, rows, m)
        mask[:, i : i + step] = ((lanes < _INT16[0]) | (lanes > _INT16[1])).any(axis=0)
        wrapped = (lanes + (1 << 15)) % (1 << 16) - (1 << 15)  # _mm256_add_epi16 wraps
        out[:, i : i + step] = wrapped.sum(axis=0)
    return (out + (1 << 31)) % (1 << 32) - (1 << 31), mask  # int32 accumulators


def kernel_overflows(q: object, codes: object) -> npt.NDArray[np.bool_]:
    """Where bitnet.cpp's x86 AVX2 I2_S kernel wraps: True at (token, row) when one of its
    16-bit lanes leaves [-32768, 32767], so that its output differs from the exact dot product.

    *q* is (tokens, K) or (K,) int8 from :func:`quantize_activations`, *codes* (M, K) ternary
    with K a multiple of 128.  Returns (tokens, M) or (M,); ``np.argwhere`` gives the pairs.
    Random Gaussian weights and activations do not wrap; constant rows and large same-signed
    activations (ReLU²-like) can.

    >>> q = np.full((1, 4096), 127, np.int8)  # quantize_activations of a constant token
    >>> kernel_overflows(q, np.ones((2, 4096), np.int8)).tolist()
    [[True, True]]
    """
    qa = int8_input(q, "q")
    c = codes_input(codes, "codes")
    q2 = _rows(qa, c, "q")
    _x86_k(c.shape[1])
    mask = _overflow_mask(q2, c)
    return mask if qa.ndim == 2 else mask[0]


def _overflow_mask(q: npt.NDArray[np.int8], c: npt.NDArray[np.int8]) -> npt.NDArray[np.bool_]:
    if not _may_overflow(q):
        return np.zeros((q.shape[0], c.shape[0]), np.bool_)
    return _avx2_sums(q, c)[1]


def _sums(
    q: npt.NDArray[np.int8], c: npt.NDArray[np.int8], fmt: Format, bk: int
) -> npt.NDArray[np.int64]:
    if fmt == "i2_s":
        return _i2s_sums(q, c)
    if fmt == "tl1":
        return tl1_sums(q, encode_tl1(c), (c.shape[0], c.shape[1]))
    return tl2_sums(q, encode_tl2(c, bk))


def kernel_dot(
    q: object,
    codes: object,
    format: str = "i2_s",
    *,
    bk: int = TL2_DEFAULT_BK,
    kernel: Kernel = "exact",
) -> npt.NDArray[np.int64]:
    """The integer accumulators a format's kernel produces: I2_S's offset trick
    ``sum((t + 1) * q) - sum(q)``, or the TL1/TL2 table lookups on the encoded codes.

    ``kernel="exact"`` (default) equals :func:`integer_dot` bit for bit.  ``kernel="avx2"``
    (I2_S, K a multiple of 128) reproduces bitnet.cpp's x86 kernel, whose 16-bit lanes wrap:
    it differs from :func:`integer_dot` exactly where :func:`kernel_overflows` is True.

    >>> q = np.array([[3, -2, 5, 1]], np.int8); t = np.array([[1, -1, 0, 1]], np.int8)
    >>> [int(kernel_dot(q, t, f)[0, 0]) for f in ("i2_s", "tl1", "tl2")]
    [6, 6, 6]
    >>> q = np.full((1, 4096), 127, np.int8)
    >>> int(kernel_dot(q, np.ones((1, 4096), np.int8), kernel="avx2")[0, 0])  # not 520192
    -528384
    """
    fmt = check_format(format)
    qa = int8_input(q, "q")
    c = codes_input(codes, "codes")
    q2 = _rows(qa, c, "q")
    check_tiling(fmt, c.shape[1], bk)
    out: npt.NDArray[np.int64]
    if _check_kernel(kernel, fmt, c.shape[1]) == "avx2":
        sumi, _ = _avx2_sums(q2, c)
        out = sumi - q2.sum(axis=1, dtype=np.int64)[:, None]
    else:
        out = _sums(q2, c, fmt, bk)
    return out if qa.ndim == 2 else out[0]


def matmul_report(
    x: object,
    codes: object,
    scale: object,
    format: str = "i2_s",
    *,
    bk: int = TL2_DEFAULT_BK,
    kernel: Kernel = "exact",
) -> MatmulReport:
    """:func:`matmul` that also returns the all-zero activation rows and, for I2_S with K a
    multiple of 128, where bitnet.cpp's x86 AVX2 kernel overflows (see :class:`MatmulReport`).

    >>> y, zero_rows = matmul_report(np.zeros((2, 4), np.float32), np.ones((3, 4), np.int8), 0.5,
    ...                              "tl1")
    >>> y.tolist(), zero_rows.tolist()
    ([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [0, 1])
    >>> matmul_report(np.ones(4096, np.float32), np.ones((4, 4096), np.int8), 1.0).overflows
    4
    """
    return _matmul(x, codes, scale, format, bk, kernel, report=True)


def _matmul(
    x: object, codes: object, scale: object, format: str, bk: int, kernel: object, report: bool
) -> MatmulReport:
    fmt = check_format(format)
    xa = float_input(x, "x", (1, 2), "activations (tokens, K)")
    c = codes_input(codes, "codes")
    s = check_scale(scale, allow_zero=True)
    x2 = _f32_rows(_rows(xa, c, "x"), "x")
    check_tiling(fmt, c.shape[1], bk)
    model = _check_kernel(kernel, fmt, c.shape[1])
    # I2_S floors max|x| at 1e-5; the TL kernels' lut_scale does not (zero rows are reported).
    q, act_scales, zero_rows = _quantize_rows(x2, floor=fmt == "i2_s")
    mask = np.zeros((q.shape[0], c.shape[0]), np.bool_)
    if model == "avx2":
        sumi, mask = _avx2_sums(q, c)
        act_sums = q.sum(axis=1, dtype=np.int64).astype(np.float32)
        y = (sumi.astype(np.float32) - act_sums[:, None]) / act_scales[:, None] * s
    else:
        acc = _sums(q, c, fmt, bk)
        y = acc.astype(np.float32) / act_scales[:, None] * s
        if report and fmt == "i2_s" and c.shape[1] % I2S_BLOCK["x86"] == 0:
            mask = _overflow_mask(q, c)
    y[zero_rows] = 0
    if xa.ndim == 1:
        return MatmulReport(y[0], zero_rows, mask[0])
    return MatmulReport(y, zero_rows, mask)


def matmul(
    x: object,
    codes: object,
    scale: object,
    format: str = "i2_s",
    *,
    bk: int = TL2_DEFAULT_BK,
    kernel: Kernel = "exact",
) -> npt.NDArray[np.float32]:
    """Emulate a format's kernel: int8 per-token activations times ternary codes, then
    ``sum / act_scale * scale`` in float32, as bitnet.cpp does.

    *x* is (rows, K) or (K,) float, *codes* (M, K); returns float32 (rows, M) or (M,).  An
    all-zero token gives a zero row; use :func:`matmul_report` to learn which rows those were.
    ``kernel="exact"`` (default) sums exactly; ``kernel="avx2"`` reproduces the 16-bit wrap of
    bitnet.cpp's x86 I2_S kernel (K a multiple of 128), see :func:`kernel_overflows`.

    >>> codes = np.array([[1, -1], [0, 1]], np.int8)
    >>> matmul(np.array([1.0, -1.0], np.float32), codes, 1.125).tolist()
    [2.25, -1.125]
    >>> x, ones = np.ones((1, 4096), np.float32), np.ones((4, 4096), np.int8)
    >>> matmul(x, ones, 1.0).tolist()[0][0], matmul(x, ones, 1.0, kernel="avx2").tolist()[0][0]
    (4096.0, -4160.50390625)
    """
    return _matmul(x, codes, scale, format, bk, kernel, report=False).y
