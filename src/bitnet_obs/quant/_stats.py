"""Accuracy statistics: tensor error metrics, logits agreement, and a one-call weight report.

Everything is accumulated in float64 over fixed-size chunks, so a 4096x4096 float32 tensor costs
a few streaming passes and a few MB of working memory, never a float64 copy of the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._formats import _CHUNK, _absmean_scale, _chunks, _ternarize, _ternary_half
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


# Filled by the caller: reference and candidate values [i, j) as float64, into the two buffers.
_Fill = Callable[[int, int, npt.NDArray[np.float64], npt.NDArray[np.float64]], None]

# Sums outside this range lose precision to float64 under/overflow (and products of two of them
# must stay finite); float16/float32 inputs never leave it, float64 inputs that do are measured
# again after scaling both sides by the power of two that brings max|reference| into [0.5, 1).
_SAFE_LO, _SAFE_HI = 2.0**-500, 2.0**500


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
        fill(i, j, rb, ab)
        if r_factor != 1.0:
            rb *= r_factor
        if a_factor != 1.0:
            ab *= a_factor
        m.add(rb, ab)
    return m


def _normaliser(arr: npt.NDArray[Any]) -> float:
    """The power of two that brings max|arr| into [0.5, 1): exact scaling."""
    return 2.0 ** -math.frexp(float(np.max(np.abs(arr))))[1]


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
    rr, aa, ra, dd = m.rr, m.aa, m.ra, m.dd
    if aa < _SAFE_LO and cand is not None and np.any(cand[0]):
        # a candidate tiny next to the reference: measure its direction on its own scale
        d = _run(n, fill, _normaliser(ref[0]), _normaliser(cand[0]))
        rr, aa, ra = d.rr, d.aa, d.ra
    cosine = 0.0  # a zero candidate shares no direction with the reference
    if aa != 0:
        prod = rr * aa
        norm = math.sqrt(prod) if 0 < prod < math.inf else math.sqrt(rr) * math.sqrt(aa)
        cosine = min(1.0, max(-1.0, ra / norm))
    return Accuracy(
        cosine=cosine,
        sqnr_db=math.inf if dd == 0 else 10.0 * math.log10(m.rr / dd),
        rel_l2=math.sqrt(dd / m.rr),
        mse=dd / n / factor / factor,
        max_abs=max(m.hi, -m.lo) / factor,
        accuracy_ratio=max(0.0, cosine),
        n=n,
    )


def accuracy(reference: object, candidate: object) -> Accuracy:
    """Cosine, SQNR, relative L2, MSE and max error of *candidate* against *reference*.

    Any shape; both must match.  An all-zero reference raises :class:`QuantInputError` (nothing
    to be relative to); a zero candidate against a non-zero reference has cosine 0.

    >>> acc = accuracy(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.5]))
    >>> round(acc.sqnr_db, 2), acc.max_abs
    (17.48, 0.5)
    """
    r = float_input(reference, "reference", None, check_finite=False)
    a = float_input(candidate, "candidate", None, check_finite=False)
    check_same_shape(r, a, "reference", "candidate")
    rf, af = r.reshape(-1), a.reshape(-1)

    def fill(i: int, j: int, rb: npt.NDArray[np.float64], ab: npt.NDArray[np.float64]) -> None:
        np.copyto(rb, rf[i:j])
        np.copyto(ab, af[i:j])

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
        agree += int(np.count_nonzero(lr.argmax(axis=1) == la.argmax(axis=1)))
    return LogitsAgreement(kl_mean=kl_total / tokens, top1=agree / tokens, n_tokens=tokens)


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
    materialised: memory stays at a few chunk buffers.

    >>> rep = weight_report(np.array([[0.2, -1.0, 0.05, 2.0]], np.float32), "tl1")
    >>> rep.scale, rep.code_fractions
    (0.8125, (0.25, 0.5, 0.25))
    """
    fmt = check_format(format)
    a = float_input(w, "w", (2,), "weights (M, K)", check_finite=False)
    rows, k = a.shape
    check_tiling(fmt, k, bk)
    flat = a.reshape(-1)
    scale = _absmean_scale(flat, a, "w")  # also rejects NaN/Inf
    half = _ternary_half(scale, a.dtype)
    width = min(flat.size, _CHUNK)
    t = np.empty(width, np.int8)
    pos, neg = np.empty(width, np.bool_), np.empty(width, np.bool_)
    counts: dict[int, tuple[int, int]] = {}  # chunk start -> (n_neg, n_pos); refills overwrite

    def fill(i: int, j: int, rb: npt.NDArray[np.float64], ab: npt.NDArray[np.float64]) -> None:
        n = j - i
        _ternarize(flat[i:j], half, t[:n], pos[:n], neg[:n])
        counts[i] = int(np.count_nonzero(neg[:n])), int(np.count_nonzero(pos[:n]))
        np.copyto(rb, flat[i:j])
        np.multiply(t[:n], scale, out=ab)

    acc = _measure(flat.size, fill, (a, "w"), None)
    n_neg = sum(c[0] for c in counts.values())
    n_pos = sum(c[1] for c in counts.values())
    size = flat.size
    return WeightReport(
        format=fmt,
        shape=(rows, k),
        scale=scale,
        code_fractions=(n_neg / size, (size - n_neg - n_pos) / size, n_pos / size),
        bits_per_weight=_bits_per_weight(fmt, k, bk),
        accuracy=acc,
    )
