"""TL1 and TL2: the lookup-table encodings of bitnet.cpp and their table-driven sums.

Both encode groups of ternary weights along K as a table index.  A kernel builds one small table
per group of int8 activations and adds up ``table[index]`` instead of multiplying; the result is
the integer dot product ``sum(t * q)`` exactly.  These encoders keep the values in plain
row-major (M, groups) order, one TL2 field per byte: the numbers a kernel sums.  The bytes a
GGUF file holds (tiled for a kernel configuration, TL2 fields packed into shared bytes) are
:mod:`._tiled`'s.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._validate import QuantInputError, codes_input, shape_input, tl1_k, tl2_split

__all__ = [
    "TL2_DEFAULT_BK",
    "Tl2Packed",
    "decode_tl1",
    "decode_tl2",
    "encode_tl1",
    "encode_tl2",
    "tl1_sums",
    "tl2_sums",
]

#: K block handled by triples in TL2 (32 triples).  utils/codegen_tl2.py has no default of its
#: own; setup_env.py runs it with --BK 96 for every x86 kernel shape except one
#: (bitnet_b1_58-large 1536x1536 uses 192).
TL2_DEFAULT_BK = 96

# Pair index 3*t0 + t1 + 4 -> (t0, t1); triple magnitude |9*t0 + 3*t1 + t2| -> the (t0, t1, t2)
# with that non-negative value.  Negative triples are the negation of a magnitude's triple.
_PAIRS = np.array([(i // 3 - 1, i % 3 - 1) for i in range(9)], dtype=np.int32)
_TRIPLES = np.array(
    sorted(
        (t for t in itertools.product((-1, 0, 1), repeat=3) if 9 * t[0] + 3 * t[1] + t[2] >= 0),
        key=lambda t: 9 * t[0] + 3 * t[1] + t[2],
    ),
    dtype=np.int32,
)
assert _TRIPLES.shape == (14, 3)

# Gathered table entries per M-chunk of the vectorised sums (int32): about 16 MB.
_GATHER_BUDGET = 1 << 22


def _pack_nibbles(idx: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    rows, n = idx.shape
    # an odd pair count is padded with index 4, the all-zero pair
    padded = np.full((rows, n + n % 2), 4, np.uint8)
    padded[:, :n] = idx
    out: npt.NDArray[np.uint8] = (padded[:, 0::2] << np.uint8(4)) | padded[:, 1::2]
    return out


def _unpack_nibbles(packed: npt.NDArray[np.uint8], n_idx: int) -> npt.NDArray[np.uint8]:
    idx = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    idx[:, 0::2] = packed >> 4
    idx[:, 1::2] = packed & 0x0F
    return idx[:, :n_idx]


def _pair_indices(codes: npt.NDArray[np.int8]) -> npt.NDArray[np.uint8]:
    p = codes.reshape(codes.shape[0], -1, 2)
    out: npt.NDArray[np.uint8] = (3 * p[..., 0] + p[..., 1] + 4).astype(np.uint8)
    return out


def encode_tl1(codes: object) -> npt.NDArray[np.uint8]:
    """Pack (M, K) ternary codes as TL1 pair indices ``3*t0 + t1 + 4``, two per byte, high first.

    The result has shape ``(M, ceil(K/4))``; K must be even.  An odd number of pairs per row is
    padded with index 4 (the zero pair), which adds nothing to a sum.

    >>> encode_tl1(np.array([[1, 1, -1, 0]])).tolist()  # pairs 8 and 1 -> 0x81
    [[129]]
    """
    c = codes_input(codes, "codes")
    tl1_k(c.shape[1])
    return _pack_nibbles(_pair_indices(c))


def _checked_indices(packed: object, rows: int, k: int, name: str) -> npt.NDArray[np.uint8]:
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8:
        raise QuantInputError(f"{name}: got {type(packed).__name__}; accepted: a uint8 ndarray")
    n_idx = k // 2
    want = (rows, (n_idx + 1) // 2)
    if packed.shape != want:
        raise QuantInputError(
            f"{name} has shape {tuple(packed.shape)}; expected {want} for {rows} rows of "
            f"K={k} (two pair indices per byte)"
        )
    idx = _unpack_nibbles(packed, n_idx)
    if np.any(idx > 8):
        r, p = (int(i) for i in np.unravel_index(int(np.argmax(idx > 8)), idx.shape))
        raise QuantInputError(
            f"corrupt {name}: pair index {int(idx[r, p])} at row {r}, pair {p}; accepted: 0..8"
        )
    return idx


def decode_tl1(packed: object, shape: object) -> npt.NDArray[np.int8]:
    """Inverse of :func:`encode_tl1` for codes of *shape* ``(M, K)``."""
    dims = shape_input(shape)
    if len(dims) != 2:
        raise QuantInputError(f"shape: got {dims}; accepted: (M, K)")
    tl1_k(dims[1])
    idx = _checked_indices(packed, dims[0], dims[1], "TL1 data")
    return _PAIRS[idx].astype(np.int8).reshape(dims)


@dataclass(frozen=True, eq=False)
class Tl2Packed:
    """TL2 codes: K splits into ``three_k`` columns of triples and a ``two_k`` TL1 remainder.

    A triple ``v = 9*t0 + 3*t1 + t2`` in [-13, 13] is stored as ``magnitudes = |v|`` (4 bits) and
    ``signs = v < 0`` (1 bit), 5 bits per 3 weights; all 27 triples get distinct codes.  Arrays
    hold one field per byte for clarity; ``pairs`` is :func:`encode_tl1` output of the remainder.
    """

    magnitudes: npt.NDArray[np.uint8]
    signs: npt.NDArray[np.uint8]
    pairs: npt.NDArray[np.uint8]
    shape: tuple[int, int]
    three_k: int
    two_k: int
    bk: int = TL2_DEFAULT_BK


def encode_tl2(codes: object, bk: int = TL2_DEFAULT_BK) -> Tl2Packed:
    """Encode (M, K) ternary codes as TL2 with K split at ``three_k = (K // bk) * bk``.

    *bk* must be a positive multiple of 3 and ``K - three_k`` even.  bitnet.cpp also requires
    ``(K % bk) % 32 == 0`` and ``M % BM == 0`` for its generated kernels; those tile constraints do
    not change the numbers and are not enforced here.
    """
    c = codes_input(codes, "codes")
    m, k = c.shape
    three_k, two_k = tl2_split(k, bk)
    t = c[:, :three_k].reshape(m, -1, 3).astype(np.int16)
    v = 9 * t[..., 0] + 3 * t[..., 1] + t[..., 2]
    return Tl2Packed(
        magnitudes=np.abs(v).astype(np.uint8),
        signs=(v < 0).astype(np.uint8),
        pairs=_pack_nibbles(_pair_indices(c[:, three_k:])),
        shape=(m, k),
        three_k=three_k,
        two_k=two_k,
        bk=int(bk),
    )


def _checked_tl2(packed: object) -> tuple[Tl2Packed, npt.NDArray[np.uint8]]:
    """Validate a Tl2Packed; returns it with the unpacked remainder pair indices."""
    if not isinstance(packed, Tl2Packed):
        raise QuantInputError(
            f"packed: got {type(packed).__name__}; accepted: Tl2Packed from encode_tl2"
        )
    m, k = shape_input(packed.shape, "Tl2Packed.shape")
    if (packed.three_k, packed.two_k) != tl2_split(k, packed.bk):
        raise QuantInputError(
            f"Tl2Packed: three_k={packed.three_k}, two_k={packed.two_k} do not split K={k} at "
            f"bk={packed.bk}; accepted: values from encode_tl2"
        )
    want = (m, packed.three_k // 3)
    for name, arr, top in (("magnitudes", packed.magnitudes, 13), ("signs", packed.signs, 1)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.shape != want:
            raise QuantInputError(
                f"Tl2Packed.{name}: expected a uint8 array of shape {want}; got "
                f"{getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}"
            )
        if arr.size and int(arr.max()) > top:
            raise QuantInputError(
                f"corrupt Tl2Packed.{name}: value {int(arr.max())}; accepted: 0..{top}"
            )
    return packed, _checked_indices(packed.pairs, m, packed.two_k, "Tl2Packed.pairs")


def decode_tl2(packed: Tl2Packed) -> npt.NDArray[np.int8]:
    """Inverse of :func:`encode_tl2`."""
    p, pair_idx = _checked_tl2(packed)
    m = p.shape[0]
    sign = 1 - 2 * p.signs.astype(np.int8)
    triples = _TRIPLES[p.magnitudes].astype(np.int8) * sign[..., None]
    pairs = _PAIRS[pair_idx].astype(np.int8)
    return np.concatenate([triples.reshape(m, -1), pairs.reshape(m, -1)], axis=1)


def _gather_sum(
    tables: npt.NDArray[np.int32],
    idx: npt.NDArray[np.uint8],
    sign: npt.NDArray[np.int32] | None = None,
) -> npt.NDArray[np.int64]:
    """``sum_g table[r, g, idx[m, g]] (* sign[m, g])`` for all rows r and outputs m.

    One flat gather per M-chunk; no Python loop runs over K.
    """
    rows, groups, width = tables.shape
    m = idx.shape[0]
    out = np.zeros((rows, m), np.int64)
    if groups == 0:
        return out
    flat = tables.reshape(rows, groups * width)
    base = (np.arange(groups, dtype=np.intp) * width)[None, :]
    step = max(1, _GATHER_BUDGET // (rows * groups))
    for i in range(0, m, step):
        j = min(i + step, m)
        picked = flat[:, idx[i:j] + base]  # (rows, j - i, groups)
        if sign is not None:
            picked *= sign[i:j]
        out[:, i:j] = picked.sum(axis=-1, dtype=np.int64)
    return out


def _pair_tables(q: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    """9-entry table per activation pair (b0, b1): [-b0-b1, -b0, -b0+b1, -b1, 0, b1, ...]."""
    b = q.astype(np.int32).reshape(q.shape[0], -1, 2)
    out: npt.NDArray[np.int32] = b[..., 0:1] * _PAIRS[:, 0] + b[..., 1:2] * _PAIRS[:, 1]
    return out


def tl1_sums(
    q: npt.NDArray[np.int8], packed: npt.NDArray[np.uint8], shape: tuple[int, int]
) -> npt.NDArray[np.int64]:
    """Integer accumulators of the TL1 kernel: (rows, K) int8 times TL1 codes -> (rows, M)."""
    idx = _checked_indices(packed, shape[0], shape[1], "TL1 data")
    return _gather_sum(_pair_tables(q), idx)


def tl2_sums(q: npt.NDArray[np.int8], packed: Tl2Packed) -> npt.NDArray[np.int64]:
    """Integer accumulators of the TL2 kernel: 14-entry magnitude tables, sign applied after."""
    p, pair_idx = _checked_tl2(packed)
    three_k = p.three_k
    b = q[:, :three_k].astype(np.int32).reshape(q.shape[0], -1, 3)
    tables = b @ _TRIPLES.T  # (rows, triples, 14)
    sign = 1 - 2 * p.signs.astype(np.int32)
    acc = _gather_sum(tables, p.magnitudes, sign)
    return acc + _gather_sum(_pair_tables(q[:, three_k:]), pair_idx)
