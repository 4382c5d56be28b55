"""Fast decoders for the ternary byte layouts found in checkpoints: I2_S (x86 and ARM), TQ2_0,
TQ1_0, Hugging Face packed rows, and Q8_0 (8-bit, dequantized to float32).

The I2_S decoder is the hot one (the benchmark asks for >= 1 GB/s of file).  Value j of an I2_S
block sits in byte ``j % g`` at shift ``6 - 2*(j // g)`` (g = 32 on x86, 16 on ARM), so the four
g-byte output groups of a block each read the whole g-byte input group.  Rather than shifting
each group into a strided destination (numpy runs that as millions of 32-element inner loops), the
input groups are repeated four times with ``np.repeat`` (one memcpy per group, straight into the
output array), then one multiply by a periodic pattern of 1/4/16/64 moves pair g to the top two
bits of its byte, a shift by 6 brings it down and a subtraction maps 0/1/2 to -1/0/+1: three
contiguous uint8 passes over cache-sized chunks.  The unused 2-bit value 3 is caught as a value
above 2 after the shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._common import ReadError

__all__ = ["decode_hf_packed", "decode_i2s", "decode_q8_0", "decode_tq1_0", "decode_tq2_0"]

# Output bytes per pass: 1 MiB stays in L2 and keeps numpy's per-call overhead small
# (measured: 256 KiB..4 MiB are within 10% of each other, 64 KiB is 30% slower).
_CHUNK = 1 << 20
_U8 = npt.NDArray[np.uint8]
_I8 = npt.NDArray[np.int8]


def _patterns(group: int, shifts: tuple[int, ...]) -> _U8:
    """Multipliers moving the 2-bit field at shift s to bits 6..7: 4 ** ((6 - s) // 2)."""
    mult = np.array([1 << (6 - s) for s in shifts], np.uint8)
    return np.tile(np.repeat(mult, group), _CHUNK // (group * len(shifts)))


_PATTERNS: dict[tuple[int, tuple[int, ...]], _U8] = {}


def _spread(groups: npt.NDArray[np.uint8], shifts: tuple[int, ...], what: str) -> _I8:
    """Decode (blocks, group) bytes holding 4 two-bit fields each (at *shifts*, one output group
    per shift) into int8 codes -1/0/+1, in block order."""
    group = groups.shape[1]
    key = (group, shifts)
    pattern = _PATTERNS.get(key)
    if pattern is None:
        pattern = _PATTERNS.setdefault(key, _patterns(group, shifts))
    out = np.repeat(groups, len(shifts), axis=0).reshape(-1)
    for i in range(0, out.size, _CHUNK):
        c = out[i : i + _CHUNK]
        np.multiply(c, pattern[: c.size], out=c)
        np.right_shift(c, 6, out=c)
        if c.size and int(c.max()) > 2:
            bad = i + int(np.argmax(c > 2))
            raise ReadError(
                f"corrupt {what} data: code {bad} holds the unused 2-bit value 3; accepted: "
                "2-bit codes 0/1/2 for -1/0/+1"
            )
        np.subtract(c, 1, out=c)
    return out.view(np.int8)


_I2S_GROUP = {"x86": 32, "arm": 16}


def decode_i2s(
    data: _U8, shape: tuple[int, ...], layout: str
) -> tuple[npt.NDArray[np.int8], float]:
    """I2_S tensor bytes (n/4 code bytes, then a 32-byte tail whose first 4 bytes hold the
    float32 scale) to (codes shaped *shape*, scale).  The file does not record the layout: an
    ARM-built file read as x86 gives scrambled codes, hence the explicit argument."""
    n = int(np.prod(shape))
    group = _I2S_GROUP[layout]
    block = 4 * group
    if n % block:
        raise ReadError(
            f"I2_S ({layout}) packs blocks of {block} values but the tensor has {n} values; "
            f"accepted: a size divisible by {block} (is the layout right? --layout x86|arm)"
        )
    if data.size != n // 4 + 32:
        raise ReadError(
            f"I2_S data for shape {shape}: expected {n // 4 + 32} bytes, got {data.size}"
        )
    codes = _spread(data[: n // 4].reshape(-1, group), (6, 4, 2, 0), "I2_S")
    scale = float(data[n // 4 : n // 4 + 4].view("<f4")[0])
    return codes.reshape(shape), scale


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


def decode_tq2_0(
    data: _U8, shape: tuple[int, ...]
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """TQ2_0 (llama.cpp): per 256 values, 64 bytes of 2-bit fields then a float16 scale.  Value
    ``128*h + 32*g + p`` sits in byte ``32*h + p`` at shift ``2*g``, stored as t + 1."""
    n = int(np.prod(shape))
    rows = _block_rows(data, n, 256, 66, "TQ2_0")
    groups = rows[:, :64].reshape(-1, 32)
    codes = _spread(np.ascontiguousarray(groups), (0, 2, 4, 6), "TQ2_0")
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
    q *= _f16_scales(rows, 0)[:, None]
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
