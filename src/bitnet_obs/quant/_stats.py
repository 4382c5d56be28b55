"""Accuracy statistics: tensor error metrics, logits agreement, and a one-call weight report.

The sums behind the metrics (Σr², Σa², Σra, Σ(r-a)²) are accumulated over fixed-size chunks, so a
4096x4096 float32 tensor costs one streaming pass per input plus work on 1 MB chunks, and about
4 MB of working memory, never a copy of the tensor.  Pairs that are float16/float32 on both
sides are summed with float32 BLAS dots over 256-value blocks whose results are totalled in
float64 (no float64 cast of the data, which cost more than the sums themselves); anything with a
float64 side, and float32 data whose squares would leave float32's range, is summed in float64.
The error bounds of both are in :func:`accuracy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._chunked import map_chunks, workers_for
from ._formats import _CHUNK, Absmean, _absmean, _chunks, _f32_view, _ternarize, stored_scale
from ._lut import TL2_DEFAULT_BK
from ._validate import (
    Format,
    QuantInputError,
    check_format,
    check_same_shape,
    check_tiling,
    finite_or_raise,
    float_input,
    tl2_split,
)

__all__ = [
    "Accuracy",
    "LogitsAgreement",
    "WeightReport",
    "accuracy",
    "logits_agreement",
    "weight_report",
]


@dataclass(frozen=True)
class Accuracy:
    """How close an approximation is to a reference (both flattened).

    ``accuracy_ratio`` is ``clip(cosine, 0, 1)``: the one number in [0, 1] we put in histograms.
    ``sqnr_db`` is ``inf`` when the tensors are equal.
    """

    cosine: float
    sqnr_db: float
    rel_l2: float
    mse: float
    max_abs: float
    accuracy_ratio: float
    n: int


# Produces reference and candidate values [i, j) with the dtype of the two buffers it is handed
# (already cut to j - i): the buffers, filled, or read-only views of the inputs when no conversion
# is needed.  A fill may be run more than once over the same range (the float64 fallback).
_Fill = Callable[
    [int, int, npt.NDArray[Any], npt.NDArray[Any]], tuple[npt.NDArray[Any], npt.NDArray[Any]]
]

# float64 path: sums outside this range lose precision to float64 under/overflow (and products
# of two of them must stay finite); float16/float32 inputs never leave it, float64 inputs that do
# are measured again after scaling both sides by the power of two that brings max|reference|
# into [0.5, 1).
_SAFE_LO, _SAFE_HI = 2.0**-500, 2.0**500

# float32 path: each sum is float32 BLAS dots over blocks of _BLOCK values, their float32 results
# totalled in float64.  Whatever order a BLAS kernel adds in, a block's result is within
# (_BLOCK + 1) u of the block's sum of |terms| (u = 2^-24: the products, the additions, and the
# rounding of the result to float32); squaring fl(r - a) instead of r - a adds 2u for Σ(r-a)².
_BLOCK = 256
_U32 = 2.0**-24
GAMMA32 = (_BLOCK + 3) * _U32 / (1 - (_BLOCK + 3) * _U32)  # ≈ 1.54e-5
# Values per chunk of the float32 passes (a multiple of _BLOCK): 1 MB per buffer, more than L2
# holds, but below this size the fixed cost of the dozen numpy calls per chunk outweighs the L3
# reads (4096x4096 on a 1 MB-L2 machine: 2^18 took 20-30% less time than 2^16).
_CHUNK32 = 1 << 18
# Squares and products below 2^-126 lose bits to float32's subnormal range (at most 2^-150
# absolute each), and past 3.4e38 they overflow to inf.  A float32 result is kept when every
# sum is finite and each of Σr², Σa², Σ(r-a)² is either exactly 0 (all differences 0) or at
# least n * 2^-100: the underflow losses are then below 2^-50 of it.  Otherwise the pair is
# measured again on the float64 path.
_F32_TINY = 2.0**-100
_F32_INPUTS = (np.dtype(np.float16), np.dtype(np.float32))
_RR, _DD, _AA, _RA = range(4)  # rows of _Sums32.parts; Σr² and Σd² adjacent (weight_report)


class _Moments:
    """Running float64 sums of r*r, a*a, r*a, (r-a)^2 and the extremes of r-a."""

    def __init__(self) -> None:
        self.rr = self.aa = self.ra = self.dd = 0.0
        self.hi = self.lo = 0.0

    def add(self, rb: npt.NDArray[np.float64], ab: npt.NDArray[np.float64]) -> None:
        """Accumulate one chunk; *ab* is overwritten with the difference."""
        dot = np.dot
        self.rr += float(dot(rb, rb))
        self.aa += float(dot(ab, ab))
        self.ra += float(dot(rb, ab))
        np.subtract(rb, ab, out=ab)
        self.dd += float(dot(ab, ab))
        self.hi = max(self.hi, float(ab.max()))
        self.lo = min(self.lo, float(ab.min()))

    def in_safe_range(self) -> bool:
        sums = (self.rr, self.aa, abs(self.ra), self.dd)
        return all(x < _SAFE_HI for x in sums) and self.rr > _SAFE_LO  # False on NaN too


def _run(n: int, fill: _Fill, r_factor: float = 1.0, a_factor: float = 1.0) -> _Moments:
    m = _Moments()
    width = min(n, _CHUNK)
    rbuf, abuf = np.empty(width), np.empty(width)
    for i, j in _chunks(n):
        rb, ab = rbuf[: j - i], abuf[: j - i]
        r, a = fill(i, j, rb, ab)
        if r_factor != 1.0:
            r = np.multiply(r, r_factor, out=rb)
        if a_factor != 1.0 or a is not ab:  # add() overwrites it: never an input's view
            np.multiply(a, a_factor, out=ab)
        m.add(r, ab)
    return m


class _Sums32:
    """Σr², Σa², Σra, Σd² (rows of ``parts``) as one float32 dot per block of _BLOCK values,
    totalled in float64 at the end, and max|d| (d = fl(r - a)) over the chunks."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts = np.zeros((4, -(-n // _BLOCK)), np.float32)
        self.peaks: list[np.floating[Any]] = []

    def dots(self, row: int, *pairs: tuple[int, npt.NDArray[Any], npt.NDArray[Any]]) -> None:
        """Blocks *row*, *row* + 1, ... given as the rows of 2-D chunks."""
        for which, x, y in pairs:
            np.vecdot(x, y, out=self.parts[which, row : row + len(x)])

    def total(self, which: int) -> float:
        return float(self.parts[which].sum(dtype=np.float64))

    @property
    def peak(self) -> float:
        return float(np.max(self.peaks)) if self.peaks else 0.0


def _chunks32(
    n: int, *flats: npt.NDArray[Any]
) -> Iterator[tuple[int, int, int, list[npt.NDArray[Any]]]]:
    """(first block, i, j, chunks of *flats* [i, j) as (blocks, values) views), _CHUNK32 values
    at a time; the tensor's last, short block comes alone as a single row."""
    cut = n - n % _BLOCK
    row = 0
    for lo, hi in (0, cut), (cut, n):
        if hi == lo:
            continue
        width = min(_BLOCK, hi - lo)
        views = [f[lo:hi].reshape(-1, width) for f in flats]
        step = _CHUNK32 // width
        for b in range(0, (hi - lo) // width, step):
            i = lo + b * width
            yield row + b, i, min(i + step * width, hi), [v[b : b + step] for v in views]
        row += (hi - lo) // width


def _buffer(buf: npt.NDArray[Any], like: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The leading part of the 2-D chunk buffer *buf* shaped as *like*."""
    if like.shape[1] == buf.shape[1]:
        return buf[: len(like)]
    return buf.reshape(-1)[: like.size].reshape(like.shape)


def _as_f32(src: npt.NDArray[Any], buf: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    if src.dtype == np.float32:
        return src
    out = _buffer(buf, src)
    np.copyto(out, src)
    return out


def _chunk_buffers(n: int, count: int) -> list[npt.NDArray[np.float32]]:
    shape = (-(-min(n, _CHUNK32) // _BLOCK), _BLOCK)
    return [np.empty(shape, np.float32) for _ in range(count)]


@np.errstate(over="ignore", under="ignore", invalid="ignore")  # out-of-range sums fall back
def _finish32(s: _Sums32, rr: float, aa: float, dd: float, pairs: _Fill) -> Accuracy | None:
    """Metrics from float32-path sums; None when one of them left float32's reliable range.

    The cosine comes through the difference (no Σra needed) unless that form's error factor is
    above the direct one's worst case, 2; then Σra is summed in a second pass over *pairs*.
    """
    n, peak = s.n, s.peak
    floor = n * _F32_TINY
    if not (
        math.isfinite(peak)
        and floor <= rr < math.inf
        and floor <= aa < math.inf
        and (floor <= dd < math.inf or (dd == 0 and peak == 0))
    ):
        return None
    cosine, factor = _via_difference(rr, aa, dd)
    if factor > 2:
        rbuf, abuf = (np.empty(min(n, _CHUNK32), np.float32) for _ in range(2))
        for row, i, j, _ in _chunks32(n):
            r, a = pairs(i, j, rbuf[: j - i], abuf[: j - i])
            k = j - i
            shape = (k // _BLOCK, _BLOCK) if k % _BLOCK == 0 else (1, k)
            s.dots(row, (_RA, r.reshape(shape), a.reshape(shape)))
        ra = s.total(_RA)
        if not math.isfinite(ra):
            return None
        cosine = _cosine(rr, aa, ra, dd)
    return _result(n, rr, aa, dd, peak, cosine)


def _accuracy32(rf: npt.NDArray[Any], af: npt.NDArray[Any], pairs: _Fill) -> Accuracy | None:
    n = rf.size
    rbuf, abuf, dbuf = _chunk_buffers(n, 3)
    s = _Sums32(n)
    with np.errstate(over="ignore", invalid="ignore"):
        for row, _, _, (r, a) in _chunks32(n, rf, af):
            r, a, d = _as_f32(r, rbuf), _as_f32(a, abuf), _buffer(dbuf, r)
            np.subtract(r, a, out=d)  # first, while both stream in from memory
            s.dots(row, (_RR, r, r), (_AA, a, a), (_DD, d, d))
            s.peaks.append(np.maximum.reduce(np.abs(d, out=d), axis=None))
    return _finish32(s, s.total(_RR), s.total(_AA), s.total(_DD), pairs)


def _via_difference(rr: float, aa: float, dd: float) -> tuple[float, float]:
    """``1 - (dd - (|r| - |a|)^2) / (2|r||a|)`` and its error factor ``2(1 - cos) + v - 1``
    (v: larger norm over smaller): an error of e * sum in each sum moves it by at most e times
    that, so near-identical pairs get 1 - cos with a small relative, not absolute, error."""
    nr, na = math.sqrt(rr), math.sqrt(aa)
    cosine = 1 - (dd - (nr - na) ** 2) / (2 * nr * na)
    return cosine, 2 * (1 - cosine) + max(nr, na) / min(nr, na) - 1


def _cosine(rr: float, aa: float, ra: float, dd: float | None) -> float:
    """Cosine from the sums, in the better conditioned of two forms: direct, ``ra / (|r||a|)``,
    whose error factor (as in _via_difference) is 1 + |cos|, or through the difference.  (*dd*
    None: the sums were taken on different scales, only the direct form applies.)"""
    if aa == 0:
        return 0.0  # a zero candidate shares no direction with the reference
    prod = rr * aa
    norm = math.sqrt(prod) if 0 < prod < math.inf else math.sqrt(rr) * math.sqrt(aa)
    cosine = ra / norm
    if dd is not None and 0 < prod < math.inf:
        via_d, factor = _via_difference(rr, aa, dd)
        if factor < 1 + abs(cosine):
            cosine = via_d
    return min(1.0, max(-1.0, cosine))


def _result(
    n: int, rr: float, aa: float, dd: float, peak: float, cosine: float, factor: float = 1.0
) -> Accuracy:
    cosine = min(1.0, max(-1.0, cosine))
    return Accuracy(
        cosine=cosine,
        sqnr_db=math.inf if dd == 0 else 10.0 * math.log10(rr / dd),
        rel_l2=math.sqrt(dd / rr),
        mse=dd / n / factor / factor,
        max_abs=peak / factor,
        accuracy_ratio=max(0.0, cosine),
        n=n,
    )


def _normaliser(arr: npt.NDArray[Any]) -> float:
    """The power of two that brings max|arr| into [0.5, 1): exact scaling (at most 2**1023,
    which brings even the smallest subnormal into the safe range)."""
    return math.ldexp(1.0, min(1023, -math.frexp(float(np.max(np.abs(arr))))[1]))


@np.errstate(over="ignore", under="ignore", invalid="ignore")  # out-of-range sums are handled
def _measure(
    n: int,
    fill: _Fill,
    ref: tuple[npt.NDArray[Any], str],
    cand: tuple[npt.NDArray[Any], str] | None,
) -> Accuracy:
    """Chunked float64 statistics of the (reference, candidate) pairs *fill* produces.

    Only float64 inputs far from 1 in magnitude leave the fast path: they are measured again
    after exact power-of-two scaling (twice, if the candidate is also far from the reference).
    """
    m = _run(n, fill)
    factor = 1.0
    if not m.in_safe_range():
        for arr, name in (ref, cand) if cand else (ref,):
            finite_or_raise(arr, name)  # NaN/Inf is the usual reason: say where
        if not np.any(ref[0]):
            raise QuantInputError(
                f"{ref[1]} is all zeros: cosine, SQNR and relative L2 are undefined; "
                "accepted: a reference with at least one non-zero value"
            )
        factor = _normaliser(ref[0])
        m = _run(n, fill, factor, factor)
        if not m.in_safe_range():
            peaks = ", ".join(
                f"max |{name}| = {float(np.max(np.abs(arr))):.3g}"
                for arr, name in ((ref, cand) if cand else (ref,))
            )
            raise QuantInputError(
                f"candidate is too many orders of magnitude larger than {ref[1]} to measure in "
                f"float64 ({peaks}); accepted: magnitudes within about 1e70 of each other"
            )
    if m.aa < _SAFE_LO and cand is not None and np.any(cand[0]):
        # a candidate tiny next to the reference: measure its direction on its own scale
        d = _run(n, fill, _normaliser(ref[0]), _normaliser(cand[0]))
        cosine = _cosine(d.rr, d.aa, d.ra, None)
    else:
        cosine = _cosine(m.rr, m.aa, m.ra, m.dd)
    return _result(n, m.rr, m.aa, m.dd, max(m.hi, -m.lo), cosine, factor)


def _view_or_copy(src: npt.NDArray[Any], buf: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if src.dtype == buf.dtype:
        return src
    np.copyto(buf, src)
    return buf


def accuracy(reference: object, candidate: object) -> Accuracy:
    """Cosine, SQNR, relative L2, MSE and max error of *candidate* against *reference*.

    Any shape; both must match.  An all-zero reference raises :class:`QuantInputError` (nothing
    to be relative to); a zero candidate against a non-zero reference has cosine 0.

    Precision.  With a float64 tensor on either side every sum (Σr², Σa², Σra, Σ(r-a)²) is
    taken in float64, float16/float32 values converting exactly: each is within 1e-11 of its sum
    of ``|terms|`` at worst, about 1e-15 in practice.  When both sides are float16/float32 the sums
    are float32 BLAS dots over blocks of 256 values, the block results totalled in float64.
    Whatever order the BLAS kernel adds in (OpenBLAS core type, SIMD width), each sum is then
    within ``GAMMA32 = 259 * 2**-24 ≈ 1.54e-5`` of its sum of ``|terms|``, which guarantees (to
    first order in GAMMA32):

    - ``mse`` and ``rel_l2`` within 1.6e-5 relative, ``sqnr_db`` within 1.4e-4 dB; ``max_abs``
      is the largest float32 ``|r - a|``, within 2**-24 ≈ 6e-8 relative;
    - ``cosine`` within ``GAMMA32 * min(2, 2 (1 - cosine) + v - 1)`` absolute, v being the
      larger norm over the smaller: at most 3.1e-5 for any pair, 4.7e-8 once cosine >= 0.999
      with norms within 0.1% (kernel fidelity, where alerts sit at 0.999).  Near-identical
      pairs get ``1 - cosine`` with an error that is a small fraction of it, unless their norms
      differ by much more than ``1 - cosine``.

    Those are worst cases; rounding errors do not line up in practice.  On 4096x4096 N(0, 1)
    pairs the float32 path agrees with float64 to about 1e-11 in cosine and 1e-10 relative in
    the sums, and ``1 - cosine`` of ``reference * (1 + 1e-4 * noise)`` (about 5e-9) comes out
    within 1e-16.  Float32 data whose squares leave float32's range (``|x|`` above ~1.8e19, or
    either side, or their difference, with an RMS below ~1e-15) is measured in float64.

    >>> acc = accuracy(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.5]))
    >>> round(acc.sqnr_db, 2), acc.max_abs
    (17.48, 0.5)
    """
    r = float_input(reference, "reference", None, check_finite=False)
    a = float_input(candidate, "candidate", None, check_finite=False)
    check_same_shape(r, a, "reference", "candidate")
    rf, af = r.reshape(-1), a.reshape(-1)

    def fill(
        i: int, j: int, rb: npt.NDArray[Any], ab: npt.NDArray[Any]
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        return _view_or_copy(rf[i:j], rb), _view_or_copy(af[i:j], ab)

    if r.dtype in _F32_INPUTS and a.dtype in _F32_INPUTS:
        fast = _accuracy32(rf, af, fill)
        if fast is not None:
            return fast
    return _measure(rf.size, fill, (r, "reference"), (a, "candidate"))


@dataclass(frozen=True)
class LogitsAgreement:
    """Mean per-token KL(softmax(ref) || softmax(candidate)) and top-1 agreement.

    ``accuracy_ratio`` (top-1 agreement) is the [0, 1] number we histogram for logits.
    """

    kl_mean: float
    top1: float
    n_tokens: int

    @property
    def accuracy_ratio(self) -> float:
        return self.top1


def _log_softmax(x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    z = x.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def logits_agreement(reference_logits: object, candidate_logits: object) -> LogitsAgreement:
    """Compare two logit tensors of shape (tokens, vocab) or (vocab,) (one token).

    Log-softmax is computed stably in float64, a block of tokens at a time.

    >>> la = logits_agreement(np.array([[2.0, 1.0, 0.0]]), np.array([[2.0, 1.0, 0.0]]))
    >>> la.kl_mean, la.top1
    (0.0, 1.0)
    """
    r = float_input(reference_logits, "reference_logits", (1, 2), "logits (tokens, vocab)")
    a = float_input(candidate_logits, "candidate_logits", (1, 2), "logits (tokens, vocab)")
    check_same_shape(r, a, "reference_logits", "candidate_logits")
    vocab = r.shape[-1]
    r2, a2 = r.reshape(-1, vocab), a.reshape(-1, vocab)
    tokens = r2.shape[0]
    step = max(1, (4 * _CHUNK) // vocab)
    kl_total, agree = 0.0, 0
    for i in range(0, tokens, step):
        lr, la = _log_softmax(r2[i : i + step]), _log_softmax(a2[i : i + step])
        kl = np.sum(np.exp(lr) * (lr - la), axis=1)
        kl_total += float(np.maximum(kl, 0.0).sum())  # KL >= 0; clamp rounding noise
        # argmax of the raw logits: after a log-softmax, tiny spreads can round to a tie
        top_r, top_a = r2[i : i + step].argmax(axis=1), a2[i : i + step].argmax(axis=1)
        agree += int(np.count_nonzero(top_r == top_a))
    return LogitsAgreement(kl_mean=kl_total / tokens, top1=agree / tokens, n_tokens=tokens)


def _weight_errors(
    u: npt.NDArray[np.float32], s32: np.float32, e: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``e = min(u, s - u)`` for u = |w|: ``|e|`` is the error |w - s*t| bit for bit where the
    codes switch at s/2: u itself where t = 0 and ``s - u`` where t = ±1 (exact for
    s/2 < u <= 2s, rounded like ``u - s`` beyond).

    bitnet.cpp's code threshold b (see ``_formats.Absmean``) can sit one float32 step above
    s/2: a weight exactly at b then has code 0 and error b, where this takes s - b, two steps
    less.  That is 2**-22 relative on its square, far inside the float32 path's documented
    error bound, so the sums ignore it; the largest error, documented to 2**-24, does not
    (see _weight32).  For float16 weights the stored scale is float16-rounded, and no float16
    value lies strictly between b and that s/2 (at s/2 both errors are equal)."""
    np.subtract(s32, u, out=e)
    return np.minimum(u, e, out=e)


def _band(threshold: np.float32, s32: np.float32) -> tuple[np.float32, np.float32] | None:
    """(lo, hi]: the |w| whose code follows the threshold but whose error min(u, s - u) picks
    the other branch; None when the two switch points coincide."""
    half = s32 / np.float32(2)
    if threshold == half:
        return None
    return (threshold, half) if threshold < half else (half, threshold)


def _weight32(
    flat: npt.NDArray[Any],
    am: Absmean,
    scale: float,
    counts: dict[int, tuple[int, int]],
    pairs: _Fill,
) -> Accuracy | None:
    """weight_report's float32 path, without forming s*t: with u = |w|, the error |w - s*t| is
    u where t = 0 (u <= b, the code threshold) and |u - s| where t != 0, and Σ(s*t)² is s²
    times the non-zero codes, exactly.

    One pass after the scale's: per chunk |w|, the signed error, one vecdot call for Σu² and Σe²
    (the two buffers are stacked), two comparisons and their counts, and max|w|.  The largest
    error is then ``max|w| - s`` whenever that is at least max(b, s - b) (any weight >= 1.5 s,
    as in any Gaussian-like tensor): every other error is below it.  Only tensors without such a
    weight take a second pass for it.  Chunks run last to first, so the part of the tensor that
    the scale's pass read last is still in the last-level cache."""
    n = flat.size
    rows = -(-min(n, _CHUNK32) // _BLOCK)
    s32, b = np.float32(scale), am.threshold
    band = _band(b, s32)
    sums = _Sums32(n)
    counts.clear()
    chunks = list(_chunks32(n, flat))[::-1]
    workers = workers_for(n)

    def buffers() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        return np.empty((2, rows * _BLOCK), np.float32), np.empty((rows, _BLOCK), np.bool_)

    @np.errstate(over="ignore", invalid="ignore")
    def stats(k: int, bufs: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]) -> Any:
        row, i, _, (x,) = chunks[k]
        r, w = x.shape
        pair = bufs[0][:, : r * w].reshape(2, r, w)  # u, e
        mask = _buffer(bufs[1], x)
        u = np.abs(x, out=pair[0])
        n_pos = int(np.count_nonzero(np.greater(x, b, out=mask)))  # t = +1, as in _ternarize
        _weight_errors(u, s32, pair[1])
        np.vecdot(pair, pair, out=sums.parts[_RR : _DD + 1, row : row + r])
        n_nz = int(np.count_nonzero(np.greater(u, b, out=mask)))  # t != 0
        return i, n_nz - n_pos, n_pos, np.maximum.reduce(u, axis=None)

    results = map_chunks(stats, len(chunks), buffers, workers)
    for i, n_neg, n_pos, _ in results:
        counts[i] = n_neg, n_pos
    top = np.float32(max(r[3] for r in results)) - s32  # the error at the largest |w|
    if top >= max(b, s32 - b):
        sums.peaks.append(top)
    else:  # no weight reaches 1.5 s: the largest error may sit anywhere

        @np.errstate(over="ignore", invalid="ignore")
        def peak(k: int, bufs: tuple[npt.NDArray[np.float32], Any]) -> np.floating[Any]:
            x = chunks[k][3][0]
            u, e = bufs[0][:, : x.size].reshape(2, *x.shape)
            _weight_errors(np.abs(x, out=u), s32, e)
            np.abs(e, out=e)
            if band is not None:  # the weights whose code follows b, not s/2
                inside = (u > band[0]) & (u <= band[1])
                e[inside] = np.where(u[inside] > b, np.abs(s32 - u[inside]), u[inside])
            return np.maximum.reduce(e, axis=None)  # type: ignore[no-any-return]

        sums.peaks.extend(map_chunks(peak, len(chunks), buffers, workers))
    nonzero = sum(r[1] + r[2] for r in results)
    dd = sums.total(_DD)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return _finish32(sums, sums.total(_RR), scale * scale * nonzero, dd, pairs)


@dataclass(frozen=True)
class WeightReport:
    """Quantization of one weight tensor: scale, code distribution and error of ``s*t`` vs W.

    ``code_fractions`` is (-1, 0, +1).  ``bits_per_weight`` is the format's code storage (2 for
    I2_S and TL1, about 5/3 for TL2), excluding the scale.
    """

    format: Format
    shape: tuple[int, int]
    scale: float
    code_fractions: tuple[float, float, float]
    bits_per_weight: float
    accuracy: Accuracy


def _bits_per_weight(fmt: Format, k: int, bk: int) -> float:
    if fmt != "tl2":
        return 2.0
    three_k, two_k = tl2_split(k, bk)
    return (three_k * 5 / 3 + two_k * 2) / k


def weight_report(w: object, format: str = "i2_s", *, bk: int = TL2_DEFAULT_BK) -> WeightReport:
    """Quantize *w* (M, K) with the absmean rule and measure ``s*t`` against it, in two passes.

    I2_S, TL1 and TL2 hold the same ternary values and the same scale, so the accuracy is
    identical for all three; *format* only checks that the shape can be laid out (TL1: even K,
    TL2: K splittable at *bk*) and labels the report.  Neither the codes nor ``s*t`` are
    materialised: memory stays at a few chunk buffers.  Precision is as in :func:`accuracy`
    (float16/float32 weights take its float32 path; Σ(s*t)² is exact there).

    >>> rep = weight_report(np.array([[0.2, -1.0, 0.05, 2.0]], np.float32), "tl1")
    >>> rep.scale, rep.code_fractions
    (0.8124999403953552, (0.25, 0.5, 0.25))
    """
    fmt = check_format(format)
    a = float_input(w, "w", (2,), "weights (M, K)", check_finite=False)
    rows, k = a.shape
    check_tiling(fmt, k, bk)
    flat = a.reshape(-1)
    am = _absmean(flat, a, "w")  # also rejects NaN/Inf
    scale = stored_scale(am, True, a.dtype)  # s*t is 0 anyway when every code is
    size = flat.size
    width = min(size, max(_CHUNK, _CHUNK32))
    t = np.empty(width, np.int8)
    pos, neg = np.empty(width, np.bool_), np.empty(width, np.bool_)
    b32 = np.empty(width, np.float32) if a.dtype == np.float64 else None
    counts: dict[int, tuple[int, int]] = {}  # chunk start -> (n_neg, n_pos); refills overwrite

    def fill(
        i: int, j: int, rb: npt.NDArray[Any], ab: npt.NDArray[Any]
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        n = j - i
        if i == 0:  # a new pass: passes may chunk differently
            counts.clear()
        _ternarize(_f32_view(flat[i:j], b32), am.threshold, t[:n], pos[:n], neg[:n])
        counts[i] = int(np.count_nonzero(neg[:n])), int(np.count_nonzero(pos[:n]))
        np.multiply(t[:n], ab.dtype.type(scale), out=ab)  # exact: s is a float32, t in {-1,0,1}
        return _view_or_copy(flat[i:j], rb), ab

    acc = None
    if a.dtype in _F32_INPUTS:
        acc = _weight32(flat, am, scale, counts, fill)
    if acc is None:
        acc = _measure(size, fill, (a, "w"), None)
    n_neg = sum(c[0] for c in counts.values())
    n_pos = sum(c[1] for c in counts.values())
    scale = stored_scale(am, n_neg + n_pos > 0, a.dtype, fmt)
    return WeightReport(
        format=fmt,
        shape=(rows, k),
        scale=scale,
        code_fractions=(n_neg / size, (size - n_neg - n_pos) / size, n_pos / size),
        bits_per_weight=_bits_per_weight(fmt, k, bk),
        accuracy=acc,
    )
