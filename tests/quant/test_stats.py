"""Accuracy statistics: reference figures, agreement with plain float64 formulas (within the
documented bounds of the float32 path), identities, the float64 fallback at float32's range
limits, logits agreement, and the memory bound of the chunked passes."""

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
    _stats,
    accuracy,
    code_fractions,
    logits_agreement,
    quantize_weights,
    weight_report,
)

SEED = 7
FAST = settings(max_examples=80, deadline=None)
GAMMA32 = _stats.GAMMA32  # the float32 path's worst-case error per sum, relative to sum |terms|
F32 = 1e-6  # what the float32 path must meet on ordinary random data (it gets ~1e-8)

# magnitudes where the plain formulas below neither underflow nor overflow
finite = st.one_of(st.just(0.0), st.floats(1e-60, 1e6), st.floats(-1e6, -1e-60))
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12)
# every finite float32, subnormals and values whose squares overflow float32 included
any_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


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


def assert_within_f32_bounds(
    acc: Accuracy, r: npt.NDArray[np.floating], a: npt.NDArray[np.floating]
) -> None:
    """The guarantees documented in accuracy() for float16/float32 pairs (first order in
    GAMMA32; the 1.01 and the tiny absolute terms cover the second-order rest)."""
    ref = formula(r, a)
    g = 1.01 * GAMMA32
    nr, na = np.linalg.norm(r.astype(np.float64)), np.linalg.norm(a.astype(np.float64))
    if na:
        v = max(nr, na) / min(nr, na)
        factor = min(2.0, 2 * (1 - ref["cosine"]) + v - 1)
        assert abs(acc.cosine - ref["cosine"]) <= g * factor + 1e-15
    else:
        assert acc.cosine == 0.0
    assert acc.mse == pytest.approx(ref["mse"], rel=g, abs=1e-300)
    assert acc.rel_l2 == pytest.approx(ref["rel_l2"], rel=g)
    assert acc.max_abs == pytest.approx(ref["max_abs"], rel=2.0**-24)
    if math.isinf(ref["sqnr_db"]):
        assert acc.sqnr_db == math.inf
    else:
        assert abs(acc.sqnr_db - ref["sqnr_db"]) <= 10 / math.log(10) * 2 * g + 1e-9


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


CHUNK32 = _stats._CHUNK32  # values per chunk of the float32 passes


@pytest.mark.parametrize("shape", [(300, 517), (2 * CHUNK32 // 1031 + 1, 1031)])
@pytest.mark.parametrize(
    ("dtype", "rel"), [(np.float16, F32), (np.float32, F32), (np.float64, 1e-12)]
)
def test_weight_report_equals_quantize_then_accuracy(
    dtype: type, rel: float, shape: tuple[int, int]
) -> None:
    w: npt.NDArray[np.floating] = np.random.default_rng(SEED).standard_normal(shape)
    w = w.astype(dtype)  # one chunk or three, each with a short last block
    codes, s = quantize_weights(w)
    rep = weight_report(w)
    assert rep.scale == s
    assert rep.code_fractions == code_fractions(codes)
    assert_matches(rep.accuracy, formula(w, codes * np.float64(s)), rel=rel)
    if dtype != np.float64:
        assert_within_f32_bounds(rep.accuracy, w, codes * np.float32(s))
        assert rep.accuracy.max_abs == f32_max_error(w, codes, s)


def f32_max_error(w: npt.NDArray[np.floating], codes: npt.NDArray[np.int8], s: float) -> float:
    """max |w - s*t| with the difference rounded to float32, as the float32 path reports it."""
    return float(np.max(np.abs(w.astype(np.float32) - codes * np.float32(s))))


@given(
    st.sampled_from(
        [
            (np.float16, st.floats(width=16, allow_nan=False, allow_infinity=False)),
            (np.float32, st.floats(-1e4, 1e4, width=32)),
            (np.float32, any_f32),
        ]
    ),
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
    st.data(),
)
@FAST
def test_weight_report_matches_quantize_then_formulas(
    kind: tuple[type[np.floating], st.SearchStrategy[float]],
    shape: tuple[int, int],
    data: st.DataObject,
) -> None:
    """Scale and codes bit for bit as quantize_weights, metrics within the float32 bounds."""
    dtype, elements = kind
    w = data.draw(hnp.arrays(dtype, shape, elements=elements))
    assume(np.any(w))
    codes, s = quantize_weights(w)
    rep = weight_report(w)
    assert rep.scale == s
    assert rep.code_fractions == code_fractions(codes)
    assert_within_f32_bounds(rep.accuracy, w, codes * np.float32(s))


def test_weight_report_largest_error_without_a_weight_at_1_5_scales() -> None:
    """The largest error is max|w| - s only when that reaches s/2; otherwise it is found
    elsewhere. Both cases give the exact float32 maximum."""
    rng = np.random.default_rng(SEED)
    gauss = rng.standard_normal((300, 517)).astype(np.float32)
    codes, s = quantize_weights(gauss)
    assert weight_report(gauss).accuracy.max_abs == f32_max_error(gauss, codes, s)
    # near-ternary: ±(1 + noise) and a few small values, so max|w| < 1.5 s
    w = np.sign(rng.standard_normal((300, 517))) * (1 + 0.02 * rng.standard_normal((300, 517)))
    w[rng.random(w.shape) < 0.1] *= 0.05
    w = w.astype(np.float32)
    codes, s = quantize_weights(w)
    assert float(np.max(np.abs(w))) < 1.5 * s
    rep = weight_report(w)
    assert rep.accuracy.max_abs == f32_max_error(w, codes, s)
    assert_within_f32_bounds(rep.accuracy, w, codes * np.float32(s))


def test_weight_report_heavy_tails_and_exact_ternary() -> None:
    rng = np.random.default_rng(SEED)
    w: npt.NDArray[np.float32] = rng.standard_t(2, size=(300, 517)).astype(np.float32)
    w[7, 11] = 1e4  # norms of w and s*t far apart: the cosine needs the second, Σra pass
    codes, s = quantize_weights(w)
    acc = weight_report(w).accuracy
    assert acc.cosine == pytest.approx(formula(w, codes * np.float64(s))["cosine"], abs=F32)
    assert_within_f32_bounds(acc, w, codes * np.float32(s))
    exact = np.array([[0.75, -0.75, 0.75], [-0.75, -0.75, 0.75]], np.float32)  # s*t == w
    acc = weight_report(exact).accuracy
    assert (acc.cosine, acc.sqnr_db, acc.rel_l2, acc.max_abs) == (1.0, math.inf, 0.0, 0.0)


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


@pytest.mark.parametrize(
    "n", [1, 255, 256, 257, 65536, 210_001, CHUNK32, CHUNK32 + 1, 2 * CHUNK32 + 255]
)
def test_float32_accuracy_across_block_and_chunk_boundaries(n: int) -> None:
    rng = np.random.default_rng(SEED)
    r = rng.standard_normal(n).astype(np.float32)
    a = r + rng.standard_normal(n).astype(np.float32) * np.float32(0.1)
    acc = accuracy(r, a)
    assert_matches(acc, formula(r, a), rel=F32)
    assert_within_f32_bounds(acc, r, a)
    assert acc.n == n


def test_accuracy_across_chunk_boundaries_and_layouts() -> None:
    rng = np.random.default_rng(SEED)
    # 840_000 values: 4 float32 chunks, 13 float64 ones
    r = rng.standard_normal((700, 1200)).astype(np.float32)
    a = r + rng.standard_normal(r.shape).astype(np.float32) * np.float32(0.1)
    assert_matches(accuracy(r, a), formula(r, a), rel=F32)
    assert_matches(accuracy(r.T, a.T), formula(r.T, a.T), rel=F32)  # non-contiguous input
    assert_matches(accuracy(r[:, ::3], a[:, ::3]), formula(r[:, ::3], a[:, ::3]), rel=F32)
    r16 = r.astype(np.float16)
    assert_matches(accuracy(r16, a), formula(r16, a), rel=F32)
    # a float64 side takes the float64 path: agreement to float64 rounding
    assert_matches(accuracy(r, a.astype(np.float64)), formula(r, a), rel=1e-12)


@given(st.data(), shapes)
@FAST
def test_float32_path_within_documented_bounds(data: st.DataObject, shape: tuple[int, ...]) -> None:
    """Every finite float32 pair (extreme magnitudes take the float64 fallback)."""
    r = data.draw(hnp.arrays(np.float32, shape, elements=any_f32))
    a = data.draw(hnp.arrays(np.float32, shape, elements=any_f32))
    assume(np.any(r))
    acc = accuracy(r, a)
    assert_within_f32_bounds(acc, r, a)
    assert acc.accuracy_ratio == max(0.0, acc.cosine)


def test_near_identical_pairs_resolve_one_minus_cosine() -> None:
    """Kernel fidelity: 1 - cosine of candidate = reference * (1 + eps * noise), in float32."""
    rng = np.random.default_rng(SEED)
    r = rng.standard_normal(1 << 20).astype(np.float32)
    r64 = r.astype(np.float64)
    for eps in (1e-7, 1e-6, 1e-4, 1e-2):
        a = (r64 * (1 + eps * rng.standard_normal(r.size))).astype(np.float32)
        a64 = a.astype(np.float64)
        unit = r64 / np.linalg.norm(r64) - a64 / np.linalg.norm(a64)
        one_minus_cos = float(unit @ unit) / 2  # exact to float64 rounding, even near 0
        got = 1 - accuracy(r, a).cosine
        assert abs(got - one_minus_cos) <= 1e-15 + 1e-6 * one_minus_cos, eps


@pytest.mark.parametrize(
    "case",
    [
        "squares overflow",
        "differences overflow",
        "squares underflow",
        "differences underflow",
        "tiny candidate",
    ],
)
def test_float32_range_limits_fall_back_to_float64(case: str) -> None:
    rng = np.random.default_rng(SEED)
    base = rng.standard_normal(5000)
    r, a = base, base + rng.standard_normal(5000) * 0.1
    if case == "squares overflow":
        r, a = r * 1e20, a * 1e20
    elif case == "differences overflow":
        r, a = np.full(5000, 3e38), np.full(5000, -3e38)
    elif case == "squares underflow":
        r, a = r * 1e-22, a * 1e-22
    elif case == "differences underflow":
        r = r * 1e-13
        a = np.nextafter(r.astype(np.float32), np.float32(1))  # 1 ulp apart: d^2 ~ 2^-134
    else:
        a = a * 1e-25
    r32, a32 = r.astype(np.float32), a.astype(np.float32)
    # within 1e-12 of the float64 formula: the float32 path could not get there
    assert_matches(accuracy(r32, a32), formula(r32, a32), rel=1e-12)


@given(
    st.one_of(
        hnp.arrays(np.float64, shapes, elements=finite),
        hnp.arrays(np.float32, shapes, elements=any_f32),
        hnp.arrays(
            np.float16, shapes, elements=st.floats(width=16, allow_nan=False, allow_infinity=False)
        ),
    )
)
@FAST
def test_equal_tensors(r: npt.NDArray[np.floating]) -> None:
    assume(np.any(r))
    acc = accuracy(r, r.copy())
    assert acc.cosine == 1.0
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


@given(pairs(), st.integers(-20, 20))
@FAST
def test_float32_cosine_is_invariant_under_power_of_two_scaling(
    case: tuple[npt.NDArray[np.float64], ...], k: int
) -> None:
    r, a = (x.astype(np.float32) for x in case)
    assume(np.linalg.norm(r) > 1e-3 and np.linalg.norm(a) > 1e-3)
    scaled = accuracy(r * np.float32(2.0**k), a)
    # both are within the documented bound of the same exact value
    assert scaled.cosine == pytest.approx(accuracy(r, a).cosine, abs=4 * GAMMA32)


def test_float32_power_of_two_scaling_is_exact() -> None:
    rng = np.random.default_rng(SEED)
    r = rng.standard_normal(100_000).astype(np.float32)
    a = r + rng.standard_normal(r.size).astype(np.float32) * np.float32(0.05)
    base, scaled = accuracy(r, a), accuracy(r * np.float32(2.0**-40), a * np.float32(2.0**-40))
    assert scaled.cosine == base.cosine and scaled.sqnr_db == base.sqnr_db
    assert scaled.rel_l2 == base.rel_l2 and scaled.max_abs == base.max_abs * 2.0**-40


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_and_negated_candidates(dtype: type) -> None:
    r: npt.NDArray[np.floating] = np.array([1.0, -2.0, 3.0], dtype)
    zero = accuracy(r, np.zeros(3, dtype))
    assert zero.cosine == 0.0 and zero.accuracy_ratio == 0.0
    assert zero.sqnr_db == 0.0 and zero.rel_l2 == 1.0
    neg = accuracy(r, -r)
    assert neg.cosine == -1.0 and neg.accuracy_ratio == 0.0
    far = accuracy(r, 10 * r)  # norms apart: the float32 path's second, Σra pass
    assert far.cosine == 1.0 and far.rel_l2 == pytest.approx(9.0)


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
    assert peak < r.nbytes / 2  # two workers' chunk buffers, nowhere near a float64 copy


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


def test_top1_is_taken_on_the_raw_logits() -> None:
    # after a log-softmax both rows become [-log 2, -log 2]: a tie that made top1 1.0 on main
    la = logits_agreement(np.array([0.0, 1e-20]), np.array([1e-20, 0.0]))
    assert la.top1 == 0.0
    assert la.kl_mean == 0.0  # the distributions themselves agree to float64 precision
