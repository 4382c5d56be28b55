"""Formats and kernels: bitnet.cpp byte layouts, round trips, integer-exact LUT sums, and the
reference figures of quant-formats.md section 8 on seeded Gaussian tensors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_obs.quant import (
    FORMATS,
    I2S_BLOCK,
    TL2_DEFAULT_BK,
    QuantInputError,
    Tl2Packed,
    accuracy,
    code_fractions,
    decode_tl1,
    decode_tl2,
    encode_tl1,
    encode_tl2,
    integer_dot,
    kernel_dot,
    matmul,
    matmul_report,
    pack_i2s,
    quantize_activations,
    quantize_weights,
    unpack_i2s,
    weight_report,
)

SEED = 20240601
N = 4096
FAST = settings(max_examples=60, deadline=None)

ternary = st.sampled_from([-1, 0, 1])


def codes_of(shape: st.SearchStrategy[tuple[int, ...]]) -> st.SearchStrategy[npt.NDArray[np.int8]]:
    return hnp.arrays(np.int8, shape, elements=ternary)


@pytest.fixture(scope="module")
def gaussian() -> npt.NDArray[np.float32]:
    return np.random.default_rng(SEED).standard_normal((N, N), dtype=np.float32)


@pytest.fixture(scope="module")
def quantized(gaussian: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int8], float]:
    return quantize_weights(gaussian)


# --- section 8 reference figures -------------------------------------------------------------


def test_scale_and_code_fractions_match_reference(
    quantized: tuple[npt.NDArray[np.int8], float],
) -> None:
    codes, s = quantized
    assert s == pytest.approx(math.sqrt(2 / math.pi), abs=2e-3)  # 0.7979
    neg, zero, pos = code_fractions(codes)
    assert (neg, zero, pos) == pytest.approx((0.345, 0.310, 0.345), abs=2e-3)
    assert neg + zero + pos == pytest.approx(1.0)


def test_quantize_weights_matches_the_converter(
    gaussian: npt.NDArray[np.float32], quantized: tuple[npt.NDArray[np.int8], float]
) -> None:
    codes, s = quantized
    mean = np.float32(np.abs(gaussian).sum(dtype=np.float64) / gaussian.size)
    head = gaussian[:1024]  # 4M values are plenty to pin the rounding rule
    expected, expected_scale = converter_rule(head, mean)
    assert s == expected_scale
    assert codes.dtype == np.int8
    assert np.array_equal(codes[:1024], expected)


def test_int8_activations_match_reference() -> None:
    x = np.random.default_rng(SEED + 1).standard_normal((64, N), dtype=np.float32)
    q, sx = quantize_activations(x)
    acc = accuracy(x, q / sx[:, None])
    assert acc.sqnr_db == pytest.approx(41.2, abs=0.5)
    assert acc.rel_l2 == pytest.approx(0.0087, abs=6e-4)


def test_i2s_matmul_matches_reference(
    gaussian: npt.NDArray[np.float32], quantized: tuple[npt.NDArray[np.int8], float]
) -> None:
    codes, s = quantized
    x = np.random.default_rng(SEED + 2).standard_normal((16, N), dtype=np.float32)
    y = matmul(x, codes, s)
    assert y.dtype == np.float32
    assert y.shape == (16, N)
    assert accuracy(x @ gaussian.T, y).cosine == pytest.approx(0.887, abs=5e-3)
    ternary_w = codes.astype(np.float32) * np.float32(s)
    assert accuracy(x @ ternary_w.T, y).sqnr_db == pytest.approx(41.2, abs=0.6)


def test_lut_formats_give_the_i2s_output_on_a_large_tensor(
    quantized: tuple[npt.NDArray[np.int8], float],
) -> None:
    codes, s = quantized
    sub = codes[:512]
    x = np.random.default_rng(SEED + 3).standard_normal((3, N), dtype=np.float32)
    y = matmul(x, sub, s)
    for fmt in ("tl1", "tl2"):
        assert np.array_equal(matmul(x, sub, s, fmt), y)


# --- weights and activations -----------------------------------------------------------------


def converter_rule(
    w: npt.NDArray[np.floating], mean: np.float32
) -> tuple[npt.NDArray[np.int8], float]:
    """bitnet.cpp's converter (weight_quant, then quantize_to_i2_s) spelled out, given the
    float32 mean |w|: float32 product with the reciprocal, half-to-even rounding, dequantized
    values in the checkpoint's dtype, and the first non-zero magnitude as the stored scale."""
    w32 = w.astype(np.float32)
    inv = np.float32(1) / max(mean, np.float32(1e-5))
    t = np.clip(np.rint(w32 * inv), -1, 1)
    dequantized = (t / inv).astype(np.float16 if w.dtype == np.float16 else np.float32)
    magnitudes = np.abs(dequantized[np.abs(dequantized) > 1e-6]).astype(np.float32)
    scale = float(magnitudes[0]) if magnitudes.size else float(np.float32(1e-5))
    return t.astype(np.int8), scale


def test_stored_scale_is_one_over_the_float32_reciprocal() -> None:
    # mean|w| = 0.8125 exactly; the converter multiplies by fl32(1/m) = 1.2307693 and stores
    # fl32(1/1.2307693) = 0.81249994, one float32 step below m (main stored m itself)
    w = np.array([[0.2, -1.0, 0.05, 2.0]], np.float32)
    codes, s = quantize_weights(w)
    assert s == float(np.float32(0.81249994)) != 0.8125
    assert codes.tolist() == [[0, -1, 0, 1]]
    assert weight_report(w).scale == s


def test_codes_multiply_by_the_reciprocal_instead_of_dividing() -> None:
    # mean = 0.9486069 exactly; the first weight is one float32 step above m/2: w/m rounds to
    # 1, but fl32(w * fl32(1/m)) is 0.5, which rounds (half to even) to 0 in bitnet.cpp
    w = np.array([[0.4743034839630127, 1.4229103326797485]], np.float32)
    codes, _ = quantize_weights(w)
    assert codes.tolist() == [[0, 1]]
    assert weight_report(w).code_fractions == (0.0, 0.5, 0.5)


def test_float16_checkpoints_store_a_float16_scale() -> None:
    # the case: mean 0.01573579; the converter dequantizes in float16, so it stores
    # float16(1/fl32(1/m)) = 0.015731812 (main stored 0.01573579)
    w = np.repeat(np.array([0.0157470703125, 0.0157318115234375], np.float16), [2136, 6056])
    w = w.reshape(64, 128)
    assert np.float32(np.abs(w.astype(np.float64)).mean()) == np.float32(0.01573579)
    codes, s = quantize_weights(w)
    assert s == float(np.float32(0.015731812))
    assert (codes == 1).all()
    assert weight_report(w).scale == s


def test_all_zero_and_all_small_tensors_store_the_floor() -> None:
    # the Python converter finds no non-zero weight and writes 1e-5 (C llama-quantize: 0.0)
    for w in (np.zeros((2, 4), np.float32), np.full((2, 4), 4e-6, np.float32)):
        codes, s = quantize_weights(w)
        assert s == float(np.float32(1e-5))
        assert not codes.any()
    assert weight_report(w).scale == s  # (an all-zero reference has no accuracy to report)


def test_quantize_weights_rounds_half_to_even() -> None:
    # mean|w| = 1 exactly, so w*s_inv hits the ties 0.5 (-> 0) and 1.5 (-> 2, clipped to 1)
    codes, s = quantize_weights(np.array([[0.5, 1.5, -0.5, -1.5]], np.float32))
    assert s == 1.0
    assert codes.tolist() == [[0, 1, 0, -1]]


def test_float64_weights_are_rounded_to_float32_first() -> None:
    w = np.random.default_rng(3).standard_normal((8, 64))
    assert quantize_weights(w)[1] == quantize_weights(w.astype(np.float32))[1]
    assert np.array_equal(quantize_weights(w)[0], quantize_weights(w.astype(np.float32))[0])


def test_bfloat16_tensors_are_converted_to_float32() -> None:
    torch = pytest.importorskip("torch")
    w = torch.randn(16, 128, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(1))
    codes, s = quantize_weights(w)
    ref_codes, ref_s = quantize_weights(w.float().numpy())
    assert s == ref_s
    assert np.array_equal(codes, ref_codes)


def test_codes_and_scale_match_torch_running_the_converter_expression() -> None:
    """The converter's own arithmetic run by torch (weight_quant's product, round, clamp and
    division, then the first non-zero magnitude), fed our float64 mean: torch's float32 mean
    depends on its thread count and SIMD width, so that one input is taken from us."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    for dtype in (np.float32, np.float16):
        w = (rng.standard_normal((32, 256)) * 0.02).astype(dtype)
        mean = np.float32(np.abs(w.astype(np.float64)).mean())
        t = torch.from_numpy(w).float()
        s = 1 / torch.tensor(mean).clamp(min=1e-5)
        deq = ((t * s).round().clamp(-1, 1) / s).to(torch.from_numpy(w).dtype)
        codes, scale = quantize_weights(w)
        assert np.array_equal(codes, (deq.float() * s).round().numpy().astype(np.int8))
        assert scale == deq.float().abs().max().item()


# The absmean sum's documented precision (_formats._absmean_sum): relative to the exact sum.
SCALE_SUM_REL = 300 * 2.0**-53


def allowed_means(w: npt.NDArray[np.floating], total: float, total_rel: float) -> set[np.float32]:
    """float32(mean|w|) for a |w| sum *total* known to within *total_rel*: the one correctly
    rounded value, or both float32 neighbours when the mean lies within the absmean sum's
    documented error (plus *total_rel* and the division's rounding) of a rounding boundary."""
    mean = total / w.size
    slack = (SCALE_SUM_REL + total_rel + 2.0**-52) * mean
    return {np.float32(mean - slack), np.float32(mean + slack)}


def exact_means(w: npt.NDArray[np.floating]) -> set[np.float32]:
    w32 = w.astype(np.float32) if w.dtype == np.float64 else w  # the converter's first step
    return allowed_means(w, math.fsum(np.abs(w32, dtype=np.float64).ravel().tolist()), 2.0**-53)


def matches_converter(
    w: npt.NDArray[np.floating], got: tuple[npt.NDArray[np.int8], float], means: set[np.float32]
) -> bool:
    for mean in means:
        codes, scale = converter_rule(w, mean)
        if got[1] == scale and np.array_equal(got[0], codes):
            return True
    return False


def test_scale_is_the_rounded_exact_mean_on_the_reference_tensor(
    gaussian: npt.NDArray[np.float32], quantized: tuple[npt.NDArray[np.int8], float]
) -> None:
    ld = float(np.finfo(np.longdouble).eps)  # 2**-63 on x86, float64's 2**-52 elsewhere
    pieces = np.array_split(gaussian.ravel(), 64)
    total = sum(np.abs(p, dtype=np.longdouble).sum() for p in pieces)  # within 128 ld of exact
    means = allowed_means(gaussian, float(total), 128 * ld)
    assert len(means) == 1  # a single candidate: no rounding boundary anywhere near
    assert quantized[1] == converter_rule(gaussian[:1], means.pop())[1]


finite_f16 = st.floats(width=16, allow_nan=False, allow_infinity=False)
finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
moderate_f64 = st.floats(-1e30, 1e30)  # a mean beyond float32 raises instead


@given(
    st.sampled_from(
        [(np.float16, finite_f16), (np.float32, finite_f32), (np.float64, moderate_f64)]
    ),
    st.integers(1, 3),
    st.sampled_from([1, 3, 255, 256, 257, 512, 700]),  # whole 256-value rows and ragged tails
    st.data(),
)
@FAST
def test_quantizer_is_the_converter_on_the_correctly_rounded_mean(
    kind: tuple[type[np.floating], st.SearchStrategy[float]],
    rows: int,
    cols: int,
    data: st.DataObject,
) -> None:
    dtype, elements = kind
    w = data.draw(hnp.arrays(dtype, (rows, cols), elements=elements))
    got = quantize_weights(w)
    assert matches_converter(w, got, exact_means(w))
    with np.errstate(over="ignore"):  # float16 weights' squares may leave float16
        if np.any(w):
            assert weight_report(w).scale == got[1]


@pytest.mark.parametrize("n", [65536, 2 * 65536 + 3 * 256, 3 * 65536 + 17, 5 * 65536 - 256])
def test_scale_across_sum_chunks(n: int) -> None:
    """Several 65536-value chunks of the absmean sum, whole and ragged."""
    rng = np.random.default_rng(n)
    w = (rng.standard_normal((1, n)) * np.exp(rng.uniform(-8, 8, (1, n)))).astype(np.float32)
    got = quantize_weights(w)
    assert matches_converter(w, got, exact_means(w))
    assert weight_report(w).scale == got[1]


@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 40)),
                  elements=st.floats(-1e4, 1e4, width=32)))  # fmt: skip
@FAST
def test_quantize_activations_matches_the_formula(x: npt.NDArray[np.float32]) -> None:
    q, sx = quantize_activations(x)
    amax = np.maximum(np.abs(x).max(axis=1).astype(np.float64), 1e-5)
    scale = (127.0 / amax).astype(np.float32)
    expected = np.clip(np.rint(x * scale[:, None]), -128, 127).astype(np.int8)
    assert np.array_equal(sx, scale)
    assert np.array_equal(q, expected)


def test_quantize_activations_1d_and_zero_rows() -> None:
    q, sx = quantize_activations(np.array([0.5, -1.0, 0.25], np.float32))
    assert q.tolist() == [64, -127, 32]  # 63.5 rounds to even 64
    assert sx.shape == (1,)
    q, sx = quantize_activations(np.zeros((2, 3), np.float32))
    assert not q.any()
    assert sx.tolist() == [np.float32(127 / 1e-5)] * 2


def test_code_fractions_hand_example() -> None:
    assert code_fractions(np.array([[-1, 0, 0, 1, 1, 1, 0, -1]])) == (0.25, 0.375, 0.375)


# --- I2_S byte layout ------------------------------------------------------------------------


def reference_pack(codes: npt.NDArray[np.int8], scale: float, block: int) -> bytes:
    """quant-formats.md section 3 transcribed literally, one value at a time."""
    flat = codes.reshape(-1)
    group = block // 4
    out = bytearray(flat.size // 4)
    for n, c in enumerate(flat.tolist()):
        b, j = divmod(n, block)
        out[b * group + j % group] |= (c + 1) << (6 - 2 * (j // group))
    tail = bytearray(32)
    tail[:4] = np.float32(scale).tobytes()
    return bytes(out + tail)


def test_i2s_x86_hand_computed_block() -> None:
    # values 0..31 -> +1, 32..63 -> 0, 64..95 -> -1, 96..127 -> +1: each byte is 10 01 00 10
    codes = np.repeat(np.array([1, 0, -1, 1], np.int8), 32).reshape(1, 128)
    data = pack_i2s(codes, 0.5)
    assert data == bytes([0b10010010] * 32) + bytes.fromhex("0000003f") + bytes(28)


def test_i2s_x86_single_value_position() -> None:
    codes = np.zeros(128, np.int8)
    codes[33] = 1  # byte 33 % 32 = 1, shift 6 - 2 * (33 // 32) = 4
    data = pack_i2s(codes, 1.0)
    assert data[0] == 0x55 and data[1] == 0x65 and data[2:32] == bytes([0x55] * 30)


def test_i2s_arm_single_value_position() -> None:
    codes = np.zeros(64, np.int8)
    codes[17] = -1  # byte 17 % 16 = 1, shift 6 - 2 * (17 // 16) = 4, code 0
    data = pack_i2s(codes, 1.0, layout="arm")
    assert len(data) == 16 + 32
    assert data[1] == 0x45 and data[0] == 0x55


@given(st.sampled_from(["x86", "arm"]), st.integers(1, 4), st.data())
@FAST
def test_i2s_round_trip_and_reference_layout(layout: str, blocks: int, data: st.DataObject) -> None:
    block = I2S_BLOCK[layout]  # type: ignore[index]
    rows = data.draw(st.sampled_from([1, 2, 4]))
    codes = data.draw(codes_of(st.just((rows, blocks * block))))
    scale = data.draw(st.floats(2.0**-16, 1024.0, width=32))
    packed = pack_i2s(codes, scale, layout)  # type: ignore[arg-type]
    assert packed == reference_pack(codes, scale, block)
    out, s = unpack_i2s(packed, codes.shape, layout)  # type: ignore[arg-type]
    assert s == scale
    assert out.dtype == np.int8
    assert np.array_equal(out, codes)


# --- TL1 / TL2 -------------------------------------------------------------------------------


def test_tl1_hand_example_and_padding() -> None:
    assert encode_tl1(np.array([[1, 1, -1, 0]])).tolist() == [[0x81]]  # 3+1+4=8, -3+0+4=1
    assert encode_tl1(np.array([[1, 1]])).tolist() == [[0x84]]  # odd pair count: pad with 4


@given(codes_of(st.tuples(st.integers(1, 5), st.integers(1, 20).map(lambda h: 2 * h))))
@FAST
def test_tl1_round_trip(codes: npt.NDArray[np.int8]) -> None:
    packed = encode_tl1(codes)
    assert packed.dtype == np.uint8
    assert packed.shape == (codes.shape[0], math.ceil(codes.shape[1] / 4))
    assert np.array_equal(decode_tl1(packed, codes.shape), codes)


def test_tl2_all_triples_get_distinct_codes() -> None:
    triples = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1])).reshape(3, -1).T
    codes = triples.reshape(1, -1).astype(np.int8)  # K = 81, bk = 81
    packed = encode_tl2(codes, bk=81)
    assert packed.two_k == 0 and packed.three_k == 81
    pairs = set(zip(packed.magnitudes[0].tolist(), packed.signs[0].tolist(), strict=True))
    assert len(pairs) == 27
    assert packed.magnitudes.max() == 13
    assert np.array_equal(decode_tl2(packed), codes)


@given(st.integers(1, 4), st.sampled_from([3, 6, 12, TL2_DEFAULT_BK]), st.data())
@FAST
def test_tl2_round_trip(m: int, bk: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, 2 * bk + 8).filter(lambda k: (k % bk) % 2 == 0))
    codes = data.draw(codes_of(st.just((m, k))))
    packed = encode_tl2(codes, bk=bk)
    assert isinstance(packed, Tl2Packed)
    assert packed.three_k == (k // bk) * bk and packed.three_k + packed.two_k == k
    v = codes[:, : packed.three_k].reshape(m, -1, 3) @ np.array([9, 3, 1])
    assert np.array_equal(packed.magnitudes, np.abs(v))
    assert np.array_equal(packed.signs, v < 0)
    assert np.array_equal(decode_tl2(packed), codes)


# --- kernels: LUT sums are the integer dot product --------------------------------------------


@st.composite
def kernel_case(draw: st.DrawFn) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    m, rows = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    k = draw(st.sampled_from([2, 4, 8, 30, 96, 98, 130, 192, 256]))
    codes = draw(codes_of(st.just((m, k))))
    q = draw(hnp.arrays(np.int8, (rows, k)))
    return q, codes


@given(kernel_case())
@FAST
def test_kernel_sums_equal_integer_dot(case: tuple[npt.NDArray[np.int8], ...]) -> None:
    q, codes = case
    direct = q.astype(np.int64) @ codes.astype(np.int64).T
    assert np.array_equal(integer_dot(q, codes), direct)
    for fmt in FORMATS:
        acc = kernel_dot(q, codes, fmt)
        assert acc.dtype == np.int64
        assert np.array_equal(acc, direct), fmt


@given(kernel_case(), st.floats(2.0**-10, 16.0, width=32), st.data())
@FAST
def test_float_outputs_are_int_dot_over_act_scale_times_scale(
    case: tuple[npt.NDArray[np.int8], ...], s: float, data: st.DataObject
) -> None:
    q0, codes = case
    x = data.draw(hnp.arrays(np.float32, q0.shape, elements=st.floats(-100, 100, width=32)))
    x[:, 0] = 1.0  # no all-zero rows here; they have their own test
    for fmt in FORMATS:
        floor = 1e-5 if fmt == "i2_s" else 0.0
        amax = np.maximum(np.abs(x).max(axis=1).astype(np.float64), floor)
        act_scale = (127.0 / amax).astype(np.float32)
        q = np.clip(np.rint(x * act_scale[:, None]), -128, 127).astype(np.int8)
        int_dot = integer_dot(q, codes)
        expected = int_dot.astype(np.float32) / act_scale[:, None] * np.float32(s)
        assert np.array_equal(matmul(x, codes, s, fmt), expected), fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_zero_activation_row_is_reported_without_warnings(fmt: str) -> None:
    rng = np.random.default_rng(5)
    codes = rng.integers(-1, 2, (8, 96)).astype(np.int8)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    x[1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, zero_rows = matmul_report(x, codes, 0.5, fmt)
        y1 = matmul(np.zeros(96, np.float32), codes, 0.5, fmt)
    assert zero_rows.tolist() == [1]
    assert not y[1].any() and y[0].any() and y[2].any()
    assert y1.shape == (8,) and not y1.any()


def test_tiny_row_is_reported_only_where_the_lut_scale_overflows() -> None:
    codes = np.ones((2, 4), np.int8)
    x = np.array([[1e-38, 0, 0, 0]], np.float32)  # 127 / 1e-38 overflows float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert matmul_report(x, codes, 1.0, "tl1").zero_rows.tolist() == [0]
        assert matmul_report(x, codes, 1.0, "i2_s").zero_rows.tolist() == []


@given(st.sampled_from(["x86", "arm"]), st.integers(1, 6), st.integers(1, 700), st.data())
@FAST
def test_i2s_shapes_the_kernel_cannot_run_are_refused(
    layout: str, m: int, k: int, data: st.DataObject
) -> None:
    block = I2S_BLOCK[layout]  # type: ignore[index]
    codes = data.draw(codes_of(st.just((m, k))))
    if k % block == 0:
        packed = pack_i2s(codes, 0.5, layout)  # type: ignore[arg-type]
        assert np.array_equal(unpack_i2s(packed, (m, k), layout)[0], codes)  # type: ignore[arg-type]
    else:
        message = rf"I2_S \({layout}\) rows must hold whole {block}-value blocks: .*K={k}"
        with pytest.raises(QuantInputError, match=message):
            pack_i2s(codes, 0.5, layout)  # type: ignore[arg-type]
        with pytest.raises(QuantInputError, match=message):
            unpack_i2s(bytes(m * k // 4 + 32), (m, k), layout)  # type: ignore[arg-type]


def test_i2s_reads_the_zero_scale_llama_quantize_writes() -> None:
    data = pack_i2s(np.zeros((2, 128), np.int8), 0.0)
    codes, s = unpack_i2s(data, (2, 128))
    assert s == 0.0 and not codes.any()
