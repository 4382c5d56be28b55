"""Numpy emulation of the bitnet.cpp ternary matmul kernels, integer-exact.

``matmul`` answers "what does the format's kernel output for these activations", so it can be
compared with float ``x @ W.T`` (quantization error) or with another format (kernel fidelity).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ._formats import _f32_rows, _quantize_rows
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

__all__ = ["MatmulReport", "integer_dot", "kernel_dot", "matmul", "matmul_report"]

# Weight elements converted per block of the chunked BLAS/int products (bounds the temporaries).
_BLOCK_ELEMS = 1 << 20


class MatmulReport(NamedTuple):
    """Kernel output plus the tokens the kernel could not scale.

    ``zero_rows`` lists activation rows whose ``max|x|`` is 0, in every format (for TL1/TL2 also
    rows so small that ``127/max|x|`` overflows float32).  I2_S's 1e-5 floor keeps such rows
    finite, but bitnet.cpp's TL kernels divide by zero there; we output 0 and report the rows so a
    caller can count them.  It unpacks as ``y, zero_rows``.
    """

    y: npt.NDArray[np.float32]
    zero_rows: npt.NDArray[np.intp]


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


def _sums(
    q: npt.NDArray[np.int8], c: npt.NDArray[np.int8], fmt: Format, bk: int
) -> npt.NDArray[np.int64]:
    if fmt == "i2_s":
        return _i2s_sums(q, c)
    if fmt == "tl1":
        return tl1_sums(q, encode_tl1(c), (c.shape[0], c.shape[1]))
    return tl2_sums(q, encode_tl2(c, bk))


def kernel_dot(
    q: object, codes: object, format: str = "i2_s", *, bk: int = TL2_DEFAULT_BK
) -> npt.NDArray[np.int64]:
    """The integer accumulators a format's kernel produces: I2_S's offset trick, or the
    TL1/TL2 table lookups on the encoded codes.  Equals :func:`integer_dot` bit for bit.

    >>> q = np.array([[3, -2, 5, 1]], np.int8); t = np.array([[1, -1, 0, 1]], np.int8)
    >>> [int(kernel_dot(q, t, f)[0, 0]) for f in ("i2_s", "tl1", "tl2")]
    [6, 6, 6]
    """
    fmt = check_format(format)
    qa = int8_input(q, "q")
    c = codes_input(codes, "codes")
    q2 = _rows(qa, c, "q")
    check_tiling(fmt, c.shape[1], bk)
    out = _sums(q2, c, fmt, bk)
    return out if qa.ndim == 2 else out[0]


def matmul_report(
    x: object,
    codes: object,
    scale: object,
    format: str = "i2_s",
    *,
    bk: int = TL2_DEFAULT_BK,
) -> MatmulReport:
    """:func:`matmul` that also returns the all-zero activation rows (see :class:`MatmulReport`).

    >>> y, zero_rows = matmul_report(np.zeros((2, 4), np.float32), np.ones((3, 4), np.int8), 0.5,
    ...                              "tl1")
    >>> y.tolist(), zero_rows.tolist()
    ([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [0, 1])
    """
    fmt = check_format(format)
    xa = float_input(x, "x", (1, 2), "activations (tokens, K)")
    c = codes_input(codes, "codes")
    s = check_scale(scale)
    x2 = _f32_rows(_rows(xa, c, "x"), "x")
    check_tiling(fmt, c.shape[1], bk)
    # I2_S floors max|x| at 1e-5; the TL kernels' lut_scale does not (zero rows are reported).
    q, act_scales, zero_rows = _quantize_rows(x2, floor=fmt == "i2_s")
    acc = _sums(q, c, fmt, bk)
    y = acc.astype(np.float32) / act_scales[:, None] * s
    y[zero_rows] = 0
    return MatmulReport(y if xa.ndim == 2 else y[0], zero_rows)


def matmul(
    x: object,
    codes: object,
    scale: object,
    format: str = "i2_s",
    *,
    bk: int = TL2_DEFAULT_BK,
) -> npt.NDArray[np.float32]:
    """Emulate a format's kernel: int8 per-token activations times ternary codes, then
    ``sum / act_scale * scale`` in float32, as bitnet.cpp does.

    *x* is (rows, K) or (K,) float, *codes* (M, K); returns float32 (rows, M) or (M,).  An
    all-zero token gives a zero row; use :func:`matmul_report` to learn which rows those were.

    >>> codes = np.array([[1, -1], [0, 1]], np.int8)
    >>> matmul(np.array([1.0, -1.0], np.float32), codes, 1.125).tolist()
    [2.25, -1.125]
    """
    return matmul_report(x, codes, scale, format, bk=bk).y
