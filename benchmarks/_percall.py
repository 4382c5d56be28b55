"""The per-call configurations, one per process: ``python -m benchmarks._percall KIND``.

Every configuration wraps the same no-op function returning 4 token ids and uses the same
export pipeline: a BatchSpanProcessor over a null exporter and an in-memory metric reader.
Each also times the bare function (and the bare generator) in its own process, so the
parent reports overhead over the bare call of the same interpreter.

Ours goes through public API only (``bitnet_obs.configure(...)`` with ``metric_readers`` /
``span_exporters``, or an application-installed SDK for API mode), so the figures follow
whatever the request path on main does.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from benchmarks._inproc import NullExporter, meter_provider, tracer_provider
from benchmarks._worker import Handler, PeerMissing, serve, time_batch

# The attributes @monitored_inference(model="m") records today (docs/metrics.md).
ATTRS = {
    "gen_ai.operation.name": "text_completion",
    "gen_ai.request.model": "m",
    "gen_ai.provider.name": "bitnet",
    "bitnet.quant.format": "i2_s",
    "bitnet.device": "cpu",
}
OK_ATTRS = dict(ATTRS, **{"bitnet.outcome": "ok"})
OUT_ATTRS = dict(ATTRS, **{"bitnet.token.type": "output"})
# Same boundaries as the catalogue: the GenAI semantic conventions' duration advice, and
# 1-2-5 steps for tokens/s.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
THROUGHPUT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
                      5000.0, 10000.0)  # fmt: skip
STREAM_LENGTHS = (50, 1050)  # per-token cost = slope between the two
INSTALL_HINT = "`nox -s bench` installs it; see docs/performance.md"

Timed = Callable[[], object]


def generate() -> list[int]:
    """The inference stand-in: a no-op returning 4 token ids."""
    return [1, 2, 3, 4]


def bare_stream(n_tokens: int) -> Iterator[int]:
    yield from range(n_tokens)


def _consume(gen: Callable[[int], Iterator[int]], length: int) -> None:
    for _ in gen(length):
        pass


def _streams(who: str, gen: Callable[[int], Iterator[int]]) -> dict[str, Timed]:
    cases: dict[str, Timed] = {}
    for length in STREAM_LENGTHS:
        cases[f"stream/{who}/{length}"] = functools.partial(_consume, gen, length)
        cases[f"stream/bare/{length}"] = functools.partial(_consume, bare_stream, length)
    return cases


# --- hand-written bare SDK ------------------------------------------------------------------


def _hand_written(
    mp: MeterProvider, tracer: trace.Tracer | None
) -> tuple[Timed, Callable[[int], Iterator[int]]]:
    """The same telemetry written by hand: span, 2 histograms, 2 counters, same attributes.

    Returns the call and the streaming generator (``tracer=None``: metrics only).
    """
    meter = mp.get_meter("hand")
    duration = meter.create_histogram(
        "gen_ai.server.request.duration", unit="s",
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )  # fmt: skip
    throughput = meter.create_histogram(
        "bitnet.inference.throughput", unit="{token}/s",
        explicit_bucket_boundaries_advisory=THROUGHPUT_BUCKETS,
    )  # fmt: skip
    requests = meter.create_counter("bitnet.inference.requests", unit="{request}")
    tokens = meter.create_counter("bitnet.inference.tokens", unit="{token}")
    span_cm = (
        contextlib.nullcontext
        if tracer is None
        else functools.partial(tracer.start_as_current_span, "text_completion m", attributes=ATTRS)
    )

    def record(span: Any, start: float, n: int) -> None:
        if span is not None:
            span.set_attribute("gen_ai.usage.output_tokens", n)
        elapsed = time.perf_counter() - start
        duration.record(elapsed, ATTRS)
        throughput.record(n / elapsed, ATTRS)
        requests.add(1, OK_ATTRS)
        tokens.add(n, OUT_ATTRS)

    def call() -> list[int]:
        start = time.perf_counter()
        with span_cm() as span:
            result = generate()
            record(span, start, len(result))
        return result

    def stream(n_tokens: int) -> Iterator[int]:
        start = time.perf_counter()
        with span_cm() as span:
            n = 0
            for i in range(n_tokens):
                n += 1
                yield i
            record(span, start, n)

    return call, stream


def _span(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("text_completion m", attributes=ATTRS):
        pass


def sdk_cases() -> dict[str, Timed]:
    """Hand-written SDK code (sampled, unsampled, metrics only) and the SDK's unit costs."""
    sampled, unsampled = tracer_provider(True), tracer_provider(False)
    cases: dict[str, Timed] = {"bare": generate}
    call, stream = _hand_written(meter_provider(), sampled.get_tracer("h"))
    cases["hand/sampled"] = call
    cases.update(_streams("hand", stream))
    cases["hand/unsampled"] = _hand_written(meter_provider(), unsampled.get_tracer("h"))[0]
    cases["hand/metrics"] = _hand_written(meter_provider(), None)[0]
    histogram = meter_provider().get_meter("unit").create_histogram("h", unit="s")
    cases["unit/histogram_record"] = functools.partial(histogram.record, 0.1, ATTRS)
    cases["unit/span_sampled"] = functools.partial(_span, sampled.get_tracer("u"))
    cases["unit/span_unsampled"] = functools.partial(_span, unsampled.get_tracer("u"))
    return cases


# --- bitnet-obs -----------------------------------------------------------------------------


def ours_cases(mode: str, detection: bool = True) -> dict[str, Timed]:
    """``configure()`` owns the pipeline: sampled, unsampled, or traces off (metrics only).

    ``detection=False`` turns degenerate-output detection off, to show what it costs (the
    no-op's 4 returned ids are judged like any output); a main without that setting skips.
    """
    import bitnet_obs

    environ = {
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_TRACES_SAMPLER": "always_off" if mode == "unsampled" else "always_on",
        "BITNET_OBS_SERVER": "off",
        "BITNET_OBS_DEVICE_METRICS": "none",
    }
    if not detection:
        environ["BITNET_OBS_DEGENERATE_DETECTION"] = "false"
    telemetry = bitnet_obs.configure(
        environ=environ,
        metric_readers=[InMemoryMetricReader()],
        span_exporters=[] if mode == "metrics" else [NullExporter()],
    )
    if not detection and getattr(telemetry.settings, "degenerate_detection", None) is not False:
        raise PeerMissing("this bitnet-obs has no BITNET_OBS_DEGENERATE_DETECTION setting")
    return _monitored("ours")


def ours_api_cases() -> dict[str, Timed]:
    """API mode: the application installed its own SDK; bitnet-obs reports through it."""
    metrics.set_meter_provider(meter_provider())
    trace.set_tracer_provider(tracer_provider(True))
    return _monitored("ours")


def _monitored(who: str) -> dict[str, Timed]:
    import bitnet_obs

    @bitnet_obs.monitored_inference(model="m")
    def call() -> list[int]:
        return generate()

    @bitnet_obs.monitored_inference(model="m")
    def stream(n_tokens: int) -> Iterator[int]:
        yield from range(n_tokens)

    return {"bare": generate, "call": call, **_streams(who, stream)}


# --- peers ----------------------------------------------------------------------------------


def openlit_cases() -> dict[str, Timed]:
    """OpenLIT's ``@openlit.trace`` (a span, no metrics) on our SDK tracer provider."""
    trace.set_tracer_provider(tracer_provider(True))
    return {"bare": generate, "call": openlit_traced()}


def openlit_traced() -> Timed:
    """``generate`` under OpenLIT's ``@openlit.trace``, on the installed TracerProvider."""
    try:
        import openlit
        from openlit._instrumentors import MODULE_NAME_MAP
    except ImportError as exc:
        raise PeerMissing(f"OpenLIT is not installed ({exc}); {INSTALL_HINT}") from exc
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as pricing:
        pricing.write("{}")  # no network: the default fetches a price list from GitHub
    # init() is what sets the names @trace stamps on each span (without it every call logs an
    # error); it reuses the installed TracerProvider. Every auto-instrumentor is off.
    openlit.init(
        application_name="bench",
        disabled_instrumentors=list(MODULE_NAME_MAP),
        disable_metrics=True,
        disable_events=True,
        pricing_json=pricing.name,
    )

    @openlit.trace
    def call() -> list[int]:
        return generate()

    return call  # type: ignore[no-any-return]


def traceloop_cases() -> dict[str, Timed]:
    """OpenLLMetry's ``@workflow`` (a span, no metrics); defaults otherwise (content traced)."""
    trace.set_tracer_provider(tracer_provider(True, processor=False))  # Traceloop adds it
    return {"bare": generate, "call": traceloop_traced()}


def traceloop_traced() -> Timed:
    """``generate`` under OpenLLMetry's ``@workflow``; its BatchSpanProcessor added to the
    installed TracerProvider (which must have none of its own)."""
    try:
        from traceloop.sdk import Traceloop
        from traceloop.sdk.decorators import workflow
    except ImportError as exc:
        raise PeerMissing(f"OpenLLMetry is not installed ({exc}); {INSTALL_HINT}") from exc
    Traceloop.init(
        app_name="bench",
        processor=BatchSpanProcessor(NullExporter()),
        telemetry_enabled=False,
        instruments=set(),
    )

    @workflow(name="generate")
    def call() -> list[int]:
        return generate()

    return call


def prometheus_client_cases() -> dict[str, Timed]:
    """vLLM's way: prometheus_client, 2 histograms and 2 counters on pre-bound children."""
    try:
        from prometheus_client import CollectorRegistry, Counter, Histogram
    except ImportError as exc:
        raise PeerMissing(f"prometheus_client is not installed ({exc})") from exc
    registry = CollectorRegistry()
    names = [k.replace(".", "_") for k in ATTRS]
    values = list(ATTRS.values())
    duration = Histogram(
        "gen_ai_server_request_duration_seconds", "d", names,
        buckets=DURATION_BUCKETS, registry=registry,
    ).labels(*values)  # fmt: skip
    throughput = Histogram(
        "bitnet_inference_throughput_per_second", "t", names,
        buckets=THROUGHPUT_BUCKETS, registry=registry,
    ).labels(*values)  # fmt: skip
    requests = Counter(
        "bitnet_inference_requests", "r", [*names, "bitnet_outcome"], registry=registry
    ).labels(*values, "ok")
    tokens = Counter(
        "bitnet_inference_tokens", "k", [*names, "bitnet_token_type"], registry=registry
    ).labels(*values, "output")

    def call() -> list[int]:
        start = time.perf_counter()
        result = generate()
        elapsed = time.perf_counter() - start
        duration.observe(elapsed)
        throughput.observe(len(result) / elapsed)
        requests.inc()
        tokens.inc(len(result))
        return result

    return {"bare": generate, "call": call}


KINDS: dict[str, Callable[[], dict[str, Timed]]] = {
    "sdk": sdk_cases,
    "ours-sampled": functools.partial(ours_cases, "sampled"),
    "ours-unsampled": functools.partial(ours_cases, "unsampled"),
    "ours-metrics": functools.partial(ours_cases, "metrics"),
    "ours-api": ours_api_cases,
    "ours-sampled-nodetect": functools.partial(ours_cases, "sampled", detection=False),
    "ours-unsampled-nodetect": functools.partial(ours_cases, "unsampled", detection=False),
    "ours-metrics-nodetect": functools.partial(ours_cases, "metrics", detection=False),
    **{
        f"base-{mode}": KIND
        for mode, KIND in (
            ("sampled", functools.partial(ours_cases, "sampled")),
            ("unsampled", functools.partial(ours_cases, "unsampled")),
            ("metrics", functools.partial(ours_cases, "metrics")),
            ("api", ours_api_cases),
        )
    },  # the same code run on another checkout's src (BENCH_BASELINE_SRC)
    "openlit": openlit_cases,
    "traceloop": traceloop_cases,
    "prometheus_client": prometheus_client_cases,
}


BASELINE_KINDS = tuple(kind for kind in KINDS if kind.startswith("base-"))


def _setup(kind: str) -> Mapping[str, Handler]:
    cases = KINDS[kind]()

    def run(request: dict[str, Any]) -> dict[str, Any]:
        return time_batch(cases[request["case"]], int(request["n"]))

    return {"run": run, "cases": lambda _request: {"cases": sorted(cases)}}


if __name__ == "__main__":
    serve(functools.partial(_setup, sys.argv[1]))
