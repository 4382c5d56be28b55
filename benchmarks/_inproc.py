"""Shared helpers for benchmarks that time cases inside one process.

``providers`` builds the export pipeline every benchmark uses (a BatchSpanProcessor over a
null exporter, an in-memory metric reader); ``interleaved`` times cases round-robin so that
drift from other load hits them alike. The per-call comparison with the peers runs each
configuration in its own process instead (``benchmarks/_percall.py``), on the same pipeline.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

Case = tuple[Callable[[], object], Callable[[], object]]  # (untimed setup, timed call)


class NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def tracer_provider(sampled: bool, processor: bool = True) -> TracerProvider:
    sampler = sampling.ALWAYS_ON if sampled else sampling.ALWAYS_OFF
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    if processor:
        provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    return provider


def meter_provider() -> MeterProvider:
    return MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)


def providers(sampled: bool) -> tuple[MeterProvider, TracerProvider]:
    return meter_provider(), tracer_provider(sampled)


def interleaved(cases: dict[str, Case], batch: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each case, measured round-robin so drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for setup, fn in cases.values():  # warm up: caches, first-series allocation
        setup()
        for _ in range(batch):
            fn()
    for _ in range(rounds):
        for name, (setup, fn) in cases.items():
            setup()
            start = time.perf_counter()
            for _ in range(batch):
                fn()
            samples[name].append((time.perf_counter() - start) / batch)
    return {name: statistics.median(values) for name, values in samples.items()}
