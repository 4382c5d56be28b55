"""Decoders for the ternary and 8-bit layouts found in checkpoints besides I2_S (which is
:func:`bitnet_obs.quant.unpack_i2s`): llama.cpp's TQ2_0 and TQ1_0, Hugging Face packed rows, and
Q8_0 (dequantized to float32).  TQ2_0 shares I2_S's fast 2-bit decoder
(:mod:`bitnet_obs.quant._unpack`).  Corrupt data raises :class:`ReadError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .._unpack import spread_2bit
from .._validate import QuantInputError
from ._common import ReadError

__all__ = [
    "check_block_scales",
    "decode_hf_packed",
    "decode_q8_0",
    "decode_tq1_0",
    "decode_tq2_0",
]

_I8 = npt.NDArray[np.int8]
_U8 = npt.NDArray[np.uint8]


def _block_rows(data: _U8, n: int, block: int, nbytes: int, what: str) -> npt.NDArray[Any]:
    if n % block or data.size != n // block * nbytes:
        raise ReadError(
            f"{what} data: {n} values need {n // block * nbytes} bytes in blocks of {block}, "
            f"got {data.size}"
        )
    return data.reshape(-1, nbytes)


def _f16_scales(rows: npt.NDArray[np.uint8], start: int) -> npt.NDArray[np.float32]:
    raw = np.ascontiguousarray(rows[:, start : start + 2])
    return raw.view("<f2").reshape(-1).astype(np.float32)


def check_block_scales(scales: npt.NDArray[np.float32], what: str) -> None:
    """Block scales as a converter writes them: finite and >= 0 (llama.cpp's TQ1_0/TQ2_0 store
    max|x| of each block, 0 for an all-zero block).  A NaN or infinite scale is corruption, as
    for I2_S and Q8_0: refused, never measured."""
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(scales) & (scales >= 0))
    if bad.any():
        first = int(np.argmax(bad))
        raise ReadError(
            f"{what}: block {first} has scale {float(scales[first])!r} ({int(bad.sum())} "
            "such blocks); accepted: finite block scales >= 0"
        )


def decode_tq2_0(
    data: _U8, shape: tuple[int, ...]
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """TQ2_0 (llama.cpp): per 256 values, 64 bytes of 2-bit fields then a float16 scale.  Value
    ``128*h + 32*g + p`` sits in byte ``32*h + p`` at shift ``2*g``, stored as t + 1."""
    n = int(np.prod(shape))
    rows = _block_rows(data, n, 256, 66, "TQ2_0")
    groups = np.ascontiguousarray(rows[:, :64]).reshape(-1, 32)
    try:
        codes = spread_2bit(groups, (0, 2, 4, 6), "TQ2_0")
    except QuantInputError as exc:
        raise ReadError(str(exc)) from None
    return codes.reshape(shape), _f16_scales(rows, 64)


_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)


def _trits(q: npt.NDArray[np.uint8], digits: int) -> npt.NDArray[np.int8]:
    """Base-3 digits packed as ceil(x * 256 / 243) (TQ1_0): digit k of byte x is the top trit of
    ``x * 3**k mod 256``, read as ``(y * 3) >> 8``; returned digit-major, minus 1."""
    y = q[:, None, :] * _POW3[None, :digits, None]  # uint8 wraps: the mod 256
    return (((y.astype(np.uint16) * 3) >> 8).astype(np.int8) - 1).reshape(q.shape[0], -1)


def decode_tq1_0(
    data: _U8, shape: tuple[int, ...]
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """TQ1_0 (llama.cpp): per 256 values, 48 bytes of five trits (32 bytes for values 0..159,
    16 for 160..239, trit k of byte p is value p + k*width), 4 bytes of four trits for the last
    16 values, then a float16 scale."""
    n = int(np.prod(shape))
    rows = _block_rows(data, n, 256, 54, "TQ1_0")
    parts = (_trits(rows[:, :32], 5), _trits(rows[:, 32:48], 5), _trits(rows[:, 48:52], 4))
    codes = np.concatenate(parts, axis=1)
    return codes.reshape(shape), _f16_scales(rows, 52)


def decode_q8_0(data: _U8, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Q8_0 (llama.cpp): per 32 values, a float16 scale then 32 int8: values d * q."""
    n = int(np.prod(shape))
    rows = _block_rows(data, n, 32, 34, "Q8_0")
    q = rows[:, 2:].view(np.int8).astype(np.float32)
    scales = _f16_scales(rows, 0)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(scales)
    if bad.any():
        first = int(np.argmax(bad))
        raise ReadError(
            f"Q8_0 data: block {first} has scale {float(scales[first])!r}; accepted: finite "
            "block scales"
        )
    q *= scales[:, None]
    return q.reshape(shape)


def decode_hf_packed(packed: npt.NDArray[np.uint8], rows: int | None = None) -> _I8:
    """transformers' packed BitNet weight, uint8 (R, K): packed row r holds unpacked rows
    ``r + i*R`` in bits ``2i..2i+1``, stored as t + 1.  Returns (4R, K) int8 codes, or the
    first *rows* of them (pack_weights pads M up to a multiple of 4 with empty fields)."""
    if packed.ndim != 2:
        raise ReadError(f"HF packed weight: expected 2-D (ceil(M/4), K), got shape {packed.shape}")
    r, k = packed.shape
    out = np.empty((4, r, k), np.uint8)
    for i in range(4):
        np.right_shift(packed, 2 * i, out=out[i])
        np.bitwise_and(out[i], 3, out=out[i])
    codes = out.reshape(4 * r, k)
    m = 4 * r if rows is None else rows
    if m < 4 * r and (codes[m:] != 0).any():
        raise ReadError(f"HF packed weight: padding rows {m}..{4 * r} hold codes")
    codes = codes[:m]
    if codes.size and int(codes.max()) > 2:
        raise ReadError(
            "corrupt HF packed weight: a field holds the unused 2-bit value 3; accepted: 0/1/2 "
            "for -1/0/+1"
        )
    np.subtract(codes, 1, out=codes)
    return codes.view(np.int8)
