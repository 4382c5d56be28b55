"""TransformersInstrumentor on real transformers models (tiny, random, built from configs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import torch
from opentelemetry import trace
from transformers import (
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    TextIteratorStreamer,
    pipeline,
)
from transformers.generation.streamers import TextStreamer

import bitnet_obs
from bitnet_obs.instrumentation.transformers import TransformersInstrumentor
from bitnet_obs.testing import (
    TelemetryCapture,
    tiny_bitnet_model,
    tiny_llama_model,
    tiny_tokenizer,
)
from tests._support.conventions import wrong_types
from tests._support.zero_code import assert_refused
from tests.instrumentation.conftest import Instrument

MODELS = {"bitnet": tiny_bitnet_model, "llama": tiny_llama_model}
# Three prompts of different lengths, left-padded as batched generation needs.
PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22]]


def batch(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = PROMPTS[:rows]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def tokens(cap: TelemetryCapture, kind: str) -> float:
    return cap.value("bitnet.inference.tokens", **{"bitnet.token.type": kind})


def generated(sequences: torch.Tensor, prompt_len: int, eos: int) -> list[list[int]]:
    """Each row's new tokens through its first EOS, by plain iteration (the expected value)."""
    rows = []
    for row in sequences[:, prompt_len:].tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def early_eos(model: Any, ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> int:
    """A token id that the first row emits after a few steps and some other row never does, so
    with it as EOS rows stop at different steps (same seed as the runs that use it)."""
    torch.manual_seed(2)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=10, **kwargs)
    rows = out[:, ids.shape[1] :].tolist()
    for token in rows[0][1:6]:
        if token not in rows[0][:1] and (len(rows) == 1 or any(token not in r for r in rows[1:])):
            return int(token)
    pytest.skip("no suitable early EOS token in this random model's output")


# ----------------------------------------------------------------- install / uninstall


def test_uninstrument_restores_generate_and_leaves_no_hooks(instrument: Instrument) -> None:
    original = GenerationMixin.__dict__["generate"]
    original_init = TextStreamer.__dict__["__init__"]
    model = tiny_bitnet_model()
    instrumentor = instrument(fidelity_sample_rate=1.0, fidelity_layers=None)
    instrumentor.instrument()  # idempotent: a second call changes nothing
    patched = GenerationMixin.__dict__["generate"]
    assert patched is not original and patched.__wrapped__ is original
    assert TextStreamer.__dict__["__init__"].__wrapped__ is original_init
    model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3)
    assert instrumentor.flush(60)

    instrumentor.uninstrument()
    instrumentor.uninstrument()  # idempotent too

    assert GenerationMixin.__dict__["generate"] is original
    assert GenerationMixin.generate.__code__.co_code == original.__code__.co_code
    assert TextStreamer.__dict__["__init__"] is original_init
    hooked = [
        name
        for name, module in model.named_modules()
        if module._forward_hooks or module._forward_pre_hooks
    ]
    assert hooked == []
    assert not [t for t in threading.enumerate() if t.name.startswith("bitnet-obs-hf")]


def test_wrong_options_raise_config_error() -> None:
    bad = [
        {"fidelity_sample_rate": 2.0},
        {"fidelity_layers": 0},
        {"operation": "sing"},
        {"weight_accuracy": "yes"},
        {"layer_fidelity": 1},
        {"provider": "hugging face"},
    ]
    assert_refused(TransformersInstrumentor(), bad)


def test_options_leave_no_series_behind(instrument: Instrument, cap: TelemetryCapture) -> None:
    """Checking the options builds no monitor: no request series of a model named "unknown"
    (nor any other) before a model generates."""
    instrument(operation="chat", provider="my-engine", server_address="h", server_port=80)
    assert cap.points("bitnet.inference.requests") == []
    active = cap.points("bitnet.inference.active_requests")  # earlier tests' models stay
    assert not [p for p in active if p.attributes["gen_ai.request.model"] == "unknown"]


def test_response_model_and_the_endpoint_it_is_given(
    instrument: Instrument, cap: TelemetryCapture
) -> None:
    model = tiny_llama_model()
    ids, mask = batch(1)
    instrument(server_address="127.0.0.1", server_port=8000)
    model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    (point,) = cap.points("gen_ai.server.request.duration")
    assert point.attributes["gen_ai.response.model"] == point.attributes["gen_ai.request.model"]
    assert point.attributes["server.address"] == "127.0.0.1"
    assert point.attributes["server.port"] == 8000


# ----------------------------------------------------------------- outputs and tokens


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_outputs_identical_with_and_without_instrumentation(
    kind: str, instrument: Instrument
) -> None:
    model = MODELS[kind]()
    ids, mask = batch(3)
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    instrumentor = instrument(fidelity_sample_rate=1.0, fidelity_layers=None)
    observed = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert instrumentor.flush(60)
    assert torch.equal(plain, observed)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("rows", [1, 3])
def test_exact_token_counts(
    kind: str, sample: bool, rows: int, instrument: Instrument, cap: TelemetryCapture
) -> None:
    model = MODELS[kind]()
    ids, mask = batch(rows)
    eos = early_eos(model, ids, mask, do_sample=sample)
    torch.manual_seed(2)
    expected = model.generate(
        ids, attention_mask=mask, max_new_tokens=10, do_sample=sample, eos_token_id=eos
    )
    instrument()
    torch.manual_seed(2)
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=10, do_sample=sample, eos_token_id=eos
    )
    assert torch.equal(out, expected)
    new = generated(out, ids.shape[1], eos)
    assert any(row[-1] == eos for row in new)  # at least one row stopped on EOS
    if rows > 1:
        assert len({len(row) for row in new}) > 1  # ... and not all at the same step
    assert tokens(cap, "input") == sum(len(p) for p in PROMPTS[:rows])
    assert tokens(cap, "output") == sum(len(row) for row in new)
    (span,) = cap.spans()
    assert span.attributes is not None
    assert span.attributes["gen_ai.usage.output_tokens"] == sum(len(row) for row in new)
    assert span.attributes["gen_ai.request.model"] == kind
    assert span.attributes["bitnet.quant.format"] == ("i2_s" if kind == "bitnet" else "fp32")
    assert span.attributes["gen_ai.request.max_tokens"] == 10
    reason = "stop" if all(row[-1] == eos for row in new) else "length"
    assert span.attributes["gen_ai.response.finish_reasons"] == (reason,)
    finished = {"bitnet.outcome": "ok", "bitnet.response.finish_reason": reason}
    assert cap.value("bitnet.inference.requests", **finished) == 1
    assert cap.value("bitnet.inference.requests", **{"bitnet.outcome": "ok"}) == 1


def test_pad_token_inferred_like_generate_without_a_mask(
    instrument: Instrument, cap: TelemetryCapture
) -> None:
    model = tiny_llama_model()
    ids, _ = batch(3)  # left padding with pad id 0, no attention_mask: generate infers it
    instrument()
    model.generate(ids, max_new_tokens=4, min_new_tokens=4)
    assert tokens(cap, "input") == sum(len(p) for p in PROMPTS)
    assert tokens(cap, "output") == 3 * 4


def test_several_sequences_per_prompt(instrument: Instrument, cap: TelemetryCapture) -> None:
    model = tiny_llama_model()
    instrument()
    out = model.generate(
        torch.tensor([[5, 6, 7]]),
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=True,
        num_return_sequences=2,
    )
    assert out.shape[0] == 2
    assert tokens(cap, "input") == 3  # the prompt once
    assert tokens(cap, "output") == 2 * 4
    assert cap.spans()[0].attributes["gen_ai.request.choice.count"] == 2  # type: ignore[index]


def test_sampling_parameters_go_out_as_the_conventions_types(
    instrument: Instrument, cap: TelemetryCapture
) -> None:
    model = tiny_llama_model()
    instrument()
    model.generate(
        torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=True, temperature=1, top_p=1,
        top_k=5,
    )  # fmt: skip
    (span,) = cap.spans()
    assert wrong_types(span.attributes) == {}
    assert span.attributes is not None
    assert span.attributes["gen_ai.request.temperature"] == 1.0
    assert span.attributes["gen_ai.request.top_k"] == 5


def test_inputs_embeds_only(instrument: Instrument, cap: TelemetryCapture) -> None:
    model = tiny_llama_model()
    embeds = model.get_input_embeddings()(torch.tensor([[5, 6, 7, 8]]))
    instrument()
    out = model.generate(inputs_embeds=embeds, max_new_tokens=3, min_new_tokens=3)
    assert out.shape == (1, 3)  # only the new tokens come back
    assert tokens(cap, "input") == 4
    assert tokens(cap, "output") == 3


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_bos_only_start_without_input_ids(
    kind: str, instrument: Instrument, cap: TelemetryCapture
) -> None:
    """generate() without input_ids starts every row from the BOS token it creates: that BOS is
    the input (one per row), not output, and is returned as the first column."""
    model = MODELS[kind]()
    bos = model.generation_config.bos_token_id
    assert bos is not None
    instrument()
    out = model.generate(max_new_tokens=4, min_new_tokens=4)
    assert out.shape == (1, 5) and int(out[0, 0]) == bos
    assert tokens(cap, "input") == 1
    assert tokens(cap, "output") == 4
    (span,) = cap.spans()
    assert span.attributes is not None and span.attributes["gen_ai.usage.output_tokens"] == 4
    assert span.attributes["gen_ai.response.finish_reasons"] == ("length",)


def test_bos_only_start_of_a_batch(instrument: Instrument, cap: TelemetryCapture) -> None:
    """The batch size comes from the first tensor argument, as generate() infers it."""
    model = tiny_llama_model()
    instrument()
    out = model.generate(
        attention_mask=torch.ones((3, 1), dtype=torch.long), max_new_tokens=2, min_new_tokens=2
    )
    assert out.shape == (3, 3)
    assert tokens(cap, "input") == 3
    assert tokens(cap, "output") == 3 * 2


def test_generate_errors_propagate_and_are_recorded(
    instrument: Instrument, cap: TelemetryCapture
) -> None:
    model = tiny_llama_model()
    instrument()
    with pytest.raises(ValueError):  # noqa: PT011 - transformers' own message
        model.generate(torch.tensor([[5, 6]]), max_new_tokens=-1)
    assert cap.value("bitnet.inference.requests", **{"bitnet.outcome": "error"}) == 1


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_under_no_grad_and_inference_mode(
    mode: str, instrument: Instrument, cap: TelemetryCapture
) -> None:
    model = tiny_bitnet_model()
    instrumentor = instrument(fidelity_sample_rate=1.0, fidelity_layers=None)
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, min_new_tokens=3)
    assert instrumentor.flush(60)
    assert tokens(cap, "output") == 3
    assert cap.points("bitnet.quant.accuracy", **{"bitnet.quant.reference": "quantized"})


def test_pipeline_text_generation(instrument: Instrument, cap: TelemetryCapture) -> None:
    model = tiny_bitnet_model()
    pipe = pipeline("text-generation", model=model, tokenizer=tiny_tokenizer())
    instrument()
    result = pipe("t5 t6 t7", max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert result[0]["generated_text"].startswith("t5 t6 t7")
    assert cap.value("bitnet.inference.requests") == 1
    assert tokens(cap, "input") == 3
    assert tokens(cap, "output") == 5


def test_nested_generate_is_one_inference(instrument: Instrument, cap: TelemetryCapture) -> None:
    """Assisted decoding calls the assistant's generate() inside the main one."""
    model, assistant = tiny_llama_model(), tiny_llama_model(seed=1)
    instrument()
    model.generate(
        torch.tensor([[5, 6, 7]]),
        assistant_model=assistant,
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=False,
    )
    assert cap.value("bitnet.inference.requests") == 1
    assert tokens(cap, "output") == 4


# ----------------------------------------------------------------- timing


def test_first_token_and_per_token_time_follow_the_model(
    instrument: Instrument, cap: TelemetryCapture
) -> None:
    """Every forward pass sleeps 50 ms: the first token cannot come sooner than one pass, and
    each later token not sooner than one more."""
    delay, new = 0.05, 5
    model = tiny_bitnet_model()
    model.register_forward_hook(lambda *_: time.sleep(delay))
    instrument()
    model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=new, min_new_tokens=new)
    (ttft,) = cap.points("gen_ai.server.time_to_first_token")
    (tpot,) = cap.points("gen_ai.server.time_per_output_token")
    (duration,) = cap.points("gen_ai.server.request.duration")
    assert ttft.count == tpot.count == duration.count == 1
    assert ttft.sum is not None and tpot.sum is not None and duration.sum is not None
    assert ttft.sum >= delay
    assert tpot.sum >= delay
    assert duration.sum >= new * delay
    assert ttft.sum + (new - 1) * tpot.sum == pytest.approx(duration.sum, rel=1e-9)
    (prefill,) = cap.points("bitnet.inference.prefill.duration")
    (decode,) = cap.points("bitnet.inference.decode.duration")
    assert prefill.sum is not None and decode.sum is not None
    assert prefill.sum >= delay  # the prompt's forward pass
    assert decode.sum >= (new - 1) * delay  # one forward pass per later token
    assert prefill.sum + decode.sum == pytest.approx(duration.sum, rel=1e-9)


def test_streamer_in_a_thread(instrument: Instrument, cap: TelemetryCapture) -> None:
    """The standard pattern: generate() in a thread feeds a TextIteratorStreamer that the
    request handler iterates. The generate span is a child of the handler's span."""
    model, tokenizer = tiny_bitnet_model(), tiny_tokenizer()
    instrument()
    tracer = cap.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as request:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        thread = threading.Thread(
            target=model.generate,
            kwargs={
                "input_ids": torch.tensor([[5, 6, 7]]),
                "streamer": streamer,
                "max_new_tokens": 6,
                "min_new_tokens": 6,
            },
        )
        thread.start()
        text = "".join(streamer)
        thread.join(60)
    assert len(text.split()) == 6
    (span,) = cap.spans("text_completion bitnet")
    assert span.parent is not None
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.context is not None
    assert span.context.trace_id == request.get_span_context().trace_id
    assert tokens(cap, "output") == 6
    assert cap.points("gen_ai.server.time_to_first_token")[0].count == 1
    assert span.attributes is not None and span.attributes["gen_ai.request.stream"] is True
    assert cap.value("bitnet.inference.inter_token_latency") == 5  # a gap per later step
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached


def test_a_model_stuck_on_one_token_is_degenerate(
    instrument: Instrument, cap: TelemetryCapture
) -> None:
    """A broken kernel that makes every step's argmax one token ("!!!!"), stood in for by a
    logits processor; a healthy run of the same model is not flagged."""

    class Stuck(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            stuck = torch.full_like(scores, -1e9)
            stuck[:, 7] = 0.0
            return stuck

    model = tiny_bitnet_model()
    instrument()
    ids, mask = batch(2)
    model.generate(ids, attention_mask=mask, max_new_tokens=40, min_new_tokens=40,
                   logits_processor=LogitsProcessorList([Stuck()]))  # fmt: skip
    reason = {"bitnet.degenerate.reason": "repeat_run"}
    assert cap.value("bitnet.output.degenerate", **reason) == 2  # both rows
    assert cap.value("bitnet.output.repeat_run") == 2  # one judged output per row
    (span,) = cap.spans()
    assert span.attributes is not None
    assert span.attributes["bitnet.output.degenerate_sequences"] == 2
    assert span.attributes["bitnet.degenerate.reason"] == "repeat_run"
    assert tokens(cap, "output") == 80


def test_a_request_monitored_by_the_caller_is_counted_once(
    instrument: Instrument, cap: TelemetryCapture
) -> None:
    """generate() inside the caller's own monitored call reports into it: one request, with
    the exact tokens and the first token's time."""
    model = tiny_bitnet_model()
    instrument()

    @bitnet_obs.monitored_inference(model="my-handler")
    def handle(prompt: list[int]) -> str:
        model.generate(torch.tensor([prompt]), max_new_tokens=4, min_new_tokens=4)
        return "text"  # the caller's result says nothing about tokens

    handle([5, 6, 7])
    assert cap.value("bitnet.inference.requests") == 1
    assert [span.name for span in cap.spans()] == ["text_completion my-handler"]
    output = {"bitnet.token.type": "output", "gen_ai.request.model": "my-handler"}
    assert cap.value("bitnet.inference.tokens", **output) == 4
    assert cap.value("bitnet.inference.tokens", **{"bitnet.token.type": "input"}) == 3
    assert cap.points("gen_ai.server.time_to_first_token")[0].count == 1


FORK_SCRIPT = """
import multiprocessing as mp
import torch
torch.set_num_threads(1)
torch.compiler.set_stance("force_eager")
from bitnet_obs.instrumentation.transformers import TransformersInstrumentor
from bitnet_obs.testing import capture_telemetry, override_settings, tiny_bitnet_model

instrumentor = TransformersInstrumentor()
model = tiny_bitnet_model()

def generate_and_check():
    with capture_telemetry() as cap:
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2)
        assert instrumentor.flush(60), "background checks stuck"
        assert len(cap.points("bitnet.quant.accuracy")) == 14

def child():
    with override_settings(quant_budget=1.0):
        generate_and_check()

if __name__ == "__main__":
    instrumentor.instrument(fidelity_sample_rate=1.0, fidelity_layers=None)
    with override_settings(quant_budget=1.0):
        generate_and_check()  # the parent's background thread is running now
    process = mp.get_context("fork").Process(target=child)
    process.start()
    process.join(120)
    assert process.exitcode == 0, process.exitcode
    instrumentor.uninstrument()
    print("DONE")
"""


@pytest.mark.slow
def test_forked_worker_runs_its_own_background_checks(tmp_path: Any) -> None:
    script = tmp_path / "fork_app.py"
    script.write_text(FORK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_OBS_"))}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DONE" in done.stdout
