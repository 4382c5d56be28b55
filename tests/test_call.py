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
OUT = {"gen_ai.token.type": "output"}
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
