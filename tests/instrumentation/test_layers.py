"""BitNet layer fidelity and weight accuracy recorded by the transformers instrumentor."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BitNetConfig, BitNetForCausalLM
from transformers.integrations.bitnet import AutoBitLinear, BitLinear, unpack_weights

from bitnet_obs import quant
from bitnet_obs.instrumentation._layers import (
    MAX_CHECK_WEIGHTS,
    ROWS_PER_CHECK,
    capture,
    output_channels,
    unpack_packed,
)
from bitnet_obs.testing import TelemetryCapture, tiny_bitnet_model, tiny_llama_model
from tests.instrumentation.conftest import Instrument

PROMPT = torch.tensor([[5, 6, 7, 8, 9, 10]])


def bitnet_layers(model: Any) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (BitLinear, AutoBitLinear))]


def per_tensor(cap: TelemetryCapture, metric: str, **attrs: Any) -> dict[str, tuple[int, float]]:
    """{tensor: (samples, mean)} of one quant histogram."""
    out = {}
    for point in cap.points(metric, **attrs):
        assert point.count is not None and point.sum is not None
        out[point.attributes["bitnet.tensor"]] = (point.count, point.sum / point.count)
    return out


def fidelity(cap: TelemetryCapture, reference: str = "quantized") -> dict[str, tuple[int, float]]:
    attrs = {"bitnet.quant.reference": reference, "bitnet.quant.kind": "output"}
    return per_tensor(cap, "bitnet.quant.sqnr", **attrs)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), k=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_unpacking_matches_transformers(rows: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    fields = rng.integers(0, 3, (4, rows, k), dtype=np.uint8)
    packed = fields[0] | fields[1] << 2 | fields[2] << 4 | fields[3] << 6
    theirs = unpack_weights(torch.from_numpy(packed), dtype=torch.float32).numpy()
    every = np.arange(4 * rows)
    some = np.sort(rng.choice(every, size=int(rng.integers(1, 4 * rows + 1)), replace=False))
    for channels in (every, some):
        ours = unpack_packed(packed[channels % rows], channels, rows)
        np.testing.assert_array_equal(ours, theirs[channels].astype(np.int8))


def test_large_layers_check_a_stripe_of_output_channels() -> None:
    k = 2560
    for _ in range(20):
        channels = output_channels(6912, k)
        assert len(channels) == MAX_CHECK_WEIGHTS // k
        assert len(set(channels.tolist())) == len(channels)
        assert channels.min() >= 0 and channels.max() < 6912
        assert channels.min() < 6912 / len(channels)  # evenly spread from the start
    assert output_channels(128, 64).tolist() == list(range(128))  # small: every channel


@pytest.mark.parametrize("linear", ["bitlinear", "autobitlinear-offline", "autobitlinear-online"])
@pytest.mark.parametrize("rms_norm", [False, True], ids=["plain", "rms_norm"])
def test_every_layer_agrees_with_the_i2s_emulation(
    linear: str, rms_norm: bool, instrument: Instrument, cap: TelemetryCapture
) -> None:
    model = tiny_bitnet_model(linear=linear, use_rms_norm=rms_norm)
    names = bitnet_layers(model)
    assert len(names) == 14  # 2 decoder layers x (4 attention + 3 MLP projections)
    instrumentor = instrument(fidelity_sample_rate=1.0, fidelity_layers=None)
    model.generate(PROMPT, max_new_tokens=3)
    assert instrumentor.flush(60)

    checked = fidelity(cap)
    assert sorted(checked) == sorted(names)
    for count, sqnr in checked.values():
        assert count == 1  # one forward pass per sampled call
        assert sqnr > 100.0  # float32 rounding apart, the same numbers
    accuracy = per_tensor(cap, "bitnet.quant.accuracy", **{"bitnet.quant.reference": "quantized"})
    assert all(value > 0.99999 for _, value in accuracy.values())

    float_error = fidelity(cap, "fp32")
    weights = per_tensor(cap, "bitnet.quant.accuracy", **{"bitnet.quant.kind": "weight"})
    if linear == "autobitlinear-online":  # master weights: quantization error is measurable
        assert sorted(float_error) == sorted(names)
        assert all(sqnr < 40.0 for _, sqnr in float_error.values())  # ternary loses a lot
        assert sorted(weights) == sorted(names)
    else:
        assert float_error == {}
        assert weights == {}


def test_a_wrong_kernel_shows_in_its_layer(instrument: Instrument, cap: TelemetryCapture) -> None:
    """One layer quantizes activations to 4 bits instead of 8: only its fidelity drops."""
    model = tiny_bitnet_model(linear="bitlinear")
    broken = model.model.layers[1].mlp.down_proj

    def four_bits(x: torch.Tensor, num_bits: int = 8) -> Any:
        return BitLinear.activation_quant(broken, x, num_bits=4)

    broken.activation_quant = four_bits
    instrumentor = instrument(fidelity_sample_rate=1.0, fidelity_layers=None)
    model.generate(PROMPT, max_new_tokens=2)
    assert instrumentor.flush(60)
    checked = fidelity(cap)
    assert checked.pop("model.layers.1.mlp.down_proj")[1] < 40.0
    assert all(sqnr > 100.0 for _, sqnr in checked.values())


def test_one_layer_per_sampled_call_in_turn(instrument: Instrument, cap: TelemetryCapture) -> None:
    model = tiny_bitnet_model()
    names = bitnet_layers(model)
    instrumentor = instrument(fidelity_sample_rate=1.0)  # fidelity_layers=1 by default
    for _ in range(len(names)):
        model.generate(PROMPT, max_new_tokens=2)
        assert instrumentor.flush(60)
    checked = fidelity(cap)
    assert sorted(checked) == sorted(names)
    assert {count for count, _ in checked.values()} == {1}


def test_a_check_takes_a_few_evenly_spaced_tokens() -> None:
    model = tiny_bitnet_model(use_rms_norm=True)
    layer = model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 3 * ROWS_PER_CHECK, 64)
    with torch.no_grad():
        y = layer(x)
        xs, ys = capture(layer, (x,), y)
        rows = torch.linspace(0, 6 * ROWS_PER_CHECK - 1, ROWS_PER_CHECK).round().long()
        expected_x = layer.rms_norm(x.reshape(-1, 64)[rows])  # what the layer quantizes
    assert xs.shape == (ROWS_PER_CHECK, 64) and ys.shape == (ROWS_PER_CHECK, 64)
    np.testing.assert_array_equal(xs, expected_x.numpy())
    np.testing.assert_array_equal(ys, y.reshape(-1, 64)[rows].numpy())
    short = x[:, :3]
    with torch.no_grad():
        xs, _ = capture(layer, (short,), layer(short))
    assert xs.shape == (6, 64)


def test_unsampled_calls_attach_nothing(instrument: Instrument, cap: TelemetryCapture) -> None:
    model = tiny_bitnet_model()
    layers = [model.get_submodule(name) for name in bitnet_layers(model)]
    hooks_seen: list[int] = []  # hooks on the BitNet layers during each forward pass
    model.register_forward_pre_hook(
        lambda *_: hooks_seen.append(sum(len(m._forward_hooks) for m in layers))
    )
    instrument(fidelity_sample_rate=0.0)
    for _ in range(3):
        model.generate(PROMPT, max_new_tokens=2)
    assert len(hooks_seen) == 6 and set(hooks_seen) == {0}
    assert fidelity(cap) == {}
    skipped = {"bitnet.quant.kind": "output", "bitnet.quant.skip_reason": "sampling"}
    assert cap.value("bitnet.quant.samples_skipped", **skipped) == 3  # one per call


def test_llama_gets_request_metrics_only(instrument: Instrument, cap: TelemetryCapture) -> None:
    model = tiny_llama_model()
    instrumentor = instrument(fidelity_sample_rate=1.0, fidelity_layers=None)
    model.generate(PROMPT, max_new_tokens=3, min_new_tokens=3)
    assert instrumentor.flush(60)
    assert cap.value("bitnet.inference.tokens", **{"bitnet.token.type": "output"}) == 3
    assert cap.points("bitnet.quant.accuracy") == []
    assert cap.points("bitnet.quant.samples_skipped") == []


def test_weight_accuracy_once_per_model(instrument: Instrument, cap: TelemetryCapture) -> None:
    model = tiny_bitnet_model(linear="autobitlinear-online")
    instrumentor = instrument()
    for _ in range(3):
        model.generate(PROMPT, max_new_tokens=2)
    assert instrumentor.flush(60)
    weights = per_tensor(cap, "bitnet.quant.accuracy", **{"bitnet.quant.kind": "weight"})
    assert sorted(weights) == sorted(bitnet_layers(model))
    for name, (count, value) in weights.items():
        assert count == 1
        w = model.get_submodule(name).weight.detach().numpy()
        assert value == pytest.approx(quant.weight_report(w, "i2_s").accuracy.accuracy_ratio)


def test_float_bitnet_checkpoint_gets_weight_accuracy(
    instrument: Instrument, cap: TelemetryCapture
) -> None:
    """A BitNet model loaded from its float (master) weights has plain linear layers: they are
    what a converter makes ternary, so their accuracy is reported (not the LM head's)."""
    torch.manual_seed(0)
    config = BitNetConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = BitNetForCausalLM(config)
    model.train(False)
    instrumentor = instrument(fidelity_sample_rate=1.0)
    model.generate(PROMPT, max_new_tokens=2)
    assert instrumentor.flush(60)
    weights = per_tensor(cap, "bitnet.quant.accuracy", **{"bitnet.quant.kind": "weight"})
    assert len(weights) == 7 and "lm_head" not in weights
    assert fidelity(cap) == {}  # no ternary layer runs: nothing to check
    (span,) = cap.spans()
    assert span.attributes is not None and span.attributes["bitnet.quant.format"] == "fp32"


def test_weight_accuracy_can_be_turned_off(instrument: Instrument, cap: TelemetryCapture) -> None:
    model = tiny_bitnet_model(linear="autobitlinear-online")
    instrumentor = instrument(weight_accuracy=False, layer_fidelity=False)
    model.generate(PROMPT, max_new_tokens=2)
    assert instrumentor.flush(60)
    assert cap.points("bitnet.quant.accuracy") == []


def test_checks_count_avx2_kernel_overflows(instrument: Instrument, cap: TelemetryCapture) -> None:
    """With K a multiple of 128 (bitnet.cpp's x86 I2_S block), each check also counts the
    outputs where the AVX2 kernel would wrap on these activations: counted, none here."""
    model = tiny_bitnet_model(hidden_size=128, intermediate_size=256)
    instrumentor = instrument(fidelity_sample_rate=1.0, fidelity_layers=None)
    model.generate(PROMPT, max_new_tokens=2)
    assert instrumentor.flush(60)
    counted = {p.attributes["bitnet.tensor"]: p.value for p in cap.points(
        "bitnet.quant.kernel_overflows")}  # fmt: skip
    assert sorted(counted) == sorted(bitnet_layers(model))
    assert set(counted.values()) == {0}
