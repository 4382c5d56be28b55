"""Bad inputs: every case raises QuantInputError naming the problem and what is accepted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from bitnet_obs.quant import (
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
    logits_agreement,
    matmul,
    pack_i2s,
    quantize_activations,
    quantize_weights,
    unpack_i2s,
    weight_report,
)

W = np.ones((4, 6), np.float32)
CODES = np.ones((4, 6), np.int8)
FLOATS = "accepted: float16/float32/float64"


class DLPackOnly:
    """What a torch CPU tensor offers without __array__ (no torch import needed)."""

    def __init__(self, a: npt.NDArray[Any]) -> None:
        self._a = a

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._a.__dlpack_device__()


class ArrayOnly:
    def __init__(self, a: npt.NDArray[Any]) -> None:
        self._a = a

    def __array__(self, dtype: Any = None, copy: Any = None) -> npt.NDArray[Any]:
        return self._a


class BrokenDLPack:
    def __dlpack__(self, **kwargs: Any) -> Any:
        raise BufferError("Can't export tensors that require gradient, use tensor.detach()")

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)


def with_nan_and_inf() -> npt.NDArray[np.float32]:
    w: npt.NDArray[np.float32] = W.copy()
    w[1, 2] = np.nan
    w[2, 0] = np.nan
    w[3, 5] = np.inf
    return w


def test_error_class_is_a_value_error() -> None:
    assert issubclass(QuantInputError, ValueError)


def test_array_protocols_are_accepted_without_torch() -> None:
    codes, s = quantize_weights(DLPackOnly(W))
    assert s == 1.0
    assert codes.tolist() == [[1] * 6] * 4
    assert quantize_weights(ArrayOnly(W))[1] == 1.0
    assert accuracy(DLPackOnly(W), ArrayOnly(W)).sqnr_db == float("inf")


CASES: list[tuple[str, Callable[[], object], str]] = [
    # non-finite values: how many, where the first is
    ("nan", lambda: quantize_weights(with_nan_and_inf()),
     r"w contains 2 NaN and 1 Inf values \(first at index \(1, 2\)\); accepted: finite"),
    ("nan-ref", lambda: accuracy(with_nan_and_inf(), W), r"reference contains 2 NaN and 1 Inf"),
    ("inf-cand", lambda: accuracy(W, with_nan_and_inf()), r"candidate contains 2 NaN"),
    ("nan-act", lambda: quantize_activations(with_nan_and_inf()), r"x contains 2 NaN"),
    ("nan-mm", lambda: matmul(with_nan_and_inf(), CODES, 1.0), r"x contains .*accepted: finite"),
    ("nan-wr", lambda: weight_report(with_nan_and_inf()), r"w contains 2 NaN and 1 Inf"),
    ("nan-logits", lambda: logits_agreement(with_nan_and_inf(), W), r"reference_logits contains"),
    # beyond float32, where bitnet.cpp keeps scales and activations
    ("w-huge", lambda: quantize_weights(np.full((2, 2), 1e300)),
     r"w has \|values\| beyond float32 \(up to 1e\+300\); accepted: \|w\| <= 3.4e38"),
    ("w-overflow", lambda: weight_report(np.full((2, 2), 1e308)),
     r"w has \|values\| beyond float32 \(up to 1e\+308\)"),
    ("x-huge", lambda: matmul(np.full(6, 1e39), CODES, 1.0),
     r"x has \|values\| up to 1e\+39, beyond float32; accepted: \|x\| <= 3.4e38"),
    # empty
    ("empty", lambda: quantize_weights(np.zeros((0, 4), np.float32)),
     r"w is empty \(shape \(0, 4\)\); accepted: at least one element"),
    ("empty-acc", lambda: accuracy(np.zeros(0), np.zeros(0)), r"reference is empty"),
    # dtypes
    ("int", lambda: quantize_weights(np.ones((2, 2), np.int32)), rf"w has dtype int32; {FLOATS}"),
    ("bool", lambda: quantize_activations(np.ones(3, bool)), rf"x has dtype bool; {FLOATS}"),
    ("complex", lambda: accuracy(np.ones(3, complex), np.ones(3)), rf"complex128; {FLOATS}"),
    ("object", lambda: accuracy(np.array([None]), np.ones(1)), rf"dtype object; {FLOATS}"),
    ("codes-float", lambda: encode_tl1(W), r"codes has dtype float32; accepted: integer"),
    ("q-float", lambda: kernel_dot(W, CODES), r"q has dtype float32; accepted: int8"),
    # ranks
    ("rank", lambda: quantize_weights(np.ones((2, 2, 2), np.float32)),
     r"w: got 3-D shape \(2, 2, 2\); accepted: 1-D or 2-D"),
    ("rank-wr", lambda: weight_report(np.ones(8, np.float32)), r"accepted: 2-D weights"),
    ("rank-codes", lambda: encode_tl2(np.ones(6, np.int8)), r"accepted: 2-D \(M, K\)"),
    # shapes
    ("shape", lambda: accuracy(np.ones((2, 3)), np.ones((3, 2))),
     r"reference has shape \(2, 3\) but candidate has shape \(3, 2\); accepted: identical"),
    ("shape-mm", lambda: matmul(np.ones((2, 5), np.float32), CODES, 1.0),
     r"x has K=5 .* codes have shape \(4, 6\); accepted: x of shape \(rows, 6\) or \(6,\)"),
    ("shape-dot", lambda: integer_dot(np.ones(5, np.int8), CODES), r"q has K=5"),
    ("shape-logits", lambda: logits_agreement(np.ones((2, 3)), np.ones((2, 4))),
     r"accepted: identical shapes"),
    # format names, layouts and tiling
    ("format", lambda: matmul(W, CODES, 1.0, "q4_0"),
     r"unknown format 'q4_0'; accepted: i2_s, tl1, tl2"),
    ("format-wr", lambda: weight_report(W, "tl3"), r"accepted: i2_s, tl1, tl2"),
    ("layout", lambda: pack_i2s(np.ones(128, np.int8), 1.0, "riscv"),  # type: ignore[arg-type]
     r"unknown I2_S layout 'riscv'; accepted: x86, arm"),
    ("tl1-odd", lambda: encode_tl1(np.ones((2, 5), np.int8)),
     r"TL1 cannot tile K=5.*accepted: an even K"),
    ("tl1-mm", lambda: matmul(np.ones(5, np.float32), np.ones((2, 5), np.int8), 1.0, "tl1"),
     r"TL1 cannot tile K=5"),
    ("tl1-wr", lambda: weight_report(np.ones((2, 7), np.float32), "tl1"), r"TL1 cannot tile"),
    ("tl2-split", lambda: encode_tl2(np.ones((2, 97), np.int8)),
     r"TL2 cannot tile K=97 with bk=96: the remainder two_k=1 after three_k=96 must be even"),
    ("tl2-bk", lambda: encode_tl2(np.ones((2, 12), np.int8), bk=10),
     r"TL2 bk=10; accepted: a positive multiple of 3"),
    ("tl2-mm", lambda: kernel_dot(np.ones(99, np.int8), np.ones((1, 99), np.int8), "tl2"),
     r"TL2 cannot tile K=99"),
    # codes
    ("codes-range", lambda: code_fractions(np.array([[0, 1, 2, -3]])),
     r"codes holds 2 values outside \{-1, 0, 1\} \(first 2 at index \(0, 2\)\); accepted: ternary"),
    ("codes-bool", lambda: pack_i2s(np.ones(128, bool), 1.0), r"dtype bool; accepted: integer"),
    # I2_S sizes and corrupt data
    ("i2s-size", lambda: pack_i2s(np.ones(100, np.int8), 1.0),
     r"I2_S \(x86\) rows must hold whole 128-value blocks: shape \(100,\) has K=100 .*"
     r"accepted: K divisible by 128"),
    # the x86 kernel reads K/128 blocks per row: M*K divisible by 128 is not enough
    ("i2s-4x64", lambda: pack_i2s(np.ones((4, 64), np.int8), 1.0),
     r"shape \(4, 64\) has K=64 \(64 left over per row; bitnet.cpp's kernel reads K/128"),
    ("i2s-2x192", lambda: pack_i2s(np.ones((2, 192), np.int8), 1.0), r"K=192 \(64 left over"),
    ("i2s-4x320", lambda: pack_i2s(np.ones((4, 320), np.int8), 1.0), r"K=320 \(64 left over"),
    ("i2s-unpack-4x64", lambda: unpack_i2s(bytes(96), (4, 64)), r"shape \(4, 64\) has K=64"),
    ("i2s-arm", lambda: pack_i2s(np.ones(96, np.int8), 1.0, "arm"), r"divisible by 64"),
    ("i2s-arm-2x96", lambda: pack_i2s(np.ones((2, 96), np.int8), 1.0, "arm"),
     r"I2_S \(arm\) rows must hold whole 64-value blocks: shape \(2, 96\) has K=96"),
    ("i2s-short", lambda: unpack_i2s(bytes(63), (1, 128)),
     r"I2_S data for shape \(1, 128\): expected 64 bytes \(32 code bytes \+ 32-byte scale "
     r"tail\), got 63 \(truncated or corrupt\)"),
    ("i2s-long", lambda: unpack_i2s(bytes(65), (128,)), r"expected 64 bytes .*got 65"),
    ("i2s-code3", lambda: unpack_i2s(bytes([0x55] * 5 + [0x57]) + bytes(26) + b"\0\0\x80?" +
                                     bytes(28), (128,)),
     r"corrupt I2_S data: byte 5 holds the unused 2-bit value 3 at shift 0"),
    ("i2s-scale", lambda: unpack_i2s(bytes([0x55] * 32) + b"\0\0\xc0\x7f" + bytes(28), (128,)),
     r"corrupt I2_S tail: scale is nan; accepted: a finite float32 >= 0"),
    ("i2s-neg-scale", lambda: unpack_i2s(bytes([0x55] * 32) + b"\0\0\x80\xbf" + bytes(28), (128,)),
     r"corrupt I2_S tail: scale is -1.0"),
    ("i2s-bytes", lambda: unpack_i2s("abc", (128,)), r"accepted: bytes, bytearray"),
    ("i2s-shape", lambda: unpack_i2s(bytes(64), (0, 128)), r"accepted: a non-empty tuple"),
    # scales
    ("scale-neg", lambda: matmul(W, CODES, -1.0), r"scale is -1.0; accepted: a finite float >= 0"),
    ("scale-nan", lambda: pack_i2s(np.ones(128, np.int8), float("nan")), r"scale is nan"),
    ("scale-str", lambda: matmul(W, CODES, "big"), r"scale: got str; accepted: a finite"),
    # TL data
    ("tl1-shape", lambda: decode_tl1(np.zeros((4, 1), np.uint8), (4, 6)),
     r"TL1 data has shape \(4, 1\); expected \(4, 2\) for 4 rows of K=6"),
    ("tl1-corrupt", lambda: decode_tl1(np.array([[0x9F]], np.uint8), (1, 4)),
     r"corrupt TL1 data: pair index 9 at row 0, pair 0; accepted: 0..8"),
    ("tl2-type", lambda: decode_tl2(np.zeros(3)), r"accepted: Tl2Packed from encode_tl2"),  # type: ignore[arg-type]
    ("tl2-corrupt", lambda: decode_tl2(Tl2Packed(np.full((1, 1), 14, np.uint8),
                                                 np.zeros((1, 1), np.uint8),
                                                 np.zeros((1, 0), np.uint8), (1, 3), 3, 0, 3)),
     r"corrupt Tl2Packed.magnitudes: value 14; accepted: 0..13"),
    # not an array at all
    ("type", lambda: quantize_weights("weights"), r"got str; accepted: a numpy array"),
    ("type-none", lambda: accuracy(None, W), r"reference: got NoneType; accepted: a numpy array"),
    ("dlpack", lambda: quantize_weights(BrokenDLPack()),
     r"could not read BrokenDLPack through DLPack \(.*detach.*\); accepted: CPU tensors"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_with_a_helpful_message(call: Callable[[], object], message: str) -> None:
    with pytest.raises(QuantInputError, match=message) as info:
        call()
    assert "accepted" in str(info.value) or "expected" in str(info.value)


def test_format_names_are_case_insensitive() -> None:
    assert weight_report(W, "TL1").format == "tl1"
    assert matmul(W, CODES, 1.0, "I2_S").shape == (4, 4)
