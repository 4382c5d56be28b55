"""The request in flight: validated counts, pairing of begin and end whatever happens, and no
caller text in logs or unclipped text on spans (bitnet_obs._call)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import MetricExportResult

import bitnet_obs
from bitnet_obs import current_inference, monitor_inference, monitored_inference, quant
from bitnet_obs._call import CONTENT_LIMIT
from bitnet_obs._selfmon import errors as internal_errors
from bitnet_obs.testing import (
    OTLPReceiver,
    TelemetryCapture,
    capture_telemetry,
    override_settings,
    reset,
)

OK = {"bitnet.outcome": "ok"}
OUT = {"bitnet.token.type": "output"}
SECRET = "Dear Dr. Smith, the biopsy shows"


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    reset()  # internal errors are logged once per kind: start with none logged
    with capture_telemetry() as capture:
        yield capture


def active(cap: TelemetryCapture) -> float:
    return cap.value("bitnet.inference.active_requests")


def test_an_out_of_range_count_is_refused_and_later_exports_still_work(
    cap: TelemetryCapture,
) -> None:
    @monitored_inference(model="m")
    def generate() -> int:
        current_inference().add_output_tokens(2**64)  # once stopped every OTLP export
        current_inference().add_output_tokens(np.int64(4))  # a numpy integer is a count
        return 0

    before = internal_errors("bad_token_count")
    generate()
    assert internal_errors("bad_token_count") == before + 1
    assert cap.value("bitnet.inference.tokens", **OUT) == 4
    data = cap.reader.get_metrics_data()
    with OTLPReceiver() as rx:
        exporter = OTLPMetricExporter(endpoint=rx.http_endpoint + "/v1/metrics")
        assert exporter.export(data) is MetricExportResult.SUCCESS
        exporter.shutdown()


@pytest.mark.parametrize(
    ("count_output", "returned", "recorded"),
    [(None, -5, 0), (lambda _: 2.9, [1], 0), (None, np.int64(7), 7), (lambda r: r, 3, 3)],
)
def test_returned_and_counted_values_are_validated(
    cap: TelemetryCapture, count_output: Any, returned: Any, recorded: int
) -> None:
    generate = monitored_inference(model="m", count_output=count_output)(lambda: returned)
    generate()
    assert cap.value("bitnet.inference.tokens", **OUT) == recorded


def test_no_caller_text_in_logs_unless_capture_is_on(
    cap: TelemetryCapture, caplog: pytest.LogCaptureFixture
) -> None:
    def count(result: Any) -> int:
        raise ValueError(f"cannot count {result!r}")  # quotes the response

    @monitored_inference(model="m", count_output=count)
    def generate() -> str:
        inf = current_inference()
        inf.add_output_tokens(SECRET)  # type: ignore[arg-type]
        inf.set_device(SECRET)
        inf.fallback(SECRET, "cpu", "oom")
        return SECRET

    with caplog.at_level(logging.DEBUG, logger="bitnet_obs"):
        assert generate() == SECRET
    assert caplog.records, "the failures are logged"
    assert "Dr. Smith" not in caplog.text
    assert "str of length 32" in caplog.text  # the type and length instead
    reset()  # log again, with content capture on: the exception may now be shown
    with override_settings(capture_content=True), caplog.at_level(logging.DEBUG):
        generate()
    assert "Dr. Smith" in caplog.text


def test_with_capture_on_every_text_is_clipped_to_one_bound(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m", capture_content=True)
    def fail(prompt: str) -> None:
        raise RuntimeError("x" * 5_000_000)

    with pytest.raises(RuntimeError):
        fail("p" * 100_000)
    (span,) = cap.spans()
    (event,) = span.events
    assert event.attributes is not None
    for key in ("exception.message", "exception.stacktrace"):
        assert len(str(event.attributes[key])) <= CONTENT_LIMIT + 1
    assert span.attributes is not None
    assert len(str(span.attributes["gen_ai.input.messages"])) < CONTENT_LIMIT + 100

    @monitored_inference(model="m", capture_content=True)
    def stream(n: int) -> Iterator[str]:
        for _ in range(n):
            yield "word "

    tracemalloc.start()
    for _ in stream(300_000):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000, peak  # unclipped, 300k items held ~20 MB
    span = cap.spans()[-1]
    assert span.attributes is not None
    assert len(str(span.attributes["gen_ai.output.messages"])) < CONTENT_LIMIT + 100
    assert cap.value("bitnet.inference.tokens", **OUT) == 300_000


def test_recursion_into_recursion_error_leaves_nothing_active(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def deep(n: int) -> int:
        return deep(n + 1)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(300)
    try:
        with pytest.raises(RecursionError):
            deep(0)
    finally:
        sys.setrecursionlimit(limit)
    assert active(cap) == 0
    assert cap.value("bitnet.inference.requests") > 0


def test_interleaved_with_blocks_of_two_generators(cap: TelemetryCapture) -> None:
    monitor = monitor_inference(model="m")  # one shared monitor object

    def worker(n: int) -> Iterator[str | None]:
        with monitor as inf:
            inf.add_output_tokens(n)
            yield current_inference().model
            yield current_inference().model

    a, b = worker(2), worker(3)
    assert next(a) == "m" and next(b) == "m"  # a entered, then b
    assert next(a) == "m"
    with pytest.raises(StopIteration):
        next(a)  # a's block ends while b's is still open
    assert current_inference().recording  # b's call is still the current one
    assert next(b) == "m"
    with pytest.raises(StopIteration):
        next(b)
    assert not current_inference().recording
    assert not trace.get_current_span().get_span_context().is_valid  # no span left behind
    assert cap.value("bitnet.inference.requests", **OK) == 2
    assert cap.value("bitnet.inference.tokens", **OUT) == 5
    assert active(cap) == 0


async def test_bind_context_carries_the_call_into_run_in_executor(cap: TelemetryCapture) -> None:
    def decode() -> None:
        current_inference().add_output_tokens(3)

    @monitored_inference(model="m")
    async def generate(bound: bool) -> None:
        loop = asyncio.get_running_loop()
        work = bitnet_obs.bind_context(decode) if bound else decode
        await loop.run_in_executor(None, work)

    await generate(bound=False)  # the executor thread has no context of ours
    assert cap.value("bitnet.inference.tokens", **OUT) == 0
    await generate(bound=True)
    assert cap.value("bitnet.inference.tokens", **OUT) == 3
    bound = bitnet_obs.bind_context(contextvars.copy_context)
    threads = [threading.Thread(target=bound) for _ in range(4)]  # several runs at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_capture_under_a_request_in_flight_keeps_active_exact() -> None:
    monitor = monitor_inference(model="m")
    inf = monitor.__enter__()
    with capture_telemetry() as cap:  # zeroes event counts, not what is in flight now
        monitor.__exit__(None, None, None)
        assert active(cap) == 0
        assert cap.value("bitnet.inference.requests", **OK) == 1
    assert not inf.recording


def test_a_lazy_reference_that_raises_is_a_counted_skip(cap: TelemetryCapture) -> None:
    def reference() -> np.ndarray:
        raise OSError("reference model unavailable")

    with override_settings(quant_sample_rate=1.0, quant_budget=1.0):
        assert quant.compare_outputs("t", reference, np.ones(4)) is None
    skipped = cap.value("bitnet.quant.samples_skipped", **{"bitnet.quant.skip_reason": "error"})
    assert skipped == 1
    assert cap.value("bitnet.quant.operations") == 0


def test_inter_token_gaps_prefill_decode_and_queue_wait(cap: TelemetryCapture) -> None:
    import time

    @monitored_inference(model="m")
    def stream(n: int) -> Iterator[int]:
        time.sleep(0.03)  # prefill
        for i in range(n):
            if i:
                time.sleep(0.01 if i != 3 else 0.05)  # one stall
            yield i

    queue = bitnet_obs.RequestQueue("q")
    ticket = queue.enqueue()
    time.sleep(0.04)
    queue.dequeue(ticket)  # handed to the next call: its TTFT and duration count the wait
    assert list(stream(6)) == list(range(6))
    (gaps,) = cap.points("bitnet.inference.inter_token_latency")
    assert gaps.count == 5 and gaps.min is not None and gaps.max is not None
    assert gaps.min >= 0.01 and gaps.max >= 0.05  # the stall shows in the distribution
    (prefill,) = cap.points("bitnet.inference.prefill.duration")
    (ttft,) = cap.points("gen_ai.server.time_to_first_token")
    (decode,) = cap.points("bitnet.inference.decode.duration")
    (duration,) = cap.points("gen_ai.server.request.duration")
    assert prefill.sum is not None and ttft.sum is not None and decode.sum is not None
    assert prefill.sum >= 0.03 and ttft.sum >= prefill.sum + 0.04
    assert decode.sum >= 0.09
    assert duration.sum is not None and duration.sum >= ttft.sum + decode.sum - 1e-9
    long_stream = monitored_inference(model="long")(lambda n: (i for i in range(n)))
    assert sum(1 for _ in long_stream(3 * 4096 + 5)) == 3 * 4096 + 5  # flushed in chunks
    (long_gaps,) = cap.points(
        "bitnet.inference.inter_token_latency", **{"gen_ai.request.model": "long"}
    )
    assert long_gaps.count == 3 * 4096 + 4


def test_kernel_fallback_finish_reason_and_stream_attributes(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m", kernel="i2_s_avx2")
    def generate(path: str) -> Iterator[int]:
        inf = current_inference()
        inf.set_kernel(path)
        inf.set_kernel("scalar")  # a second report changes the span, not the count
        inf.set_finish_reason("length")
        yield 1
        yield 2

    list(generate("i2_s_avx2"))
    list(generate("scalar"))  # no AVX2 on this machine: a silent fallback, now counted
    fallbacks = cap.points("bitnet.kernel.fallbacks")
    assert [(p.attributes, p.value) for p in fallbacks if p.value] == [
        (
            {
                "gen_ai.request.model": "m",
                "bitnet.kernel.declared": "i2_s_avx2",
                "bitnet.kernel.actual": "scalar",
            },
            1,
        )
    ]
    length = {"bitnet.response.finish_reason": "length", **OK}
    assert cap.value("bitnet.inference.requests", **length) == 2
    span = cap.spans()[-1]
    assert span.attributes is not None
    assert span.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert span.attributes["gen_ai.request.stream"] is True
    assert span.attributes["gen_ai.response.time_to_first_chunk"] >= 0  # type: ignore[operator]
    assert span.attributes["bitnet.kernel"] == "scalar"

    @monitored_inference(model="m")
    def plain() -> list[int]:
        current_inference().set_finish_reason("made up")  # bounded: "other", counted
        current_inference().set_kernel("Not A Kernel!")  # refused, counted
        return [1]

    before = internal_errors()
    plain()
    assert internal_errors() == before + 2
    assert cap.value("bitnet.inference.requests", **{"bitnet.response.finish_reason": "other"})
    assert cap.spans()[-1].attributes["gen_ai.request.stream"] is False  # type: ignore[index]
    with pytest.raises(bitnet_obs.ConfigError, match="kernel="):
        monitored_inference(model="m", kernel="AVX 2")
