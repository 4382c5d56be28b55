"""Fast decoding of 2-bit ternary fields laid out in groups: I2_S (x86 and ARM) and llama.cpp's
TQ2_0 share it.

Value j of a block sits in byte ``j % g`` of a g-byte group at one of four shifts (one output
group of g values per shift), so the four output groups of a block each read the whole input
group.  Shifting each group into a strided destination makes numpy run millions of g-element
inner loops; instead the input groups are repeated once per shift with ``np.repeat`` (a memcpy
per group, straight into the output array), then one multiply by a periodic pattern of
``2 ** (6 - shift)`` moves each field to the top two bits of its byte, a shift by 6 brings it
down, and a subtraction maps 0/1/2 to -1/0/+1: three contiguous uint8 passes over cache-sized
chunks (about 1.3 GB/s of I2_S bytes on one core here, against 0.3 for shift-and-mask per group).
The unused value 3 is caught as a value above 2 after the shift.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._validate import QuantInputError

__all__ = ["spread_2bit"]

# Output bytes per pass: 1 MiB stays in L2 and keeps numpy's per-call overhead small
# (measured: 256 KiB..4 MiB within 10% of each other, 64 KiB 30% slower).
_CHUNK = 1 << 20
_PATTERNS: dict[tuple[int, tuple[int, ...]], npt.NDArray[np.uint8]] = {}


def _pattern(group: int, shifts: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    key = (group, shifts)
    found = _PATTERNS.get(key)
    if found is None:
        mult = np.array([1 << (6 - s) for s in shifts], np.uint8)
        found = np.tile(np.repeat(mult, group), _CHUNK // (group * len(shifts)))
        _PATTERNS[key] = found
    return found


def spread_2bit(
    groups: npt.NDArray[np.uint8], shifts: tuple[int, ...], what: str
) -> npt.NDArray[np.int8]:
    """Decode (blocks, g) bytes, each holding one 2-bit field (t + 1) per shift, into the int8
    codes of every block in order: output group i of a block holds the fields at ``shifts[i]``.

    >>> spread_2bit(np.array([[0b10_01_00_10]], np.uint8), (6, 4, 2, 0), "I2_S").tolist()
    [1, 0, -1, 1]
    """
    g = groups.shape[1]
    pattern = _pattern(g, shifts)
    out = np.repeat(groups, len(shifts), axis=0).reshape(-1)
    for i in range(0, out.size, _CHUNK):
        c = out[i : i + _CHUNK]
        np.multiply(c, pattern[: c.size], out=c)
        np.right_shift(c, 6, out=c)
        if c.size and int(c.max()) > 2:
            block, within = divmod(i + int(np.argmax(c > 2)), g * len(shifts))
            field, pos = divmod(within, g)
            raise QuantInputError(
                f"corrupt {what} data: byte {block * g + pos} holds the unused 2-bit value 3 at "
                f"shift {shifts[field]}; accepted: 2-bit codes 0/1/2 for -1/0/+1"
            )
        np.subtract(c, 1, out=c)
    return out.view(np.int8)
