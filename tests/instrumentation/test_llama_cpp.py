"""LlamaCppInstrumentor on the real engine: llama-cpp-python running the tiny BitNet b1.58
files that llama.cpp's own converter and quantizer made (tests/_support/llama_model.py).

Expected values come from the engine itself, never from our code: ids from ``Llama.generate``
run by hand, counts from llama-cpp-python's usage, logits read back from the llama.cpp context,
sizes and parameter counts from ``llama_model_size`` / ``llama_model_n_params``, the file's
header from the ``gguf`` package, its hash from ``hashlib``.
"""

from __future__ import annotations

import hashlib
import math
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bitnet_obs
from bitnet_obs import health, runtime
from bitnet_obs.instrumentation.llama_cpp import LlamaCppInstrumentor
from bitnet_obs.testing import (
    OTLPReceiver,
    TelemetryCapture,
    capture_telemetry,
    override_settings,
    reset,
)
from tests._support.conventions import wrong_types
from tests._support.zero_code import assert_refused, missing_library, run_instrumented

PATCHED = (
    "__init__",
    "__call__",
    "create_completion",
    "create_chat_completion",
    "create_embedding",
    "embed",
    "generate",
    "close",
)
OK = {"bitnet.outcome": "ok"}
ERR = {"bitnet.outcome": "error"}
OUT = {"bitnet.token.type": "output"}
IN = {"bitnet.token.type": "input"}
PROMPT = [1, 5, 6, 7, 8, 9]  # ids (BOS first): a list prompt is evaluated as given
CHAT = [{"role": "user", "content": "How are you?"}]

Instrument = Callable[..., LlamaCppInstrumentor]


class HandlerError(Exception):
    pass


Load = Callable[..., Any]


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    reset()  # no model of an earlier test still counted as loaded
    health.mark_ready()
    with capture_telemetry() as capture:
        yield capture
    health.mark_ready()


@pytest.fixture
def instrument(cap: TelemetryCapture, llama_engine: Any) -> Iterator[Instrument]:
    """``instrument(**options)`` inside a telemetry capture (logits sampling off unless a test
    overrides it); undone at teardown."""
    instrumentor = LlamaCppInstrumentor()

    def start(**options: Any) -> LlamaCppInstrumentor:
        instrumentor.instrument(**options)
        return instrumentor

    with override_settings(quant_sample_rate=0.0, quant_budget=1.0):
        yield start
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


@pytest.fixture
def load(tiny_bitnet: Any) -> Iterator[Load]:
    """``load(fmt="tq2_0", **kwargs)``: a ``Llama`` on a fixture file (one thread, quiet),
    closed at teardown."""
    import llama_cpp

    made: list[Any] = []

    def make(fmt: str = "tq2_0", **kwargs: Any) -> Any:
        options: dict[str, Any] = {"n_ctx": 256, "n_threads": 1, "verbose": False, **kwargs}
        llm = llama_cpp.Llama(str(tiny_bitnet.gguf(fmt)), **options)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.close()


def sampled(llm: Any, prompt: list[int], n: int, **kwargs: Any) -> list[int]:
    """The ids the engine samples greedily for ``prompt``, by driving ``Llama.generate`` by
    hand as a completion does: up to ``n`` ids, the end-of-generation id included."""
    import llama_cpp

    ids: list[int] = []
    for token in llm.generate(prompt, temp=0.0, **kwargs):
        ids.append(token)
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(ids) >= n:
            break
    return ids


def span_of(cap: TelemetryCapture, operation: str) -> Any:
    (span,) = [s for s in cap.spans() if s.name.startswith(operation + " ")]
    return span


def name_of(path: Path) -> str:
    """The model name the instrumentor must use: the file's general.name, read by the gguf
    package (an independent reader), else the file's name without ``.gguf`` (llama.cpp's
    converter writes no name for the fixture's unnamed checkpoint)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.name")
    if field is None:
        return path.name.removesuffix(".gguf")
    return bytes(field.parts[field.data[0]]).decode()


# ----------------------------------------------------------------- install / uninstall


def test_uninstrument_restores_every_attribute_and_twice_is_a_no_op(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    import llama_cpp

    originals = {name: llama_cpp.Llama.__dict__[name] for name in PATCHED}
    instrumentor = instrument()
    patched = {name: llama_cpp.Llama.__dict__[name] for name in PATCHED}
    instrumentor.instrument()  # a second call changes nothing
    for name in PATCHED:
        assert llama_cpp.Llama.__dict__[name] is patched[name]
        assert patched[name] is not originals[name]
        assert patched[name].__wrapped__ is originals[name]
    llm = load()
    llm.create_completion(PROMPT, max_tokens=2, temperature=0.0)

    instrumentor.uninstrument()
    instrumentor.uninstrument()  # idempotent too
    for name in PATCHED:
        assert llama_cpp.Llama.__dict__[name] is originals[name], name
    before = cap.value("bitnet.inference.requests")
    llm.create_completion(PROMPT, max_tokens=2, temperature=0.0)
    llm2 = load()
    llm2.create_completion(PROMPT, max_tokens=2, temperature=0.0)
    assert cap.value("bitnet.inference.requests") == before == 1


def test_wrong_options_raise_config_error(llama_engine: Any) -> None:
    # the engine: without llama-cpp-python, instrument() stops at its dependency check first
    bad = [
        {"provider": "llama cpp"},
        {"model_load": "yes"},
        {"mark_ready": 1},
        {"hash_content": None},
    ]
    assert_refused(LlamaCppInstrumentor(), bad)


def test_options_leave_no_series_behind(cap: TelemetryCapture, llama_engine: Any) -> None:
    """Checking the options builds no monitor: no request series of a model named "unknown"."""
    instrumentor = LlamaCppInstrumentor()
    instrumentor.instrument(provider="my-engine")
    try:
        assert cap.points("bitnet.inference.requests") == []
    finally:
        instrumentor.uninstrument()


# ------------------------------------------------------------------------- model load


@pytest.mark.parametrize(("fmt", "stored"), [("tq1_0", "TQ1_0"), ("tq2_0", "TQ2_0")])
def test_load_records_the_files_provenance(
    instrument: Instrument, load: Load, cap: TelemetryCapture, tiny_bitnet: Any, fmt: str,
    stored: str,
) -> None:  # fmt: skip
    import llama_cpp
    from gguf import GGUFReader

    instrument()
    path = Path(tiny_bitnet.gguf(fmt))
    llm = load(fmt)
    name = name_of(path)
    attrs = {"gen_ai.request.model": name, "bitnet.quant.format": fmt, "bitnet.device": "cpu"}
    assert cap.value("bitnet.model.loads", **OK, **attrs) == 1
    assert cap.value("bitnet.model.loaded", **attrs) == 1
    (size,) = cap.points("bitnet.model.size", **attrs)
    assert size.value == llama_cpp.llama_model_size(llm.model)
    assert health.evaluate("readiness").http_status == 200

    reader = GGUFReader(path)
    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    assert arch == llm.metadata["general.architecture"] == "bitnet"

    def info() -> dict[str, Any]:
        points = cap.points("bitnet.model.info", **attrs)
        return points[0].attributes if points else {}

    deadline = time.monotonic() + 60
    while "bitnet.model.file.sha256" not in info() and time.monotonic() < deadline:
        time.sleep(0.05)  # the hash is computed in the background
    found = info()
    assert found["bitnet.model.file.sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert found["bitnet.model.architecture"] == arch
    assert found["bitnet.model.parameters"] == llama_cpp.llama_model_n_params(llm.model)
    assert found["bitnet.model.file.size"] == path.stat().st_size
    counts = dict(item.split("=") for item in found["bitnet.model.file.quant_types"].split(","))
    expected: dict[str, int] = {}
    for tensor in reader.tensors:
        expected[tensor.tensor_type.name] = expected.get(tensor.tensor_type.name, 0) + 1
    assert {k: int(v) for k, v in counts.items()} == expected
    assert stored in counts
    (span,) = cap.spans(f"load_model {name}")
    assert span.attributes is not None and span.attributes["bitnet.model.architecture"] == arch

    llm.close()
    assert cap.value("bitnet.model.loaded", **attrs) == 0
    llm.close()  # a second close unloads nothing more
    assert cap.value("bitnet.model.loaded", **attrs) == 0


def test_a_collected_model_is_unloaded(
    instrument: Instrument, cap: TelemetryCapture, tiny_bitnet: Any
) -> None:
    import gc

    import llama_cpp

    instrument(hash_content=False)
    llm = llama_cpp.Llama(str(tiny_bitnet.tq2_0), n_ctx=256, n_threads=1, verbose=False)
    assert cap.value("bitnet.model.loaded") == 1
    del llm
    gc.collect()
    assert cap.value("bitnet.model.loaded") == 0


def test_a_failed_load_is_recorded_and_raises_the_engines_error(
    instrument: Instrument, cap: TelemetryCapture, tmp_path: Path
) -> None:
    import llama_cpp

    instrument()
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(ValueError, match="Model path does not exist") as raised:
        llama_cpp.Llama(str(missing), verbose=False)
    assert raised.value.__context__ is None and raised.value.__cause__ is None
    attrs = {"gen_ai.request.model": "nowhere", "error.type": "ValueError"}
    assert cap.value("bitnet.model.loads", **ERR, **attrs) == 1
    assert cap.value("bitnet.model.loaded") == 0


def test_load_options(instrument: Instrument, load: Load, cap: TelemetryCapture) -> None:
    health.mark_not_ready("the application decides")
    instrument(model_load=False)
    llm = load()
    assert cap.points("bitnet.model.loads") == []
    llm.create_completion(PROMPT, max_tokens=2, temperature=0.0)  # still monitored
    assert cap.value("bitnet.inference.requests", **OK) == 1
    llm.close()
    assert cap.points("bitnet.model.loaded") == []
    LlamaCppInstrumentor().uninstrument()  # one instrumentor per process (a singleton)

    instrument(mark_ready=False, hash_content=False)
    load()
    assert cap.value("bitnet.model.loaded") == 1
    assert health.evaluate("readiness").http_status == 503  # left to the application
    (point,) = cap.points("bitnet.model.info")  # complete at once: no hash to wait for
    assert "bitnet.model.file.sha256" not in point.attributes
    assert point.attributes["bitnet.model.file.format"] == "gguf"


# ------------------------------------------------------------------------------ calls


def test_completion_counts_exactly_the_engines_ids(
    instrument: Instrument, load: Load, cap: TelemetryCapture, tiny_bitnet: Any
) -> None:
    plain = load()  # before instrument(): described at its first call
    expected = sampled(plain, PROMPT, 24)
    instrument()
    out = plain.create_completion(PROMPT, max_tokens=24, temperature=0.0)
    assert out["usage"]["prompt_tokens"] == len(PROMPT)
    name = name_of(Path(tiny_bitnet.tq2_0))
    base = {"gen_ai.request.model": name, "gen_ai.operation.name": "text_completion"}
    assert cap.value("bitnet.inference.tokens", **base, **IN) == len(PROMPT)
    assert cap.value("bitnet.inference.tokens", **base, **OUT) == len(expected)
    assert out["usage"]["completion_tokens"] == len(expected) - (
        out["choices"][0]["finish_reason"] == "stop"
    )
    assert cap.value("bitnet.inference.requests", **base, **OK) == 1
    span = span_of(cap, "text_completion")
    assert span.attributes["gen_ai.usage.input_tokens"] == len(PROMPT)
    assert span.attributes["gen_ai.usage.output_tokens"] == len(expected)
    assert span.attributes["gen_ai.response.model"] == name
    assert span.attributes["gen_ai.provider.name"] == "llama_cpp"
    assert span.attributes["bitnet.quant.format"] == "tq2_0"
    assert span.attributes["gen_ai.request.stream"] is False
    assert "gen_ai.response.time_to_first_chunk" not in span.attributes
    assert span.attributes["gen_ai.request.max_tokens"] == 24
    assert span.attributes["gen_ai.response.finish_reasons"] == (
        out["choices"][0]["finish_reason"],
    )
    # a token per decoding step: every gap between them, the first token, prefill and decode
    (gaps,) = cap.points("bitnet.inference.inter_token_latency", **base)
    assert gaps.count == len(expected) - 1
    (ttft,) = cap.points("gen_ai.server.time_to_first_token", **base)
    (prefill,) = cap.points("bitnet.inference.prefill.duration", **base)
    (decode,) = cap.points("bitnet.inference.decode.duration", **base)
    (duration,) = cap.points("gen_ai.server.request.duration", **base)
    assert ttft.count == prefill.count == decode.count == 1
    assert prefill.sum > 0 and decode.sum > 0
    assert prefill.sum + decode.sum == pytest.approx(duration.sum, rel=0.05)
    assert gaps.sum == pytest.approx(decode.sum, rel=0.25)  # the gaps are the decode steps


def test_a_sampled_end_of_generation_is_an_output_token(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    """llama-cpp-python leaves the end-of-generation id out of its usage; the engine sampled
    it, and so we count it (as llama-server's n_decoded and our transformers instrumentor do)."""
    instrument()
    llm = load()
    eos = llm.token_eos()
    out = llm.create_completion(PROMPT, max_tokens=8, temperature=0.0, logit_bias={eos: 100.0})
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 0
    assert cap.value("bitnet.inference.tokens", **OUT) == 1
    assert cap.value("bitnet.inference.requests", **{"bitnet.response.finish_reason": "stop"}) == 1


def test_stream_is_one_request_with_every_gap(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    plain = load()
    expected = sampled(plain, PROMPT, 20)
    instrument()
    chunks = list(plain.create_completion(PROMPT, max_tokens=20, temperature=0.0, stream=True))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert cap.value("bitnet.inference.requests", **OK) == 1
    assert cap.value("bitnet.inference.tokens", **OUT) == len(expected) == 20
    assert cap.value("bitnet.inference.tokens", **IN) == len(PROMPT)
    (gaps,) = cap.points("bitnet.inference.inter_token_latency")
    assert gaps.count == 19
    span = span_of(cap, "text_completion")
    assert span.attributes["gen_ai.request.stream"] is True
    (duration,) = cap.points("gen_ai.server.request.duration")
    assert 0 < span.attributes["gen_ai.response.time_to_first_chunk"] < duration.sum
    assert span.attributes["gen_ai.response.finish_reasons"] == ("length",)
    length = {"bitnet.response.finish_reason": "length"}
    assert cap.value("bitnet.inference.requests", **length) == 1


def test_stream_steps_run_in_the_requests_own_context(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    instrument()
    llm = load()
    stream = llm.create_completion(PROMPT, max_tokens=4, temperature=0.0, stream=True)
    assert not bitnet_obs.current_inference().recording  # between chunks: not ours
    seen = []
    for _ in stream:
        seen.append(bitnet_obs.current_inference().recording)
    assert seen and not any(seen)
    assert cap.value("bitnet.inference.requests", **OK) == 1


def test_a_closed_stream_is_cancelled_and_counts_what_was_sampled(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    instrument()
    llm = load()
    stream = llm.create_completion(PROMPT, max_tokens=50, temperature=0.0, stream=True)
    next(stream)
    next(stream)
    stream.close()
    assert cap.value("bitnet.inference.requests", **{"bitnet.outcome": "cancelled"}) == 1
    sampled_so_far = cap.value("bitnet.inference.tokens", **OUT)
    assert 2 <= sampled_so_far < 50  # a chunk per id, unless an id ends inside a character
    never = llm.create_completion(PROMPT, max_tokens=5, stream=True)
    del never  # dropped before its first step: the engine never ran
    assert cap.value("bitnet.inference.requests", **{"bitnet.outcome": "cancelled"}) == 2
    assert cap.value("bitnet.inference.tokens", **OUT) == sampled_so_far
    assert cap.value("bitnet.inference.active_requests") == 0


@pytest.mark.parametrize("stream", [False, True])
def test_chat_completion_is_one_request(
    instrument: Instrument, load: Load, cap: TelemetryCapture, stream: bool
) -> None:
    instrument()
    llm = load()
    result = llm.create_chat_completion(CHAT, max_tokens=12, temperature=0.0, stream=stream)
    chunks = list(result) if stream else [result]
    assert cap.value("bitnet.inference.requests") == 1  # not one more for create_completion
    assert cap.value("bitnet.inference.requests", **{"gen_ai.operation.name": "chat"}) == 1
    span = span_of(cap, "chat")
    assert [s for s in cap.spans() if s.name.startswith("text_completion")] == []
    assert span.attributes["gen_ai.request.stream"] is stream
    reason = chunks[-1]["choices"][0]["finish_reason"]
    assert span.attributes["gen_ai.response.finish_reasons"] == (reason,)
    if not stream:  # the chat template's ids are the engine's prompt
        usage = result["usage"]
        assert cap.value("bitnet.inference.tokens", **IN) == usage["prompt_tokens"]
        assert cap.value("bitnet.inference.tokens", **OUT) == usage["completion_tokens"] + (
            reason == "stop"
        )
    assert span.attributes["gen_ai.request.temperature"] == 0.0
    assert "gen_ai.request.top_k" not in span.attributes  # greedy: top-k does not apply


def test_call_is_one_request_and_the_sampling_parameters_are_on_the_span(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    instrument()
    llm = load()
    llm(
        "Once upon a time",
        max_tokens=6,
        temperature=0.7,
        top_p=0.9,
        top_k=20,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        seed=1234,
    )
    assert cap.value("bitnet.inference.requests") == 1
    span = span_of(cap, "text_completion")
    assert span.attributes["gen_ai.request.temperature"] == pytest.approx(0.7)
    assert span.attributes["gen_ai.request.top_p"] == pytest.approx(0.9)
    top_k = span.attributes["gen_ai.request.top_k"]
    assert top_k == 20 and type(top_k) is int
    assert span.attributes["gen_ai.request.frequency_penalty"] == 0.5
    assert span.attributes["gen_ai.request.presence_penalty"] == 0.25
    assert span.attributes["gen_ai.request.seed"] == 1234
    assert span.attributes["gen_ai.request.max_tokens"] == 6


def test_sampling_parameters_given_as_ints_go_out_as_the_conventions_types(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    instrument()
    llm = load()
    llm("Once upon a time", max_tokens=4, temperature=1, top_p=1, top_k=20, presence_penalty=1)
    llm("Once upon a time", max_tokens=4, temperature=0)  # greedy, as people write it
    spans = [s for s in cap.spans() if s.name.startswith("text_completion")]
    assert len(spans) == 2
    for span in spans:
        assert wrong_types(span.attributes) == {}
    sampled, greedy = spans
    assert sampled.attributes["gen_ai.request.temperature"] == 1.0
    assert sampled.attributes["gen_ai.request.top_p"] == 1.0
    assert sampled.attributes["gen_ai.request.presence_penalty"] == 1.0
    assert greedy.attributes["gen_ai.request.temperature"] == 0.0


def test_embeddings(instrument: Instrument, load: Load, cap: TelemetryCapture) -> None:
    plain = load(embedding=True)
    expected_embed = plain.embed("hello world")
    instrument()
    result = plain.create_embedding(["hello world", "a second input"])
    assert cap.value("bitnet.inference.requests") == 1  # embed() inside is not one more
    base = {"gen_ai.operation.name": "embeddings"}
    assert cap.value("bitnet.inference.tokens", **base, **IN) == result["usage"]["prompt_tokens"]
    assert cap.value("bitnet.inference.tokens", **OUT) == 0
    # embed(): the caller's return shape, the engine's own count
    vector = plain.embed("hello world")
    assert isinstance(vector, list) and np.allclose(vector, expected_embed)
    vectors, count = plain.embed(["hello world"], False, True, True)
    assert np.allclose(vectors[0], expected_embed)
    assert count == len(plain.tokenize(b"hello world"))
    assert cap.value("bitnet.inference.requests", **base) == 3
    assert cap.value("bitnet.inference.tokens", **base, **IN) == (
        result["usage"]["prompt_tokens"] + 2 * count
    )


# ------------------------------------------------------------------ errors, untouched


def test_context_overflow_is_recorded_and_reraised(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    instrument()
    llm = load()
    too_long = [1] + [5] * (llm.n_ctx() + 10)
    with pytest.raises(ValueError, match="exceed context window") as raised:
        llm.create_completion(too_long, max_tokens=4)
    assert raised.value.__context__ is None
    stream = llm.create_completion(too_long, max_tokens=4, stream=True)
    with pytest.raises(ValueError, match="exceed context window") as raised:
        next(stream)  # a stream raises at its first step, as without us
    assert raised.value.__context__ is None
    assert cap.value("bitnet.inference.requests", **ERR, **{"error.type": "ValueError"}) == 2
    spans = [s for s in cap.spans() if s.name.startswith("text_completion")]
    assert len(spans) == 2
    for span in spans:
        assert span.attributes["error.type"] == "ValueError"
        assert not span.status.is_ok


@pytest.mark.parametrize("stream", [False, True])
def test_the_callers_exception_is_the_same_object(
    instrument: Instrument, load: Load, cap: TelemetryCapture, stream: bool
) -> None:
    boom = HandlerError("bad arguments")

    def handler(**kwargs: Any) -> Any:
        raise boom

    instrument()
    llm = load(chat_handler=handler)
    with pytest.raises(HandlerError) as raised:
        llm.create_chat_completion(CHAT, stream=stream)
    assert raised.value is boom and boom.__context__ is None
    error = {"error.type": f"{__name__}.HandlerError"}
    assert cap.value("bitnet.inference.requests", **ERR, **error) == 1


def test_a_handlers_stream_keeps_send_throw_close_and_its_return_value(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    received: list[Any] = []

    def handler(**kwargs: Any) -> Any:
        def chunks() -> Any:
            try:
                got = yield {"choices": [{"finish_reason": None}]}
                received.append(got)
                yield {"choices": [{"finish_reason": None}]}
            except KeyError as exc:
                received.append(exc)
                yield {"choices": [{"finish_reason": "stop"}]}
            return "done"

        return chunks()

    def plain(**kwargs: Any) -> Any:
        return {"choices": [{"finish_reason": "stop"}]}

    instrument()
    llm = load(chat_handler=handler)
    stream = llm.create_chat_completion(CHAT, stream=True)
    next(stream)
    stream.send("hello")
    thrown = KeyError("x")
    assert stream.throw(thrown) == {"choices": [{"finish_reason": "stop"}]}
    with pytest.raises(StopIteration) as stop:
        next(stream)
    assert stop.value.value == "done"
    assert received == ["hello", thrown]
    assert cap.value("bitnet.inference.requests", **{"bitnet.response.finish_reason": "stop"}) == 1

    llm.chat_handler = plain  # stream=True, but the handler answers in one piece
    assert llm.create_chat_completion(CHAT, stream=True) == {"choices": [{"finish_reason": "stop"}]}
    assert cap.value("bitnet.inference.requests", **OK) == 2


def test_generate_outside_a_request_is_the_engines_generator(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    instrument()
    llm = load()
    generator = llm.generate(PROMPT, temp=0.0)
    assert generator.gi_code is type(llm).generate.__wrapped__.__code__
    next(generator)
    generator.close()
    assert cap.points("bitnet.inference.requests") == []


def test_our_failures_never_reach_the_call(
    instrument: Instrument, cap: TelemetryCapture, tiny_bitnet: Any
) -> None:
    """A model whose vocabulary size cannot be read: the logits sample fails (counted), the
    call answers as without us."""
    import llama_cpp

    class Odd(llama_cpp.Llama):  # type: ignore[misc]
        loaded = False

        def n_vocab(self) -> int:
            if self.loaded:  # the engine reads it once, at load; the logits sample after
                raise RuntimeError("no vocabulary today")
            return int(super().n_vocab())

    instrument()
    odd = Odd(str(tiny_bitnet.tq2_0), n_ctx=256, n_threads=1, verbose=False)
    odd.loaded = True
    try:
        with override_settings(logits_sample_rate=1.0, quant_budget=1.0):
            out = odd.create_completion(PROMPT, max_tokens=3, temperature=0.0)
    finally:
        odd.close()
    assert out["usage"]["completion_tokens"] == 3
    assert cap.value("bitnet.inference.requests", **OK) == 1
    assert cap.value("bitnet.inference.tokens", **OUT) == 3
    assert cap.value("bitnet.obs.internal_errors", **{"bitnet.obs.error.kind": "bad_logits"}) == 1


# ----------------------------------------------------------------- output health


def test_degenerate_output_is_flagged(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    instrument()
    llm = load()
    llm.create_completion(PROMPT, max_tokens=40, temperature=0.0, logit_bias={42: 100.0})
    reasons = {
        p.attributes["bitnet.degenerate.reason"]: p.value
        for p in cap.points("bitnet.output.degenerate")
    }
    assert reasons["repeat_run"] == 1
    (run,) = cap.points("bitnet.output.repeat_run")
    assert run.sum == 40
    span = span_of(cap, "text_completion")
    assert span.attributes["bitnet.degenerate.reason"] == "repeat_run"


def test_a_broken_conversion_that_repeats_one_token_is_flagged(
    instrument: Instrument, cap: TelemetryCapture, broken_bitnet: Callable[..., Path]
) -> None:
    """The engine's fixture with its output norm zeroed (every logit 0: token 0 forever, the
    "!!!!" of microsoft/BitNet#547), run through a plain chat completion and a stream."""
    import llama_cpp

    instrument(hash_content=False)
    path = broken_bitnet("constant")
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, verbose=False)
    try:
        llm.create_completion(PROMPT, max_tokens=48, temperature=0.0)
        list(llm.create_completion(PROMPT, max_tokens=48, temperature=0.0, stream=True))
    finally:
        llm.close()
    degenerate = {"bitnet.degenerate.reason": "repeat_run"}
    assert cap.value("bitnet.output.degenerate", **degenerate) == 2
    assert cap.value("bitnet.output.degenerate", **{"bitnet.quant.format": "tq2_0"}) == 2
    for span in [s for s in cap.spans() if s.name.startswith("text_completion")]:
        assert span.attributes["bitnet.degenerate.reason"] == "repeat_run"
        assert span.attributes["bitnet.output.repeat_run"] == 48


def test_last_logits_at_the_sample_rate(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    import llama_cpp

    instrument()
    llm = load()
    with override_settings(logits_sample_rate=0.0, quant_budget=1.0):
        llm.create_completion(PROMPT, max_tokens=5, temperature=0.0)
    assert cap.points("bitnet.output.logits.entropy") == []
    with override_settings(logits_sample_rate=1.0, quant_budget=1.0):
        llm.create_completion(PROMPT, max_tokens=5, temperature=0.0)
    # the engine's own last logits, read back from its context (nothing decoded since)
    data = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    logits = np.ctypeslib.as_array(data, shape=(llm.n_vocab(),)).astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    top = np.sort(p)[-2:]
    (point,) = cap.points("bitnet.output.logits.entropy")
    assert point.count == 1 and point.sum == pytest.approx(entropy, rel=1e-4, abs=1e-6)
    (margin,) = cap.points("bitnet.output.logits.top1_margin")
    assert margin.sum == pytest.approx(top[1] - top[0], rel=1e-4, abs=1e-6)
    assert math.isfinite(point.sum)


# ------------------------------------------------------------------------- threads


def test_concurrent_models_count_exactly(
    instrument: Instrument, load: Load, cap: TelemetryCapture
) -> None:
    instrument()
    models = [load("tq2_0"), load("tq1_0")]
    errors: list[BaseException] = []

    def work(llm: Any) -> None:
        try:
            for i in range(4):
                if i % 2:
                    list(llm.create_completion(PROMPT, max_tokens=7, temperature=0.0, stream=True))
                else:
                    llm.create_completion(PROMPT, max_tokens=7, temperature=0.0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(llm,)) for llm in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert cap.value("bitnet.inference.requests", **OK) == 8
    assert cap.value("bitnet.inference.tokens", **OUT) == 8 * 7
    assert cap.value("bitnet.inference.tokens", **IN) == 8 * len(PROMPT)
    for fmt in ("tq1_0", "tq2_0"):
        assert cap.value("bitnet.inference.requests", **{"bitnet.quant.format": fmt}) == 4
    assert cap.value("bitnet.inference.active_requests") == 0


# ------------------------------------------------------------------------- runtime


def test_runtime_info_carries_llama_cpps_build(
    instrument: Instrument, cap: TelemetryCapture
) -> None:
    import llama_cpp

    instrument()
    try:
        (point,) = cap.points("bitnet.runtime.info")
        text = llama_cpp.llama_print_system_info().decode()
        features = runtime.parse_system_info(text)
        assert point.attributes["bitnet.llama_cpp.version"] == llama_cpp.__version__
        assert point.attributes["bitnet.llama_cpp.features"] == ",".join(features)
        assert features and all(f.lower() in text.lower() for f in features)
        if "AVX2 = 1" in text:
            assert point.attributes["bitnet.llama_cpp.simd"] in ("avx2", "avx512")
    finally:
        runtime.disable()


# ------------------------------------------------------------------------- zero code

APP = textwrap.dedent(
    """
    import os
    import llama_cpp

    llm = llama_cpp.Llama(os.environ["MODEL"], n_ctx=256, n_threads=1, verbose=False)
    out = llm.create_completion([1, 5, 6, 7], max_tokens=6, temperature=0.0)
    chunks = list(llm.create_chat_completion(
        [{"role": "user", "content": "hi"}], max_tokens=4, temperature=0.0, stream=True))
    print("generated", out["usage"]["completion_tokens"], len(chunks))
    """
)


@pytest.mark.slow
def test_plain_script_under_opentelemetry_instrument(tmp_path: Path, tiny_bitnet: Any) -> None:
    name = name_of(Path(tiny_bitnet.tq2_0))
    with OTLPReceiver() as rx:
        done = run_instrumented(
            APP,
            tmp_path,
            rx,
            "zero-code-llama",
            MODEL=str(tiny_bitnet.tq2_0),
            # the transformers instrumentor is not this test's: without it no torch import
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="bitnet_obs_transformers",
        )
        assert done.returncode == 0, done.stderr[-4000:]
        assert "generated 6" in done.stdout
        assert rx.wait_for_spans(3, timeout=30)
        assert rx.wait_for_metric("bitnet.inference.tokens", timeout=30)
        (load_span,) = rx.spans(f"load_model {name}")
        assert load_span.attributes["bitnet.quant.format"] == "tq2_0"
        (completion,) = rx.spans(f"text_completion {name}")
        assert completion.attributes["gen_ai.provider.name"] == "llama_cpp"
        assert completion.attributes["gen_ai.usage.input_tokens"] == 4
        assert completion.attributes["gen_ai.usage.output_tokens"] == 6
        assert completion.resource["service.name"] == "zero-code-llama"
        (chat,) = rx.spans(f"chat {name}")
        assert chat.attributes["gen_ai.request.stream"] is True
        out = {"bitnet.token.type": "output", "gen_ai.operation.name": "text_completion"}
        assert rx.latest_value("bitnet.inference.tokens", **out) == 6
        assert rx.latest_value("bitnet.model.loaded", **{"gen_ai.request.model": name}) == 1
        assert rx.metric_points("bitnet.runtime.info")


def test_without_llama_cpp_the_error_names_the_extra() -> None:
    said = missing_library("llama_cpp", "bitnet_obs.instrumentation.llama_cpp:LlamaCppInstrumentor")
    assert "bitnet-obs[llamacpp]" in said
