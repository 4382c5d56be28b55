"""Top-k log-probabilities against full golden logits (bitnet_obs._topk): the KL bound never
exceeds the full KL, equals it when the top-k holds all the mass, and top-1 is exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_obs._topk import TopkError, TopLogprobs, checked, topk_agreement
from bitnet_obs.quant import logits_agreement


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _server_topk(logits: np.ndarray, k: int, float32: bool = True) -> TopLogprobs:
    """What llama-server reports: the k largest logits' log-softmax over the whole vocabulary
    (computed in float32, as its get_token_probabilities does)."""
    lp = _log_softmax(logits.astype(np.float32) if float32 else logits)
    if float32:
        lp = lp.astype(np.float32).astype(np.float64)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return checked(TopLogprobs(order, np.take_along_axis(lp, order, axis=1)))


def _coarse_kl(golden: np.ndarray, top: TopLogprobs) -> float:
    """The bound by its definition, step by step in plain Python: KL of the distributions
    merged to the server's k tokens plus one 'rest' outcome."""
    total = 0.0
    for step in range(golden.shape[0]):
        p = np.exp(_log_softmax(golden[step : step + 1])[0])
        q_top = [math.exp(v) for v in top.logprobs[step]]
        p_top = [float(p[i]) for i in top.ids[step]]
        p_rest = 1.0 - sum(p_top)
        q_rest = max(1.0 - sum(q_top), top.k * 2.0**-24)
        kl = sum(a * math.log(a / b) for a, b in zip(p_top, q_top, strict=True) if a > 0)
        if p_rest > 1e-15:
            kl += p_rest * math.log(p_rest / q_rest)
        total += max(kl, 0.0)
    return total / golden.shape[0]


logits_arrays = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 6), st.integers(2, 40)),
    elements=st.floats(-8, 8, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=150, deadline=None)
@given(golden=logits_arrays, noise=st.floats(0, 3), k=st.integers(1, 40), seed=st.integers(0, 9))
def test_the_bound_is_below_the_full_kl_and_matches_its_definition(
    golden: np.ndarray, noise: float, k: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    server = golden + noise * rng.standard_normal(golden.shape)
    k = min(k, golden.shape[1])
    top = _server_topk(server, k, float32=False)
    got = topk_agreement(golden, top)
    full = logits_agreement(golden, server)
    assert got.kl_bound <= full.kl_mean + 1e-9
    assert got.kl_bound == pytest.approx(_coarse_kl(golden, top), rel=1e-6, abs=1e-9)
    # top-1 of the server's top-k is the argmax of its logits: exact, as with full logits
    assert got.top1 == full.top1
    assert got.steps == golden.shape[0]


@settings(max_examples=60, deadline=None)
@given(golden=logits_arrays, noise=st.floats(0, 2), seed=st.integers(0, 9))
def test_with_the_whole_vocabulary_the_bound_is_the_full_kl(
    golden: np.ndarray, noise: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    server = golden + noise * rng.standard_normal(golden.shape)
    top = _server_topk(server, golden.shape[1], float32=False)
    assert topk_agreement(golden, top).kl_bound == pytest.approx(
        logits_agreement(golden, server).kl_mean, rel=1e-6, abs=1e-7
    )


def test_identical_distributions_give_zero_within_float32_rounding() -> None:
    rng = np.random.default_rng(0)
    golden = rng.standard_normal((8, 512)) * 3
    got = topk_agreement(golden, _server_topk(golden, 20))
    assert got.top1 == 1.0
    assert 0 <= got.kl_bound < 1e-5


def test_a_broken_server_shows_through_the_rest_bucket() -> None:
    """The server's top-k are tokens the golden finds unlikely: the golden's mass sits in the
    'rest' bucket, which the server says is small -- a large bound."""
    rng = np.random.default_rng(1)
    golden = rng.standard_normal((4, 512)) * 4
    broken = -golden  # the most likely tokens become the least likely
    got = topk_agreement(golden, _server_topk(broken, 20))
    assert got.top1 == 0.0
    assert got.kl_bound > 1.0
    assert got.kl_bound <= logits_agreement(golden, broken).kl_mean


def test_a_probability_that_underflowed_reads_as_float32s_smallest() -> None:
    golden = np.array([[0.0, 0.0, -200.0]])
    # llama-server writes log(0) as -FLT_MAX rather than -inf (JSON has no infinity)
    top = checked(TopLogprobs(np.array([[0, 1, 2]]), np.array([[math.log(0.5)] * 2 + [-3.4e38]])))
    got = topk_agreement(golden, top)
    assert math.isfinite(got.kl_bound) and got.kl_bound >= 0


@pytest.mark.parametrize(
    ("ids", "logprobs", "vocab", "message"),
    [
        ([[0, 1]], [[-0.1]], None, "shape"),
        ([[0, 1]], [[-0.1, float("nan")]], None, "NaN or above 0"),
        ([[0, 1]], [[-0.1, 0.5]], None, "NaN or above 0"),
        ([[0, 0]], [[-1.0, -2.0]], None, "repeated"),
        ([[0, 7]], [[-1.0, -2.0]], 5, "token id 7; accepted: 0..4"),
        ([[-1, 0]], [[-1.0, -2.0]], None, "token id -1"),
        ([[0, 1]], [[-0.01, -0.01]], None, "add up to"),
        ([[0.5, 1]], [[-1.0, -2.0]], None, "integers"),
    ],
)
def test_impossible_top_k_is_refused(
    ids: list[list[float]], logprobs: list[list[float]], vocab: int | None, message: str
) -> None:
    with pytest.raises(TopkError, match=message):
        checked(TopLogprobs(np.array(ids), np.array(logprobs)), vocab)  # type: ignore[arg-type]
