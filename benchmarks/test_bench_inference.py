"""Per-call overhead of @monitored_inference against the same work written by hand with the
bare OpenTelemetry SDK (same instruments, same attributes, same span), in one run.

Run with ``nox -s bench``. Nothing here asserts on time: the ratios are reported.
"""

from __future__ import annotations

import functools
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import opentelemetry.sdk.version
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import bitnet_obs
from benchmarks.conftest import REPORTERS
from bitnet_obs import _instruments

ATTRS = {
    "gen_ai.operation.name": "text_completion",
    "gen_ai.request.model": "m",
    "gen_ai.provider.name": "bitnet",
    "bitnet.quant.format": "i2_s",
    "bitnet.device": "cpu",
}
OK_ATTRS = dict(ATTRS, **{"bitnet.outcome": "ok"})
OUT_ATTRS = dict(ATTRS, **{"gen_ai.token.type": "output"})
SHORT, LONG = 50, 1050  # per-token cost = slope between the two stream lengths


class _NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _providers(sampled: bool) -> tuple[MeterProvider, TracerProvider]:
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    sampler = sampling.ALWAYS_ON if sampled else sampling.ALWAYS_OFF
    tp = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    tp.add_span_processor(BatchSpanProcessor(_NullExporter()))
    return mp, tp


def _hand_written(mp: MeterProvider, tp: TracerProvider):  # type: ignore[no-untyped-def]
    meter = mp.get_meter("hand")
    tracer = tp.get_tracer("hand")
    duration = meter.create_histogram("d", unit="s")
    throughput = meter.create_histogram("t", unit="{token}/s")
    requests = meter.create_counter("r")
    tokens = meter.create_counter("k")

    def call() -> int:
        start = time.perf_counter()
        with tracer.start_as_current_span("text_completion m", attributes=ATTRS) as span:
            result = 1
            elapsed = time.perf_counter() - start
            span.set_attribute("gen_ai.usage.output_tokens", result)
            duration.record(elapsed, ATTRS)
            throughput.record(result / elapsed, ATTRS)
            requests.add(1, OK_ATTRS)
            tokens.add(result, OUT_ATTRS)
        return result

    def stream(n_tokens: int) -> Iterator[int]:
        start = time.perf_counter()
        with tracer.start_as_current_span("text_completion m", attributes=ATTRS) as span:
            first = None
            n = 0
            for i in range(n_tokens):
                if first is None:
                    first = time.perf_counter()
                n += 1
                yield i
            end = time.perf_counter()
            span.set_attribute("gen_ai.usage.output_tokens", n)
            duration.record(end - start, ATTRS)
            throughput.record(n / (end - start), ATTRS)
            requests.add(1, OK_ATTRS)
            tokens.add(n, OUT_ATTRS)

    return call, stream


def _ours(mp: MeterProvider, tp: TracerProvider):  # type: ignore[no-untyped-def]
    """Our monitored functions, plus the setup that points bitnet-obs at these providers."""

    @bitnet_obs.monitored_inference(model="m")
    def call() -> int:
        return 1

    @bitnet_obs.monitored_inference(model="m")
    def stream(n_tokens: int) -> Iterator[int]:
        yield from range(n_tokens)

    return call, stream, functools.partial(_instruments.bind, mp, tp)


def _bare_stream(n_tokens: int) -> Iterator[int]:
    yield from range(n_tokens)


def _bare_call() -> int:
    return 1


Case = tuple[Callable[[], object], Callable[[], object]]  # (untimed setup, timed call)


def _interleaved(cases: dict[str, Case], batch: int, rounds: int) -> dict[str, float]:
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


def _nothing() -> None:
    pass


def test_call_overhead(benchmark, results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    cases: dict[str, Case] = {}
    providers = []
    for sampled in (True, False):
        mp, tp = _providers(sampled)
        providers.append(tp)
        call, _, bind = _ours(mp, tp)
        cases[f"call/bare/{sampled}"] = (_nothing, _bare_call)
        cases[f"call/hand/{sampled}"] = (_nothing, _hand_written(mp, tp)[0])
        cases[f"call/ours/{sampled}"] = (bind, call)
    # The SDK's own unit costs, to explain the ratios.
    mp, tp = _providers(True)
    histogram = mp.get_meter("unit").create_histogram("h", unit="s")
    cases["sdk/histogram_record"] = (_nothing, functools.partial(histogram.record, 0.1, ATTRS))
    sampled_tracer, unsampled_tracer = tp.get_tracer("u"), providers[1].get_tracer("u")
    cases["sdk/span_sampled"] = (_nothing, functools.partial(_span, sampled_tracer))
    cases["sdk/span_unsampled"] = (_nothing, functools.partial(_span, unsampled_tracer))
    providers.append(tp)
    measured = benchmark.pedantic(_interleaved, args=(cases, 200, 40), rounds=1, iterations=1)
    results.update(measured)
    benchmark.extra_info.update({k: v * 1e6 for k, v in measured.items()})
    for tp in providers:
        tp.shutdown()


def _span(tracer: Any) -> None:
    with tracer.start_as_current_span("text_completion m", attributes=ATTRS):
        pass


def test_stream_overhead(benchmark, results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    mp, tp = _providers(True)
    _, ours, bind = _ours(mp, tp)
    gens = {"bare": _bare_stream, "hand": _hand_written(mp, tp)[1], "ours": ours}
    cases: dict[str, Case] = {}
    for who, gen in gens.items():
        for length in (SHORT, LONG):
            cases[f"stream/{who}/{length}"] = (bind, functools.partial(_consume, gen, length))
    measured = benchmark.pedantic(_interleaved, args=(cases, 10, 40), rounds=1, iterations=1)
    results.update(measured)
    benchmark.extra_info.update({k: v * 1e6 for k, v in measured.items()})
    tp.shutdown()


def _consume(gen: Callable[[int], Iterator[int]], length: int) -> None:
    for _ in gen(length):
        pass


def report(results: dict[str, float]) -> list[str]:
    lines = [
        f"machine: {platform.machine()} {platform.processor() or ''}, Python "
        f"{platform.python_version()}, opentelemetry-sdk {opentelemetry.sdk.version.__version__}, "
        f"bitnet-obs {bitnet_obs.__version__}",
        "| case | bare fn | hand-written SDK | @monitored_inference | overhead ratio ours/hand |",
        "|---|---|---|---|---|",
    ]
    for sampled in (True, False):
        bare = results[f"call/bare/{sampled}"]
        hand = results[f"call/hand/{sampled}"] - bare
        ours = results[f"call/ours/{sampled}"] - bare
        label = "sync call, span sampled" if sampled else "sync call, span unsampled"
        lines.append(
            f"| {label} | {bare * 1e6:.2f} µs | +{hand * 1e6:.1f} µs | +{ours * 1e6:.1f} µs "
            f"| **{ours / hand:.2f}×** |"
        )

    def per_token(who: str) -> float:
        return (results[f"stream/{who}/{LONG}"] - results[f"stream/{who}/{SHORT}"]) / (LONG - SHORT)

    bare = per_token("bare")
    hand, ours = per_token("hand") - bare, per_token("ours") - bare
    lines.append(
        f"| streamed token (slope {SHORT}..{LONG} tokens) | {bare * 1e9:.0f} ns "
        f"| +{hand * 1e9:.0f} ns | +{ours * 1e9:.0f} ns | {ours / hand:.2f}× |"
    )
    fixed = results[f"stream/ours/{SHORT}"] - results[f"stream/bare/{SHORT}"] - SHORT * ours
    hand_fixed = results[f"stream/hand/{SHORT}"] - results[f"stream/bare/{SHORT}"] - SHORT * hand
    lines.append(
        f"| stream, per request (span, 4 histograms) | | +{hand_fixed * 1e6:.1f} µs "
        f"| +{fixed * 1e6:.1f} µs | {fixed / hand_fixed:.2f}× |"
    )
    lines.append(
        f"SDK unit costs in the same run: histogram record with 5 attributes "
        f"{results['sdk/histogram_record'] * 1e6:.1f} µs, span sampled "
        f"{results['sdk/span_sampled'] * 1e6:.1f} µs, span unsampled "
        f"{results['sdk/span_unsampled'] * 1e6:.1f} µs"
    )
    return lines


REPORTERS.append(report)
