"""``opentelemetry-instrument python app.py``: the entry point loads the instrumentor, with no
code change and only ``OTEL_*`` variables, and the telemetry reaches a real OTLP receiver."""

from __future__ import annotations

import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from bitnet_obs.testing import OTLPReceiver
from tests._support.zero_code import missing_library, run_instrumented

APP = textwrap.dedent(
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    prompts = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    out = model.generate(prompts, attention_mask=mask, max_new_tokens=5, min_new_tokens=5)
    print("generated", tuple(out.shape))
    """
)


def test_entry_point_is_registered() -> None:
    points = {e.name: e.value for e in entry_points(group="opentelemetry_instrumentor")}
    ours = {name: value for name, value in points.items() if name.startswith("bitnet")}
    module = "bitnet_obs.instrumentation"
    assert ours == {
        "bitnet_obs_transformers": f"{module}.transformers:TransformersInstrumentor",
        "bitnet_obs_llama_cpp": f"{module}.llama_cpp:LlamaCppInstrumentor",
    }


@pytest.mark.slow
def test_plain_script_under_opentelemetry_instrument(tmp_path: Path) -> None:
    with OTLPReceiver() as rx:
        done = run_instrumented(APP, tmp_path, rx, "zero-code-app")
        assert done.returncode == 0, done.stderr[-4000:]
        assert "generated (2, 9)" in done.stdout
        assert rx.wait_for_spans(1, timeout=30)
        assert rx.wait_for_metric("bitnet.inference.tokens", timeout=30)

        (span,) = rx.spans("text_completion llama")
        assert span.attributes["gen_ai.provider.name"] == "transformers"
        assert span.attributes["gen_ai.usage.input_tokens"] == 6
        assert span.attributes["gen_ai.usage.output_tokens"] == 10
        assert span.resource["service.name"] == "zero-code-app"
        output = {"bitnet.token.type": "output", "gen_ai.request.model": "llama"}
        assert rx.latest_value("bitnet.inference.tokens", **output) == 10
        assert rx.latest_value("bitnet.inference.requests", **{"bitnet.outcome": "ok"}) == 1
        assert rx.metric_points("gen_ai.server.time_to_first_token")


def test_without_torch_the_error_names_the_extra() -> None:
    """torch made unimportable: instrument() says which extra to install (the
    opentelemetry-instrument loader takes a ModuleNotFoundError as "library absent: skip")."""
    said = missing_library(
        "torch", "bitnet_obs.instrumentation.transformers:TransformersInstrumentor"
    )
    assert "bitnet-obs[hf]" in said
