"""The I2_S kernels: exact integer dot, and bitnet.cpp's x86 AVX2 kernel with its 16-bit wrap.

The pinned figures were produced by compiling bitnet.cpp's own ``ggml_vec_dot_i2_i8_s``
(``src/ggml-bitnet-mad.cpp``, AVX2, both its one-row and four-token paths) and running it on the
same inputs; the reference below transcribes that C loop structure literally instead."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_obs.quant import (
    KERNELS,
    MatmulReport,
    QuantInputError,
    integer_dot,
    kernel_dot,
    kernel_overflows,
    matmul,
    matmul_report,
    quantize_activations,
)

FAST = settings(max_examples=40, deadline=None)


def c_loop_reference(q: npt.NDArray[np.int8], codes: npt.NDArray[np.int8]) -> list[list[int]]:
    """ggml_vec_dot_i2_i8_s_1x1 step by step: per 32-block group, 16 int16 lanes; per block
    four 32-byte fields; maddubs adds the products of bytes 2l and 2l+1 into lane l; the lanes
    wrap (_mm256_add_epi16) and are widened once per group (_mm256_madd_epi16); minus sum(q)."""

    def wrap16(v: int) -> int:
        return (v + 32768) % 65536 - 32768

    out = []
    for qrow in q.astype(int).tolist():
        row_out = []
        for crow in (codes.astype(int) + 1).tolist():
            total = 0
            blocks = len(crow) // 128
            for g0 in range(0, blocks, 32):
                lanes = [0] * 16
                for b in range(g0, min(g0 + 32, blocks)):
                    for f in range(4):
                        for lane in range(16):
                            i = b * 128 + f * 32 + 2 * lane
                            pair = crow[i] * qrow[i] + crow[i + 1] * qrow[i + 1]
                            lanes[lane] = wrap16(lanes[lane] + pair)
                total += sum(lanes)
            row_out.append((total + 2**31) % 2**32 - 2**31 - sum(qrow))
        out.append(row_out)
    return out


def test_the_issue_case_matches_bitnet_cpp() -> None:
    x, codes = np.ones((1, 4096), np.float32), np.ones((4, 4096), np.int8)
    assert matmul(x, codes, 1.0).tolist() == [[4096.0] * 4]  # exact
    y = matmul(x, codes, 1.0, kernel="avx2")
    assert y.tolist() == [[np.float32(-4160.504)] * 4]  # what bitnet.cpp's kernel returns
    report = matmul_report(x, codes, 1.0)
    assert report.overflows == 4
    assert report.overflow_mask.tolist() == [[True] * 4]
    assert kernel_overflows(quantize_activations(x)[0], codes).all()
    assert matmul_report(x, codes, 1.0, kernel="avx2").y.tolist() == y.tolist()


def pinned_case() -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    """6 rows, K = 4992 (one full 32-block group and a 7-block tail), 3 tokens: rows more and
    more biased to +1; activations 100..127 all positive, all negative, and alternating."""
    m, k, t = 6, 4992, 3
    r8 = np.random.PCG64(2024).random_raw(m * k).reshape(m, k) % np.uint64(8)
    bias = np.arange(6, dtype=np.uint64)[:, None]
    codes = np.where(r8 < bias + 2, 1, np.where(r8 < bias + 3, 0, -1)).astype(np.int8)
    qraw = np.random.PCG64(7).random_raw(t * k).reshape(t, k) % np.uint64(28)
    q = (100 + qraw.astype(np.int64)).astype(np.int8)
    q[1] = -q[1]
    q[2, ::2] = -q[2, ::2]
    return q, codes


# ggml_vec_dot_i2_i8_s compiled from bitnet.cpp (AVX2) on pinned_case(), minus sum(q)
BITNET_CPP_ACCUMULATORS = [
    [-200943, -80126, -584111, -828138, -690120, -547909],
    [201392, 80404, 518370, 828025, 689614, 547015],
    [-14082, -5165, -6751, 8343, -10479, 1635],
]
EXACT = [
    [-200943, -80126, 71249, 220438, 358456, 500667],
    [201392, 80404, -71454, -220551, -358962, -501561],
    [-14082, -5165, -6751, 8343, -10479, 1635],
]


def test_pinned_accumulators_of_the_compiled_kernel() -> None:
    q, codes = pinned_case()
    assert kernel_dot(q, codes, kernel="avx2").tolist() == BITNET_CPP_ACCUMULATORS
    assert integer_dot(q, codes).tolist() == EXACT
    assert kernel_dot(q, codes).tolist() == EXACT
    expected = (np.array(BITNET_CPP_ACCUMULATORS) != np.array(EXACT)).tolist()
    assert kernel_overflows(q, codes).tolist() == expected
    assert c_loop_reference(q[:, :4992], codes[:2]) == [r[:2] for r in BITNET_CPP_ACCUMULATORS]


def test_float_output_follows_the_forks_formula() -> None:
    """(fl32(sumi) - fl32(sum q)) / act_scale * scale, all in float32."""
    rng = np.random.default_rng(3)
    codes = rng.integers(-1, 2, (5, 4096)).astype(np.int8)
    codes[0] = 1
    x = np.abs(rng.standard_normal((2, 4096))).astype(np.float32) + 2
    q, sx = quantize_activations(x)
    acc = kernel_dot(q, codes, kernel="avx2")
    sums = q.sum(axis=1, dtype=np.int64)
    sumi = (acc + sums[:, None]).astype(np.float32)
    expected = (sumi - sums[:, None].astype(np.float32)) / sx[:, None] * np.float32(0.75)
    assert np.array_equal(matmul(x, codes, 0.75, kernel="avx2"), expected)
    assert matmul_report(x, codes, 0.75).overflows == int(kernel_overflows(q, codes).sum()) > 0


@st.composite
def wrapping_case(draw: st.DrawFn) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    """K a multiple of 128, activations often large and same-signed so lanes can wrap."""
    k = 128 * draw(st.integers(1, 40))
    m, rows = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    plus = draw(st.floats(0, 1))
    codes = draw(
        hnp.arrays(
            np.int8, (m, k), elements=st.sampled_from([1, 1, 0, -1] if plus > 0.5 else [-1, 0, 1])
        )
    )
    big = st.integers(90, 127) | st.integers(-127, 127)
    q = draw(hnp.arrays(np.int8, (rows, k), elements=big))
    if draw(st.booleans()):
        q = -q
    return q, codes


@given(wrapping_case())
@settings(max_examples=25, deadline=None)
def test_avx2_model_equals_the_c_loop(case: tuple[npt.NDArray[np.int8], ...]) -> None:
    q, codes = case
    assert kernel_dot(q, codes, kernel="avx2").tolist() == c_loop_reference(q, codes)


@given(wrapping_case())
@FAST
def test_wrap_model_is_exact_whenever_no_lane_leaves_int16(
    case: tuple[npt.NDArray[np.int8], ...],
) -> None:
    q, codes = case
    wrapped, exact = kernel_dot(q, codes, kernel="avx2"), integer_dot(q, codes)
    mask = kernel_overflows(q, codes)
    assert np.array_equal(wrapped[~mask], exact[~mask])
    assert ((wrapped - exact) % 65536 == 0).all()  # lanes wrap by multiples of 2**16


@given(hnp.arrays(np.int8, st.tuples(st.integers(1, 3), st.integers(1, 24).map(lambda b: 128 * b))))
@FAST
def test_gaussian_like_activations_never_wrap(q: npt.NDArray[np.int8]) -> None:
    """|q| <= 63 everywhere: a lane sums 256 products of at most 2 * 63 < 32768 / 256."""
    q = (q // 2).astype(np.int8)
    codes = np.ones((2, q.shape[1]), np.int8)
    assert not kernel_overflows(q, codes).any()


def test_report_unpacks_as_before_and_other_formats_report_no_overflow() -> None:
    x, codes = np.ones((2, 4096), np.float32), np.ones((3, 4096), np.int8)
    y, zero_rows = matmul_report(x, codes, 1.0, "tl1")
    assert y.shape == (2, 3) and zero_rows.size == 0
    report = matmul_report(x, codes, 1.0, "tl2")
    assert isinstance(report, MatmulReport) and report.overflows == 0
    assert matmul_report(x[0], codes, 1.0).overflow_mask.tolist() == [True] * 3  # one token
    assert matmul_report(np.ones(64, np.float32), codes[:, :64], 1.0).overflows == 0  # K % 128


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: matmul(np.ones(64), np.ones((1, 64), np.int8), 1.0, kernel="avx2"),
         r"the x86 I2_S kernel reads K/128 blocks per row, but K=64 leaves 64 over"),
        (lambda: matmul(np.ones(128), np.ones((1, 128), np.int8), 1.0, "tl1", kernel="avx2"),
         r"kernel='avx2' models bitnet.cpp's x86 I2_S kernel, not tl1"),
        (lambda: kernel_dot(np.ones((1, 128), np.int8), np.ones((1, 128), np.int8), kernel="sse"),  # type: ignore[arg-type]
         r"kernel='sse'; accepted: exact, avx2"),
        (lambda: kernel_overflows(np.ones((1, 192), np.int8), np.ones((1, 192), np.int8)),
         r"K=192 leaves 64 over"),
    ],
)  # fmt: skip
def test_bad_kernel_choices(call: object, message: str) -> None:
    with pytest.raises(QuantInputError, match=message):
        call()  # type: ignore[operator]


def test_kernels_constant() -> None:
    assert KERNELS == ("exact", "avx2")
