"""Quantization accuracy recorded as metrics (bitnet_obs.quant._record)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

import bitnet_obs
from bitnet_obs import _sampling, quant
from bitnet_obs.quant import QuantInputError, _record
from bitnet_obs.testing import TelemetryCapture, capture_telemetry, override_settings, reset


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    reset()  # a fresh budget and no tensor names yet
    with capture_telemetry() as capture:
        yield capture


@pytest.fixture
def always(cap: TelemetryCapture) -> Iterator[None]:
    """Measure every runtime sample, with an ample budget (after ``cap``'s reset)."""
    with override_settings(quant_sample_rate=1.0, quant_budget=1.0):
        yield


def _w(rows: int = 64, cols: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def test_weight_recording_per_format(cap: TelemetryCapture) -> None:
    w = _w()
    result = quant.record_weight_quantization("layers.0.q_proj", w)
    assert set(result) == {"i2_s", "tl1", "tl2"}
    expected = quant.weight_report(w, "i2_s")
    for fmt in ("i2_s", "tl1", "tl2"):
        attrs = {
            "bitnet.quant.format": fmt,
            "bitnet.quant.kind": "weight",
            "bitnet.quant.reference": "fp32",
            "bitnet.tensor": "layers.0.q_proj",
        }
        (acc,) = cap.points("bitnet.quant.accuracy", **attrs)
        assert acc.count == 1
        assert acc.sum == pytest.approx(expected.accuracy.accuracy_ratio)
        assert cap.points("bitnet.quant.sqnr", **attrs)[0].sum == pytest.approx(
            expected.accuracy.sqnr_db
        )
        assert cap.points("bitnet.quant.relative_error", **attrs)[0].count == 1
        assert cap.points("bitnet.quant.scale", **attrs)[0].value == pytest.approx(expected.scale)
        assert cap.value("bitnet.quant.operations", **attrs) == 1
        assert cap.points("bitnet.quant.duration", **attrs)[0].count == 1


def test_weight_format_that_cannot_tile_is_skipped(cap: TelemetryCapture) -> None:
    result = quant.record_weight_quantization("odd", _w(8, 33))  # odd K: no TL1 pairs
    assert "tl1" not in result and "i2_s" in result
    assert cap.value("bitnet.quant.samples_skipped", **{"bitnet.quant.skip_reason": "shape"}) >= 1


@pytest.mark.parametrize(
    ("w", "fragment"),
    [
        (np.array([[1.0, np.nan]], np.float32), "NaN"),
        (np.zeros((0, 4), np.float32), "empty"),
        (np.ones((4, 4), np.int32), "float"),
        (np.ones(8, np.float32), "(M, K)"),
    ],
)
def test_bad_weights_raise_directly(cap: TelemetryCapture, w: np.ndarray, fragment: str) -> None:
    with pytest.raises(QuantInputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        quant.record_weight_quantization("bad", w)


def test_unknown_format_raises_directly(cap: TelemetryCapture) -> None:
    with pytest.raises(QuantInputError, match="accepted"):
        quant.record_weight_quantization("w", _w(), formats=("q4_k",))


@pytest.mark.usefixtures("always")
def test_compare_outputs_fidelity_and_error(cap: TelemetryCapture) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 96)).astype(np.float32)
    w = _w()
    codes, scale = quant.quantize_weights(w)
    q, sx = quant.quantize_activations(x)
    reference = (q.astype(np.float64) / sx[:, None]) @ (codes.astype(np.float64) * scale).T
    kernel = quant.matmul(x, codes, scale, format="tl1")
    fidelity = quant.compare_outputs(
        "layers.0", reference, kernel, format="tl1", reference_kind="quantized"
    )
    assert fidelity is not None and fidelity.cosine > 0.99999
    error = quant.compare_outputs("layers.0", x @ w.T, kernel, format="tl1")
    assert error is not None and 0.8 < error.cosine < 0.95
    assert cap.value("bitnet.quant.accuracy", **{"bitnet.quant.reference": "quantized"}) == 1
    assert cap.value("bitnet.quant.accuracy", **{"bitnet.quant.reference": "fp32"}) == 1


@pytest.mark.usefixtures("always")
def test_activation_and_logits(cap: TelemetryCapture) -> None:
    x = np.random.default_rng(2).standard_normal((16, 256)).astype(np.float32)
    acc = quant.record_activation_quantization("layers.0.input", x)
    assert acc is not None and acc.sqnr_db > 35
    logits = np.random.default_rng(3).standard_normal((8, 50))
    agreement = quant.compare_outputs("lm_head", logits, logits + 1e-3, kind="logits")
    assert agreement is not None and agreement.accuracy_ratio == 1.0
    (point,) = cap.points("bitnet.quant.accuracy", **{"bitnet.quant.kind": "logits"})
    assert point.sum == 1.0


def test_sampling_rate_zero_skips_and_counts(cap: TelemetryCapture) -> None:
    x = np.ones((2, 8), np.float32)
    with override_settings(quant_sample_rate=0.0):
        assert quant.compare_outputs("t", x, x) is None
    assert (
        cap.value("bitnet.quant.samples_skipped", **{"bitnet.quant.skip_reason": "sampling"}) == 1
    )


def test_budget_is_enforced() -> None:
    clock = [100.0]
    budget = _sampling.Budget(clock=lambda: clock[0])
    fraction = 0.01
    assert budget.admit(1.0, fraction) is None
    budget.spend(1.0)  # a huge sample: far over the 0.6 s burst allowance
    assert budget.admit(1.0, fraction) == "budget"
    clock[0] += 30.0  # credit accrues at 1% of wall time: 0.3 s, still in debt
    assert budget.admit(1.0, fraction) == "budget"
    clock[0] += 100.0
    assert budget.admit(1.0, fraction) is None
    # over a long run, admitted time stays within the fraction (plus the burst cap)
    spent, started = 0.0, clock[0]
    for _ in range(10_000):
        clock[0] += 0.01
        if budget.admit(1.0, fraction) is None:
            budget.spend(0.005)
            spent += 0.005
    assert spent / (clock[0] - started) <= fraction + 0.6 / (clock[0] - started) + 1e-9


@pytest.mark.usefixtures("always")
def test_inside_a_monitored_call_bad_input_is_a_counted_skip(cap: TelemetryCapture) -> None:
    @bitnet_obs.monitored_inference(model="m", quant_format="tl2")
    def infer() -> int:
        inf = bitnet_obs.current_inference()
        inf.record_quantization("a", np.ones((2, 3)), np.ones((3, 2)))  # shape mismatch
        inf.record_quantization("b", np.array([np.inf]), np.array([1.0]))  # Inf
        inf.record_quantization("c", "not a tensor", None)
        quant.record_weight_quantization("d", np.ones(3, np.int8))  # int weights
        inf.record_quantization("ok", np.ones((2, 4)), np.ones((2, 4)) * 1.0001)
        return 1

    assert infer() == 1
    skipped = cap.value("bitnet.quant.samples_skipped", **{"bitnet.quant.skip_reason": "bad_input"})
    assert skipped == 4
    (point,) = cap.points("bitnet.quant.accuracy", **{"bitnet.tensor": "ok"})
    assert point.attributes["bitnet.quant.format"] == "tl2"
    assert point.attributes["bitnet.quant.reference"] == "quantized"
    assert cap.value("bitnet.inference.requests", **{"bitnet.outcome": "ok"}) == 1


@pytest.mark.usefixtures("always")
def test_large_tensors_are_row_sampled(cap: TelemetryCapture) -> None:
    big = np.random.default_rng(4).standard_normal((2048, 1024)).astype(np.float32)
    acc = quant.compare_outputs("big", big, big * 1.01)
    assert acc is not None and acc.n < big.size
    (point,) = cap.points("bitnet.quant.accuracy", **{"bitnet.tensor": "big"})
    assert point.attributes["bitnet.quant.row_sample"] is True


def test_tensor_name_cardinality_is_bounded(cap: TelemetryCapture) -> None:
    limit = _record.MAX_TENSOR_NAMES
    w = _w(4, 6)
    for i in range(limit + 3):
        quant.record_weight_quantization(f"t{i}", w, formats=("i2_s",))
    names = {p.attributes["bitnet.tensor"] for p in cap.points("bitnet.quant.accuracy")}
    assert names == {f"t{i}" for i in range(limit)} | {"_other"}


def test_callable_references_run_only_for_taken_samples(cap: TelemetryCapture) -> None:
    calls: list[int] = []

    def reference() -> np.ndarray:
        calls.append(1)
        return np.ones((2, 4))

    with override_settings(quant_sample_rate=0.0):
        assert quant.compare_outputs("lazy", reference, np.ones((2, 4))) is None
    assert calls == []
    with override_settings(quant_sample_rate=1.0, quant_budget=1.0):
        acc = quant.compare_outputs("lazy", reference, lambda: np.ones((2, 4)))
    assert acc is not None and acc.cosine == pytest.approx(1.0)
    assert calls == [1]


def test_fidelity_samples_count_avx2_kernel_overflows(cap: TelemetryCapture, always: None) -> None:
    codes = np.ones((4, 4096), np.int8)
    x = np.ones((2, 4096), np.float32)
    x[1, ::2] = -1.0  # the second token's lanes cancel: no overflow there
    exact = quant.matmul(x, codes, 0.5)
    wrapped = quant.matmul(x, codes, 0.5, kernel="avx2")
    quant.compare_outputs(
        "layers.0.mlp.down_proj", exact, wrapped, reference_kind="quantized",
        activations=lambda: x, codes=codes,
    )  # fmt: skip
    attrs = {"bitnet.quant.format": "i2_s", "bitnet.tensor": "layers.0.mlp.down_proj"}
    assert cap.value("bitnet.quant.kernel_overflows", **attrs) == 4
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((3, 4096)).astype(np.float32)
    codes = rng.integers(-1, 2, (8, 4096)).astype(np.int8)
    y = quant.matmul(gauss, codes, 0.5)
    quant.compare_outputs("layers.1.q", y, y, activations=gauss, codes=codes)
    attrs["bitnet.tensor"] = "layers.1.q"
    assert cap.value("bitnet.quant.kernel_overflows", **attrs) == 0  # sampled, none wrapped
    # TL formats and shapes the x86 kernel cannot run are not counted
    quant.compare_outputs("tl", y, y, format="tl2", activations=gauss, codes=codes)
    quant.compare_outputs("k96", y[:, :2], y[:, :2], activations=gauss[:, :96],
                          codes=codes[:2, :96])  # fmt: skip
    assert not cap.points("bitnet.quant.kernel_overflows", **{"bitnet.tensor": "tl"})
    assert not cap.points("bitnet.quant.kernel_overflows", **{"bitnet.tensor": "k96"})


def test_one_draw_for_a_group_of_samples(cap: TelemetryCapture) -> None:
    """admit_runtime_sample() draws once; the group's samples, admitted, are not drawn again."""
    ref = _w(8, 16)
    with override_settings(quant_sample_rate=0.0, quant_budget=1.0):
        assert not quant.admit_runtime_sample()
        assert quant.admit_runtime_sample(rate=1.0)  # the caller's own rate
        assert quant.compare_outputs("x", ref, ref) is None  # drawn at the setting: 0
        assert quant.compare_outputs("x", ref, ref, admitted=True) is not None
    skipped = {"bitnet.quant.skip_reason": "sampling", "bitnet.quant.kind": "output"}
    assert cap.value("bitnet.quant.samples_skipped", **skipped) == 2
    assert cap.value("bitnet.quant.operations", **{"bitnet.tensor": "x"}) == 1


def test_an_admitted_sample_still_honours_the_budget(cap: TelemetryCapture) -> None:
    ref = _w(8, 16)
    with override_settings(quant_sample_rate=1.0, quant_budget=1e-9):
        quant.compare_outputs("x", ref, lambda: time.sleep(0.06) or ref, admitted=True)
        assert not quant.admit_runtime_sample()  # the credit is spent
        assert quant.compare_outputs("x", ref, ref, admitted=True) is None
    budget = {"bitnet.quant.skip_reason": "budget", "bitnet.quant.kind": "output"}
    assert cap.value("bitnet.quant.samples_skipped", **budget) == 2
