"""A converted tensor against its master weights: matching names, the codes a faithful conversion
would hold, and how far the converted weights are from the master (the drift).

The drift sums run over 64K-value chunks in float64 (r = master, a = the converted weights,
scale * codes, per block where the format has block scales), so no float copy of the converted
tensor is ever made: memory stays at the master tensor plus two int8 code arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_obs.quant import Accuracy, io, quantize_weights

__all__ = ["drift", "match_names", "mismatch", "scale_rel_diff"]

_CHUNK = 1 << 16  # a multiple of every block size (256)
_GGUF_ONLY = ("token_embd.weight", "output_norm.weight", "output.weight")


def _gguf_named(names: Iterable[str]) -> bool:
    return any(n.startswith("blk.") or n in _GGUF_ONLY for n in names)


def match_names(file_names: Sequence[str], master_names: Sequence[str]) -> dict[str, str]:
    """file tensor name -> master tensor name.  When one side uses GGUF names and the other
    Hugging Face names, the ``gguf`` package's BitNet tensor-name map translates; otherwise
    names must be equal."""
    file_gguf, master_gguf = _gguf_named(file_names), _gguf_named(master_names)
    masters = set(master_names)
    if file_gguf and not master_gguf:
        inverse = {g: h for h, g in io.gguf_names_for(master_names).items()}
        return {f: inverse[f] for f in file_names if f in inverse}
    if master_gguf and not file_gguf:
        forward = io.gguf_names_for(file_names)
        return {f: forward[f] for f in file_names if forward.get(f) in masters}
    return {f: f for f in file_names if f in masters}


def faithful(master: npt.NDArray[Any], fmt: str = "i2_s") -> tuple[npt.NDArray[np.int8], float]:
    """What a faithful conversion to *fmt* stores for this master tensor: bitnet.cpp's absmean
    codes and scale (:func:`bitnet_obs.quant.quantize_weights`; an all-zero tensor's scale is
    1e-5 in I2_S, 0.0 in TL1/TL2, as the converter writes them)."""
    return quantize_weights(master, fmt if fmt in ("tl1", "tl2") else "i2_s")


def mismatch(codes: npt.NDArray[np.int8], expected: npt.NDArray[np.int8]) -> float:
    """Fraction of codes that differ."""
    a, b = codes.reshape(-1), expected.reshape(-1)
    differ = 0
    for i in range(0, a.size, _CHUNK * 16):
        differ += int(np.count_nonzero(a[i : i + _CHUNK * 16] != b[i : i + _CHUNK * 16]))
    return differ / max(1, a.size)


def scale_rel_diff(tensor: io.TernaryTensor, expected: float) -> float:
    """Largest relative difference between the stored scale(s) and the faithful one (blocks
    whose codes are all zero store 0 and are left out)."""
    if expected == 0:
        return 0.0 if tensor.scale == 0 else math.inf
    if tensor.block_scales is not None:
        used = tensor.block_scales[tensor.block_scales != 0].astype(np.float64)
        return float(np.max(np.abs(used - expected))) / expected if used.size else 0.0
    return abs(tensor.scale - expected) / expected


def _scales(tensor: io.TernaryTensor, i: int, j: int) -> npt.NDArray[np.float64] | float:
    if tensor.block_scales is None:
        return tensor.scale
    b = tensor.block_size
    return np.repeat(tensor.block_scales[i // b : -(-j // b)].astype(np.float64), b)[: j - i]


def drift(master: npt.NDArray[Any], tensor: io.TernaryTensor) -> Accuracy:
    """Cosine, SQNR, relative L2, MSE and max |error| of the converted weights against the
    master, in float64 (the formulas of quant-formats.md §7)."""
    r_flat = master.reshape(-1)
    t_flat = tensor.codes.reshape(-1)
    n = r_flat.size
    rr = aa = ra = dd = 0.0
    peak = 0.0
    prod = np.empty(min(n, _CHUNK))

    def total(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
        # multiply and a pairwise sum, not np.dot/np.vecdot: those call OpenBLAS, whose
        # threaded ddot measured 8 ms per 64K values (100x this) on a 2-core machine whose
        # other core was busy
        p = prod[: x.size]
        np.multiply(x, y, out=p)
        return float(p.sum())

    for i in range(0, n, _CHUNK):
        j = min(i + _CHUNK, n)
        r = r_flat[i:j].astype(np.float64)
        a = t_flat[i:j].astype(np.float64)
        a *= _scales(tensor, i, j)
        d = r - a
        rr += total(r, r)
        aa += total(a, a)
        ra += total(r, a)
        dd += total(d, d)
        peak = max(peak, float(np.max(np.abs(d))))
    cosine = ra / math.sqrt(rr * aa) if rr > 0 and aa > 0 else float(rr == aa)
    sqnr = math.inf if dd == 0 else (10 * math.log10(rr / dd) if rr > 0 else -math.inf)
    rel = math.sqrt(dd / rr) if rr > 0 else (0.0 if dd == 0 else math.inf)
    return Accuracy(
        cosine=cosine,
        sqnr_db=sqnr,
        rel_l2=rel,
        mse=dd / max(1, n),
        max_abs=peak,
        accuracy_ratio=min(1.0, max(0.0, cosine)),
        n=n,
    )
