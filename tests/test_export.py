"""Guarded exporters and drop accounting over the SDK's span queue (bitnet_obs._export)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bitnet_obs._export import GuardedSpanExporter, count_drops, drain, span_processor
from bitnet_obs._selfmon import dropped


class _Stuck(SpanExporter):
    """An exporter blocked until released, like one waiting on a black-hole collector."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(60)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_span_queue_drops_are_counted_exactly() -> None:
    stuck = _Stuck()
    guard = GuardedSpanExporter("test_stuck", stuck)
    # No timed flush: the worker wakes only for a full batch of 4, never for a partial one
    # that a slow (busy) test thread would leave it with.
    processor = span_processor(
        guard, max_queue_size=8, max_export_batch_size=4, schedule_delay_millis=600_000
    )
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    before = dropped("traces", "queue_full")
    for _ in range(4):  # the first batch goes to the stuck exporter
        tracer.start_span("s").end()
    assert stuck.entered.wait(60)  # the worker holds those 4 now; the queue is empty
    assert not processor._batch_processor._queue
    for _ in range(20):  # 8 fit in the queue, 12 push the oldest out
        tracer.start_span("s").end()
    assert dropped("traces", "queue_full") - before == 12
    stuck.release.set()
    provider.shutdown()
    assert stuck.exported == 4 + 8
    after = dropped("traces", "after_shutdown")
    tracer.start_span("late").end()
    assert dropped("traces", "after_shutdown") == after + 1


def test_failed_and_abandoned_exports_are_counted_once() -> None:
    class Failing(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            raise ConnectionError("collector gone")

    guard = GuardedSpanExporter("test_failing", Failing())
    before = dropped("traces", "export_failed")
    assert guard.export([object()] * 3) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert dropped("traces", "export_failed") == before + 3
    assert guard.health.last_error.startswith("ConnectionError")
    stuck = _Stuck()
    guard = GuardedSpanExporter("test_abandoned", stuck)
    worker = threading.Thread(target=guard.export, args=([object()] * 5,))
    worker.start()
    assert stuck.entered.wait(60)  # the export is in flight
    assert guard.flight.abandon() == 5  # the shutdown counts these as shutdown_in_flight
    shutdown_before = dropped("traces", "shutdown")
    assert guard.export([object()] * 2) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert dropped("traces", "shutdown") == shutdown_before + 2
    stuck.release.set()
    worker.join(60)
    assert dropped("traces", "export_failed") == before + 3  # nothing twice


def test_an_sdk_without_the_queue_internals_degrades_to_uncounted() -> None:
    class Other:
        pass

    count_drops(Other())  # type: ignore[arg-type]
    assert drain(Other()) == 0  # type: ignore[arg-type]
