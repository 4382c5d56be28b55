"""Output health on the request path (bitnet_obs._outputs through _call and _inference):
streamed, returned and reported ids are judged like ``output.detect_degenerate`` judges them,
logits are sampled, nothing raises into the call and no id leaves the process."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_obs import current_inference, monitor_inference, monitored_inference, output
from bitnet_obs._selfmon import errors as internal_errors
from bitnet_obs.testing import TelemetryCapture, capture_telemetry, override_settings, reset

REASONS = ("repeat_run", "cycle", "low_diversity")
CYCLE = [11, 12, 13] * 80  # 240 tokens cycling through 3 ids
HEALTHY = list(np.random.default_rng(1).integers(0, 32_000, 300))


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    reset()
    with capture_telemetry() as capture:
        yield capture


def degenerate(cap: TelemetryCapture, reason: str | None = None) -> float:
    if reason is None:
        return cap.value("bitnet.output.degenerate")
    return cap.value("bitnet.output.degenerate", **{"bitnet.degenerate.reason": reason})


def outputs(cap: TelemetryCapture) -> float:
    return cap.value("bitnet.output.repeat_run")  # one record per judged output


@monitored_inference(model="m")
def stream(ids: list[int]) -> Iterator[int]:
    yield from ids


def test_a_streamed_run_of_one_token_is_degenerate_and_a_healthy_stream_is_not(
    cap: TelemetryCapture,
) -> None:
    assert list(stream([int(x) for x in HEALTHY])) == HEALTHY
    assert outputs(cap) == 1 and degenerate(cap) == 0
    for reason in REASONS:  # every reason's series exists from the first judged output
        assert cap.points("bitnet.output.degenerate", **{"bitnet.degenerate.reason": reason})
    list(stream([33] * 50))
    list(stream(CYCLE))
    assert (degenerate(cap, "repeat_run"), degenerate(cap, "cycle")) == (1, 1)
    spans = cap.spans()
    assert spans[-1].attributes["bitnet.degenerate.reason"] == "cycle"
    assert "bitnet.degenerate.reason" not in spans[0].attributes


def test_no_id_leaves_the_process(cap: TelemetryCapture) -> None:
    marker = 987_654_321
    list(stream([marker] * 40))
    for span in cap.spans():
        assert marker not in span.attributes.values()
    data = cap.reader.get_metrics_data()
    assert data is not None and str(marker) not in data.to_json()


def test_a_long_stream_is_judged_in_bounded_memory_across_chunks(cap: TelemetryCapture) -> None:
    """10,000 healthy ids then a collapse: found after the 4,096-id chunk boundaries, with the
    buffer never above two chunks."""
    ids = [int(x) for x in np.random.default_rng(2).integers(0, 50_000, 10_000)] + [7] * 40
    seen: list[int] = []

    @monitored_inference(model="m")
    def long() -> Iterator[int]:
        for i, token in enumerate(ids):
            if i % 1000 == 0:
                watch = current_inference().watch  # type: ignore[attr-defined]
                if watch is not None and watch.detector is not None:
                    seen.append(len(watch.detector._buf))
            yield token

    assert sum(1 for _ in long()) == len(ids)
    assert degenerate(cap, "repeat_run") == 1
    assert max(seen) <= 2 * 4096


@settings(max_examples=40, deadline=None)
@given(
    ids=st.lists(st.integers(0, 6), min_size=0, max_size=700),
    chunk=st.integers(1, 50),
)
def test_a_stream_of_chunks_gets_the_verdict_of_the_whole_output(
    ids: list[int], chunk: int
) -> None:
    """Against the public detector on the whole list (an independent path: no streaming)."""
    expected = output.detect_degenerate(ids)
    reset()
    with capture_telemetry() as cap:

        @monitored_inference(model="m")
        def chunks() -> Iterator[list[int]]:
            for i in range(0, len(ids), chunk):
                yield ids[i : i + chunk]

        list(chunks())
        if len(ids) < 32:  # BITNET_OBS_DEGENERATE_MIN_TOKENS: not judged, nothing recorded
            assert outputs(cap) == 0 and not expected.judged
            return
        assert outputs(cap) == 1
        for reason in REASONS:
            assert degenerate(cap, reason) == (expected.reason == reason)
        [point] = cap.points("bitnet.output.repeat_run")
        assert point.sum == expected.longest_run


def test_returned_ids_are_judged_one_output_per_row(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def generate(batch: Any) -> Any:
        return batch

    generate([5] * 40)  # a list of ids
    generate(np.array([CYCLE, [int(x) for x in HEALTHY[:240]]]))  # a batch of two rows
    generate(torch.tensor([[9] * 40]))  # a tensor, as transformers returns it
    generate([[1, 2], [3, 4]])  # a batch of short rows: never judged, nothing recorded
    generate([1, 2, 3])  # a short answer: the same
    generate("text")  # not ids
    generate(np.zeros((2, 5), np.float32))  # logits, not ids
    assert outputs(cap) == 1 + 2 + 1
    assert (degenerate(cap, "repeat_run"), degenerate(cap, "cycle")) == (2, 1)
    assert cap.spans()[1].attributes["bitnet.output.degenerate_sequences"] == 1


def test_add_output_ids_continues_one_output_and_counts_its_tokens(
    cap: TelemetryCapture,
) -> None:
    @monitored_inference(model="m")
    def generate() -> str:
        inf = current_inference()
        inf.add_output_ids([4] * 20)  # neither half alone is a run of 32
        inf.add_output_ids(np.full(20, 4, np.int32))
        return "decoded text"

    generate()
    assert degenerate(cap, "repeat_run") == 1
    assert cap.value("bitnet.inference.tokens", **{"bitnet.token.type": "output"}) == 40


def test_add_output_ids_with_a_batch_and_the_returned_ids_are_judged_once(
    cap: TelemetryCapture,
) -> None:
    @monitored_inference(model="m")
    def generate() -> list[list[int]]:
        rows = [[3] * 40, [int(x) for x in HEALTHY[:40]]]
        current_inference().add_output_ids(rows)
        return rows

    generate()
    assert outputs(cap) == 2 and degenerate(cap) == 1
    assert cap.value("bitnet.inference.tokens", **{"bitnet.token.type": "output"}) == 80


@pytest.mark.parametrize(
    "bad",
    [["a", "b"], [1.5, 2.5], np.zeros((2, 2, 2), np.int64), None, 3, [2**70], {"ids": [1]}],
)
def test_bad_ids_are_counted_and_never_raise(cap: TelemetryCapture, bad: Any) -> None:
    @monitored_inference(model="m")
    def generate() -> int:
        current_inference().add_output_ids(bad)
        return 1

    before = internal_errors("bad_output_ids")
    assert generate() == 1
    assert internal_errors("bad_output_ids") == before + 1


def test_a_streamed_id_beyond_int64_stops_judging_without_breaking_the_stream(
    cap: TelemetryCapture,
) -> None:
    ids = [7] * 40 + [2**64] + [1, 2, 3]
    before = internal_errors("bad_output_ids")
    assert list(stream(ids)) == ids
    assert internal_errors("bad_output_ids") == before + 1
    assert degenerate(cap, "repeat_run") == 1  # what came before the bad id is judged
    assert cap.value("bitnet.inference.tokens", **{"bitnet.token.type": "output"}) == len(ids)


def test_an_async_stream_is_judged(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    async def agen() -> AsyncIterator[int]:
        for token in CYCLE:
            yield token

    async def consume() -> list[int]:
        return [t async for t in agen()]

    assert asyncio.run(consume()) == CYCLE
    assert degenerate(cap, "cycle") == 1


def test_a_failed_call_records_no_verdict(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def broken() -> Iterator[int]:
        yield from [7] * 40
        raise RuntimeError("kernel fault")

    with pytest.raises(RuntimeError, match="kernel fault"):
        list(broken())
    assert outputs(cap) == 0


def test_detection_off_records_nothing(cap: TelemetryCapture) -> None:
    with override_settings(degenerate_detection=False):
        list(stream([7] * 40))
        assert list(stream(CYCLE)) == CYCLE
    assert outputs(cap) == 0 and degenerate(cap) == 0


def test_thresholds_come_from_the_settings(cap: TelemetryCapture) -> None:
    with override_settings({"BITNET_OBS_DEGENERATE_REPEAT_RUN": "64"}):
        list(stream([7] * 40))
    assert degenerate(cap, "repeat_run") == 0


def test_a_call_that_yields_text_never_imports_the_output_glue() -> None:
    import subprocess

    code = (
        "import sys, bitnet_obs\n"
        "@bitnet_obs.monitored_inference(model='m')\n"
        "def g():\n"
        "    yield 'a'\n"
        "    yield 'b'\n"
        "@bitnet_obs.monitored_inference(model='m')\n"
        "def f():\n"
        "    return 'text'\n"
        "list(g()); f()\n"
        "print('bitnet_obs._outputs' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ logits


def logits(steps: int, vocab: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((steps, vocab)).astype(np.float32)


def test_sampled_logits_record_entropy_and_margin_per_step(cap: TelemetryCapture) -> None:
    x = logits(3)

    @monitored_inference(model="m")
    def generate() -> int:
        current_inference().observe_logits(x)
        return 1

    with override_settings(logits_sample_rate=1.0, quant_budget=1.0):
        generate()
    stats = output.logits_stats(x)
    [entropy] = cap.points("bitnet.output.logits.entropy")
    [margin] = cap.points("bitnet.output.logits.top1_margin")
    assert entropy.count == 3 and entropy.sum == pytest.approx(float(stats.entropy.sum()))
    assert margin.sum == pytest.approx(float(stats.top1_margin.sum()))


def test_unsampled_logits_are_never_built(cap: TelemetryCapture) -> None:
    built = []

    def lazy() -> np.ndarray:
        built.append(1)
        return logits(1)

    @monitored_inference(model="m")
    def generate() -> int:
        for _ in range(5):
            current_inference().observe_logits(lazy)
        return 1

    with override_settings(logits_sample_rate=0.0, quant_sample_rate=1.0):
        generate()
    assert built == [] and cap.value("bitnet.output.logits.entropy") == 0
    skipped = {"bitnet.quant.kind": "logits", "bitnet.quant.skip_reason": "sampling"}
    assert cap.value("bitnet.quant.samples_skipped", **skipped) == 1  # one draw per call


def test_long_logits_are_cut_to_the_last_steps_and_bad_ones_are_counted(
    cap: TelemetryCapture,
) -> None:
    @monitored_inference(model="m")
    def generate(x: Any) -> int:
        current_inference().observe_logits(x)
        return 1

    with override_settings(logits_sample_rate=1.0, quant_budget=1.0):
        generate(torch.from_numpy(logits(500)))
        assert cap.value("bitnet.output.logits.entropy") == 64
        generate(torch.from_numpy(logits(2)).to(torch.bfloat16))  # a bf16 model's logits
        assert cap.value("bitnet.output.logits.entropy") == 66
        generate([[0.5, 1.5, -2.0]])  # a list of steps: numbers are logits too
        assert cap.value("bitnet.output.logits.entropy") == 67
        before = internal_errors("bad_logits")
        bad = logits(2)
        bad[0, 3] = np.nan
        assert generate(bad) == 1
        assert generate("not logits") == 1
        assert internal_errors("bad_logits") == before + 2


# ------------------------------------------------------------------ mark_token


def test_mark_token_times_a_callback_engine_as_a_stream(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def generate() -> int:
        inf = current_inference()
        for _ in range(5):
            inf.mark_token()
        inf.add_output_tokens(5)
        return 5

    generate()
    assert cap.value("bitnet.inference.inter_token_latency") == 4
    assert cap.spans()[0].attributes["gen_ai.request.stream"] is True


def test_set_stream_says_whether_the_caller_got_a_stream(cap: TelemetryCapture) -> None:
    """An engine that marks every decoding step of a call answered in one piece: its gaps are
    recorded, and the span says it was not streamed (no time to first chunk either)."""

    @monitored_inference(model="m")
    def generate(streamed: bool | None) -> int:
        inf = current_inference()
        if streamed is not None:
            inf.set_stream(streamed)
        for _ in range(4):
            inf.mark_token()
        inf.add_output_tokens(4)
        return 4

    before = internal_errors("bad_stream_flag")
    generate(False)
    generate(True)
    generate(None)
    current_inference().set_stream(True)  # outside a call: nothing, and no error
    with monitor_inference(model="m") as inf:
        inf.set_stream("yes")  # type: ignore[arg-type]  # counted, ignored
    assert internal_errors("bad_stream_flag") == before + 1
    assert cap.value("bitnet.inference.inter_token_latency") == 9
    flags = [s.attributes["gen_ai.request.stream"] for s in cap.spans()]
    assert flags == [False, True, True, False]
    chunked = ["gen_ai.response.time_to_first_chunk" in s.attributes for s in cap.spans()]
    assert chunked == [False, True, True, False]


def test_mark_token_inside_a_generator_is_ignored(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def gen() -> Iterator[str]:
        for word in ("a", "b", "c"):
            current_inference().mark_token()
            yield word

    list(gen())
    assert cap.value("bitnet.inference.inter_token_latency") == 2  # the items' gaps only
