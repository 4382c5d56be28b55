"""Accuracy statistics: reference figures, agreement with plain float64 formulas, identities,
logits agreement, and the memory bound of the chunked passes."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_obs.quant import (
    FORMATS,
    Accuracy,
    QuantInputError,
    accuracy,
    code_fractions,
    logits_agreement,
    quantize_weights,
    weight_report,
)

SEED = 7
FAST = settings(max_examples=80, deadline=None)

# magnitudes where the plain formulas below neither underflow nor overflow
finite = st.one_of(st.just(0.0), st.floats(1e-60, 1e6), st.floats(-1e6, -1e-60))
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    shape = draw(shapes)
    r = draw(hnp.arrays(np.float64, shape, elements=finite))
    a = draw(hnp.arrays(np.float64, shape, elements=finite))
    return r, a


def formula(r: npt.NDArray[np.floating], a: npt.NDArray[np.floating]) -> dict[str, float]:
    """quant-formats.md section 7, written out directly in float64."""
    r, a = r.astype(np.float64).ravel(), a.astype(np.float64).ravel()
    d = r - a
    nr, na, nd = np.linalg.norm(r), np.linalg.norm(a), np.linalg.norm(d)
    return {
        "cosine": float(r @ a / (nr * na)) if na else 0.0,
        "sqnr_db": float(20 * np.log10(nr / nd)) if nd else math.inf,
        "rel_l2": float(nd / nr),
        "mse": float(np.mean(d * d)),
        "max_abs": float(np.max(np.abs(d))),
    }


def assert_matches(acc: Accuracy, ref: dict[str, float], rel: float = 1e-9) -> None:
    for name, value in ref.items():
        assert getattr(acc, name) == pytest.approx(value, rel=rel, abs=1e-12), name


# --- section 8 weight figures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gaussian() -> npt.NDArray[np.float32]:
    return np.random.default_rng(SEED).standard_normal((4096, 4096), dtype=np.float32)


def test_weight_figures_match_reference_and_are_format_independent(
    gaussian: npt.NDArray[np.float32],
) -> None:
    reports = [weight_report(gaussian, fmt) for fmt in FORMATS]
    acc = reports[0].accuracy
    assert acc.cosine == pytest.approx(0.887, abs=3e-3)
    assert acc.sqnr_db == pytest.approx(5.79, abs=0.05)
    assert acc.sqnr_db < 7.20  # the best 3-level quantizer for a Gaussian
    assert acc.rel_l2 == pytest.approx(0.513, abs=3e-3)
    assert acc.mse == pytest.approx(0.263, abs=3e-3)
    assert acc.accuracy_ratio == acc.cosine
    assert acc.n == gaussian.size
    assert reports[0].scale == pytest.approx(math.sqrt(2 / math.pi), abs=2e-3)
    assert reports[0].code_fractions == pytest.approx((0.345, 0.310, 0.345), abs=2e-3)
    for rep in reports[1:]:
        assert rep.accuracy == acc
        assert (rep.scale, rep.code_fractions) == (reports[0].scale, reports[0].code_fractions)
    assert [r.format for r in reports] == list(FORMATS)
    assert reports[0].bits_per_weight == 2.0
    assert reports[2].bits_per_weight == pytest.approx((4032 * 5 / 3 + 64 * 2) / 4096)


def test_weight_report_equals_quantize_then_accuracy() -> None:
    w = np.random.default_rng(SEED).standard_normal((300, 500)).astype(np.float32)  # 3 chunks
    codes, s = quantize_weights(w)
    rep = weight_report(w)
    assert rep.scale == s
    assert rep.code_fractions == code_fractions(codes)
    assert_matches(rep.accuracy, formula(w, codes * np.float64(s)), rel=1e-12)


# --- accuracy --------------------------------------------------------------------------------


@given(pairs())
@FAST
def test_accuracy_matches_plain_formulas(case: tuple[npt.NDArray[np.float64], ...]) -> None:
    r, a = case
    assume(np.any(r))
    acc = accuracy(r, a)
    ref = formula(r, a)
    assert_matches(acc, ref, rel=1e-7)
    assert acc.accuracy_ratio == min(1.0, max(0.0, acc.cosine))
    assert acc.n == r.size


def test_accuracy_across_chunk_boundaries_and_layouts() -> None:
    rng = np.random.default_rng(SEED)
    r = rng.standard_normal((700, 300)).astype(np.float32)  # 210_000 values: 4 chunks
    a = r + rng.standard_normal(r.shape).astype(np.float32) * 0.1
    assert_matches(accuracy(r, a), formula(r, a))
    assert_matches(accuracy(r.T, a.T), formula(r.T, a.T))  # non-contiguous input
    assert_matches(accuracy(r.astype(np.float16), a), formula(r.astype(np.float16), a))


@given(hnp.arrays(np.float64, shapes, elements=finite))
@FAST
def test_equal_tensors(r: npt.NDArray[np.float64]) -> None:
    assume(np.any(r))
    acc = accuracy(r, r.copy())
    assert acc.cosine == pytest.approx(1.0, abs=1e-15)
    assert acc.sqnr_db == math.inf
    assert acc.rel_l2 == 0.0 and acc.mse == 0.0 and acc.max_abs == 0.0


@given(pairs(), st.floats(1e-3, 1e3), st.booleans())
@FAST
def test_cosine_is_invariant_under_positive_scaling(
    case: tuple[npt.NDArray[np.float64], ...], k: float, scale_reference: bool
) -> None:
    r, a = case
    assume(np.linalg.norm(r) > 1e-3 and np.linalg.norm(a) > 1e-3)
    before = accuracy(r, a).cosine
    after = accuracy(r * k, a).cosine if scale_reference else accuracy(r, a * k).cosine
    assert after == pytest.approx(before, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("k", [1e-150, 1e150, 1e-300])
def test_float64_extremes_are_rescaled_not_lost(k: float) -> None:
    rng = np.random.default_rng(SEED)
    r = rng.standard_normal(1000)
    a = r + rng.standard_normal(1000) * 0.1
    base, scaled = accuracy(r, a), accuracy(r * k, a * k)
    for name in ("cosine", "sqnr_db", "rel_l2", "accuracy_ratio"):
        assert getattr(scaled, name) == pytest.approx(getattr(base, name), rel=1e-12), name
    assert scaled.max_abs == pytest.approx(base.max_abs * k, rel=1e-12)
    if k > 1e-160:
        assert scaled.mse == pytest.approx(base.mse * k * k, rel=1e-12)


@pytest.mark.parametrize("k", [1e-170, 1e-250])
def test_tiny_candidate_keeps_its_direction(k: float) -> None:
    rng = np.random.default_rng(SEED)
    r = rng.standard_normal(1000)
    a = r + rng.standard_normal(1000) * 0.1
    acc = accuracy(r, a * k)
    assert acc.cosine == pytest.approx(accuracy(r, a).cosine, rel=1e-12)
    assert acc.rel_l2 == pytest.approx(1.0) and acc.sqnr_db == pytest.approx(0.0, abs=1e-12)


def test_candidate_beyond_float64_reach_raises() -> None:
    with pytest.raises(QuantInputError, match=r"too many orders of magnitude.*accepted"):
        accuracy(np.ones(4), np.full(4, 1e200))


def test_zero_and_negated_candidates() -> None:
    r = np.array([1.0, -2.0, 3.0])
    zero = accuracy(r, np.zeros(3))
    assert zero.cosine == 0.0 and zero.accuracy_ratio == 0.0
    assert zero.sqnr_db == 0.0 and zero.rel_l2 == 1.0
    neg = accuracy(r, -r)
    assert neg.cosine == -1.0 and neg.accuracy_ratio == 0.0


def test_all_zero_reference_raises() -> None:
    with pytest.raises(QuantInputError, match=r"reference is all zeros.*accepted"):
        accuracy(np.zeros((2, 3)), np.ones((2, 3)))


def test_accuracy_memory_stays_below_one_copy() -> None:
    rng = np.random.default_rng(SEED)
    r = rng.standard_normal((2048, 2048), dtype=np.float32)
    a = r * np.float32(1.01)
    tracemalloc.start()
    try:
        accuracy(r, a)
        weight_report(r)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < r.nbytes / 4  # a few chunk buffers, nowhere near a float64 copy


# --- logits ----------------------------------------------------------------------------------


def kl_formula(ref: npt.NDArray[np.floating], cand: npt.NDArray[np.floating]) -> float:
    def log_softmax(z: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        y = z.astype(np.float64)
        y = y - y.max(axis=-1, keepdims=True)
        out: npt.NDArray[np.float64] = y - np.log(np.exp(y).sum(axis=-1, keepdims=True))
        return out

    lp, lq = log_softmax(ref), log_softmax(cand)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


def test_logits_agreement_matches_formula() -> None:
    rng = np.random.default_rng(SEED)
    ref = rng.standard_normal((300, 1000)).astype(np.float32) * 3  # several token blocks
    cand = ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.5
    la = logits_agreement(ref, cand)
    assert la.kl_mean == pytest.approx(kl_formula(ref, cand), rel=1e-9)
    assert la.top1 == np.mean(ref.argmax(1) == cand.argmax(1))
    assert la.n_tokens == 300
    assert la.accuracy_ratio == la.top1


def test_logits_identical_1d_and_large_offsets() -> None:
    same = logits_agreement(np.array([2.0, 1.0, 0.0]), np.array([2.0, 1.0, 0.0]))
    assert (same.kl_mean, same.top1, same.n_tokens) == (0.0, 1.0, 1)
    big = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 5.0]])
    cand = np.array([[1e4 + 1, 0.0, -1e4], [1e4, 0.0, 5.0]])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        la = logits_agreement(big, cand)
    assert la.top1 == 0.5
    assert math.isfinite(la.kl_mean) and la.kl_mean > 0
