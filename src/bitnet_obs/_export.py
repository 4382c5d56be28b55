"""Exporters by name, samplers, the resource, and everything that touches SDK internals.

Exporter names and the signals each carries are declared in :data:`bitnet_obs._config.EXPORTERS`
(configuration validates against them); this module holds one builder per (signal, name) in
:data:`METRIC_BUILDERS` / :data:`SPAN_BUILDERS`. Adding an exporter is one entry there plus its
builder here.

Every push exporter is wrapped in a guard: no exception escapes into the SDK, every outcome is
recorded in the exporter's health (``bitnet.obs.exports``, the ``exporters`` health check), and
what is given up is counted in ``bitnet.obs.dropped``, by reason: ``queue_full`` (the SDK's batch
span queue holds 2048 spans and drops the oldest; it counts only with its internal metrics on,
so we count through a shim), ``export_failed``, ``shutdown`` (still queued when the shutdown
deadline passed), ``shutdown_in_flight`` (being sent then: a slow collector may still get it)
and ``after_shutdown``. Metric points of a failed export are counted the same way; with
cumulative temporality the next export still carries the totals, so those lose resolution, not
counts.

The SDK internals used (all optional: another SDK shape degrades to uncounted drops) are the
batch span processor's queue and metrics object; they live here and nowhere else.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

from opentelemetry.sdk.metrics import Counter as SdkCounter
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import (
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics import _Gauge as Gauge
from opentelemetry.sdk.metrics._internal.exemplar import Exemplar as SdkExemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import Aggregation, ExponentialBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, sampling
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.sdk.version import __version__ as sdk_version

from bitnet_obs import _otlp as _otlp_rules
from bitnet_obs._aggregate import Point, Store
from bitnet_obs._config import OTLPSettings, Settings
from bitnet_obs._exposition import PullReader
from bitnet_obs._instruments import BY_NAME, SCOPE
from bitnet_obs._selfmon import count_dropped, exporter_health, internal_error, logger
from bitnet_obs._semconv import SCHEMA_URL
from bitnet_obs._version import __version__

INSTRUMENT_TYPES: tuple[type, ...] = (
    SdkCounter,
    UpDownCounter,
    SdkHistogram,
    Gauge,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
)


def cardinality_limits(settings: Settings) -> dict[type, int]:
    return dict.fromkeys(INSTRUMENT_TYPES, settings.cardinality_limit)


# --- guards ------------------------------------------------------------------------------------


class _InFlight:
    """Exports in progress, so a shutdown that gives up on them counts what they carried once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: dict[int, int] = {}  # token -> items
        self._next = 0
        self.closed = False

    def start(self, items: int) -> int | None:
        """A token for this export, or None once abandoned (the caller counts the items)."""
        with self._lock:
            if self.closed:
                return None
            self._next += 1
            self._batches[self._next] = items
            return self._next

    def finish(self, token: int) -> bool:
        """True when the outcome is still ours to record (not abandoned meanwhile)."""
        with self._lock:
            return self._batches.pop(token, None) is not None

    def abandon(self) -> int:
        """Close for good; the items of the exports still running."""
        with self._lock:
            self.closed = True
            items = sum(self._batches.values())
            self._batches.clear()
            return items


def _points(metrics_data: MetricsData) -> int:
    try:
        return sum(
            len(metric.data.data_points)
            for resource in metrics_data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        )
    except Exception:  # an SDK shape we do not know: count the batch as one
        return 1


class Guard:
    """What both guarded exporters share: no exception escapes, every outcome is recorded in
    the exporter's health, and what is given up is counted in ``bitnet.obs.dropped``."""

    signal = ""

    def _guard(self, name: str) -> None:
        self.health = exporter_health(name)
        self.muted = False  # set in a forked child: the parent's pipeline must not send twice
        self.flight = _InFlight()

    def _send(self, items: int, send: Callable[[], bool]) -> bool:
        token = self.flight.start(items)
        if token is None:
            count_dropped(self.signal, "shutdown", items)
            return False
        error = ""
        try:
            if not send():
                error = "export returned FAILURE"
        except Exception as exc:
            internal_error(f"exporter:{self.health.name}", exc)
            error = repr(exc)
        if self.flight.finish(token):
            self.health.record(not error, error)
            if error:
                count_dropped(self.signal, "export_failed", items)
        return not error

    def _quietly(self, call: Callable[[], Any], default: Any) -> Any:
        try:
            return call()
        except Exception as exc:
            internal_error(f"exporter:{self.health.name}", exc)
            return default

    def abort(self) -> None:
        """Interrupt a retrying export (the shutdown deadline passed)."""


class GuardedMetricExporter(MetricExporter, Guard):
    signal = "metrics"

    def __init__(self, name: str, inner: MetricExporter) -> None:
        super().__init__(inner._preferred_temporality, inner._preferred_aggregation)
        self.inner = inner
        self._guard(name)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self.muted:
            return MetricExportResult.SUCCESS
        ok = self._send(
            _points(metrics_data),
            lambda: (
                self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
                is MetricExportResult.SUCCESS
            ),
        )
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return bool(self._quietly(lambda: self.inner.force_flush(timeout_millis), False))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._quietly(lambda: self.inner.shutdown(timeout_millis=timeout_millis), None)

    def abort(self) -> None:
        self.inner.shutdown(timeout_millis=1)


class GuardedSpanExporter(SpanExporter, Guard):
    signal = "traces"

    def __init__(self, name: str, inner: SpanExporter) -> None:
        self.inner = inner
        self._guard(name)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.muted:
            return SpanExportResult.SUCCESS
        ok = self._send(len(spans), lambda: self.inner.export(spans) is SpanExportResult.SUCCESS)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self._quietly(lambda: self.inner.force_flush(timeout_millis), False))

    def shutdown(self) -> None:
        self._quietly(self.inner.shutdown, None)

    def abort(self) -> None:
        self.inner.shutdown()


# --- SDK internals: the batch span queue --------------------------------------------------------


class _DropCounter:
    """Stands in for the SDK batch processor's own metrics object and counts its drops in ours.

    ``drop_items`` runs on the application's thread: it stays cheap and never raises.
    """

    def __init__(self, inner: Any, signal: str) -> None:
        self._inner = inner
        self._signal = signal

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        with contextlib.suppress(Exception):  # never into the application's span.end()
            reason = "after_shutdown" if error_type == "already_shutdown" else str(error_type)
            count_dropped(self._signal, reason, int(count))
        self._inner.drop_items(count, error_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _batch_processor(processor: BatchSpanProcessor) -> Any:
    """The SDK 1.3x-1.4x internals holding the queue; None if this SDK has another shape."""
    inner = getattr(processor, "_batch_processor", None)
    ok = inner is not None and hasattr(inner, "_queue") and hasattr(inner, "_metrics")
    return inner if ok else None


def span_processor(exporter: GuardedSpanExporter, **options: Any) -> BatchSpanProcessor:
    """A batch processor (``options``: its queue sizes) whose queue drops are counted."""
    processor = BatchSpanProcessor(exporter, **options)
    count_drops(processor)
    return processor


def count_drops(processor: BatchSpanProcessor) -> None:
    """Count the queue's drops in ``bitnet.obs.dropped``; an SDK of another shape degrades to
    uncounted drops."""
    inner = _batch_processor(processor)
    if inner is None or not callable(getattr(inner._metrics, "drop_items", None)):
        logger.debug("this OpenTelemetry SDK's span queue drops cannot be counted")
    else:
        inner._metrics = _DropCounter(inner._metrics, "traces")


def drain(processor: BatchSpanProcessor) -> int:
    """Empty a span queue that will never be exported; how many spans it held."""
    inner = _batch_processor(processor)
    if inner is None:
        return 0
    drained = 0
    while True:
        try:
            inner._queue.pop()  # deque.pop is atomic: each span is taken by us or the worker
        except IndexError:
            return drained
        drained += 1


# --- builders by name ---------------------------------------------------------------------------

_OTLP = "opentelemetry.exporter.otlp.proto"
_OTLP_CLASSES = {
    ("grpc", "metrics"): (f"{_OTLP}.grpc.metric_exporter", "OTLPMetricExporter"),
    ("grpc", "traces"): (f"{_OTLP}.grpc.trace_exporter", "OTLPSpanExporter"),
    ("http/protobuf", "metrics"): (f"{_OTLP}.http.metric_exporter", "OTLPMetricExporter"),
    ("http/protobuf", "traces"): (f"{_OTLP}.http.trace_exporter", "OTLPSpanExporter"),
}

_DELTA, _CUMULATIVE = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE
#: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, as the specification defines each choice.
TEMPORALITY: dict[str, dict[type, AggregationTemporality]] = {
    "cumulative": dict.fromkeys(INSTRUMENT_TYPES, _CUMULATIVE),
    "delta": {
        **dict.fromkeys(INSTRUMENT_TYPES, _CUMULATIVE),
        SdkCounter: _DELTA,
        ObservableCounter: _DELTA,
        SdkHistogram: _DELTA,
    },
    "lowmemory": {
        **dict.fromkeys(INSTRUMENT_TYPES, _CUMULATIVE),
        SdkCounter: _DELTA,
        SdkHistogram: _DELTA,
    },
}


def histogram_aggregation(settings: Settings) -> dict[type, Aggregation] | None:
    """OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION (None: the catalogue's buckets)."""
    if settings.otlp_metrics_histogram_aggregation == "base2_exponential_bucket_histogram":
        return {SdkHistogram: ExponentialBucketHistogramAggregation()}
    return None


def _otlp(o: OTLPSettings, signal: str, extra: dict[str, Any]) -> tuple[str, Any]:
    """(name, exporter) of one signal's OTLP exporter, every setting passed explicitly."""
    module, name = _OTLP_CLASSES[(o.protocol, signal)]
    cls = getattr(importlib.import_module(module), name)
    kwargs: dict[str, Any] = {
        "endpoint": o.endpoint,
        "headers": dict(o.headers),
        "timeout": o.timeout_s,
        **extra,
    }
    gzip = o.compression == "gzip"
    if o.protocol == "grpc":
        import grpc

        kwargs["insecure"] = _otlp_rules.insecure(o.endpoint)
        kwargs["compression"] = grpc.Compression.Gzip if gzip else None
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression

        kwargs["compression"] = Compression.Gzip if gzip else Compression.NoCompression
        _warm_http(o.endpoint)
    transport = "grpc" if o.protocol == "grpc" else "http"
    return f"otlp_{transport}_{signal}", cls(**kwargs)


def _warm_http(endpoint: str) -> None:
    """Do the HTTP client's first-use imports now, on the thread that configures.

    ``requests`` imports ``netrc`` while preparing each request, so the first import would
    happen on an exporter thread at its first export. A process that forks while a thread is
    inside an import leaves that module half-initialised in the child, with its import lock
    held by a thread the child does not have: the child's exports then wait on it for ever (a
    forked worker's telemetry never arrives). Preparing one request here, offline, moves every
    such import before any fork; ``tests/test_export.py`` checks that the first export imports
    nothing.
    """
    try:
        import requests

        with requests.Session() as session:
            session.prepare_request(requests.Request("POST", endpoint))
    except Exception as exc:  # another HTTP stack: nothing to warm
        internal_error("exporter:warm", exc)


def _otlp_metrics(settings: Settings) -> tuple[str, MetricExporter]:
    extra = {
        "preferred_temporality": TEMPORALITY[settings.otlp_metrics_temporality],
        "preferred_aggregation": histogram_aggregation(settings),
    }
    return _otlp(settings.otlp_metrics, "metrics", extra)


def _periodic(
    settings: Settings, name: str, exporter: MetricExporter
) -> tuple[MetricReader, GuardedMetricExporter]:
    guard = GuardedMetricExporter(name, exporter)
    reader = PeriodicExportingMetricReader(
        guard,
        export_interval_millis=settings.metric_export_interval_ms,
        export_timeout_millis=settings.metric_export_timeout_ms,
        cardinality_limits=cardinality_limits(settings),
    )
    return reader, guard


def _otlp_metric_reader(settings: Settings) -> tuple[MetricReader, GuardedMetricExporter]:
    return _periodic(settings, *_otlp_metrics(settings))


def _console_metric_reader(settings: Settings) -> tuple[MetricReader, GuardedMetricExporter]:
    return _periodic(settings, "console_metrics", ConsoleMetricExporter())


def prometheus_reader(settings: Settings) -> tuple[MetricReader, PullReader]:
    """The reader each scrape of ``/metrics`` collects and renders (it is its own renderer)."""
    reader = PullReader(cardinality_limits(settings))
    return reader, reader


#: (metric reader, its guard; for prometheus: the reader again) per metrics exporter name.
METRIC_BUILDERS: dict[str, Callable[[Settings], tuple[MetricReader, Any]]] = {
    "otlp": _otlp_metric_reader,
    "console": _console_metric_reader,
    "prometheus": prometheus_reader,
}
#: (exporter name, span exporter) per traces exporter name.
SPAN_BUILDERS: dict[str, Callable[[Settings], tuple[str, SpanExporter]]] = {
    "otlp": lambda s: _otlp(s.otlp_traces, "traces", {}),
    "console": lambda s: ("console_traces", ConsoleSpanExporter()),
}


def sampler(settings: Settings) -> sampling.Sampler:
    name, arg = settings.traces_sampler, settings.traces_sampler_arg
    root: sampling.Sampler
    if name.endswith("always_on"):
        root = sampling.ALWAYS_ON
    elif name.endswith("always_off"):
        root = sampling.ALWAYS_OFF
    else:
        root = sampling.TraceIdRatioBased(arg)
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


def build_resource(settings: Settings) -> Resource:
    """Resource built from our parsed settings only (the SDK's detector would re-read env)."""
    attributes: dict[str, Any] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
        "service.name": "unknown_service",
        "service.instance.id": str(uuid.uuid4()),
    }
    attributes.update(settings.resource_attributes)
    if settings.service_name:
        attributes["service.name"] = settings.service_name
    return Resource(attributes)


def meter_provider(
    readers: list[MetricReader], resource: Resource, exemplar_filter: str = "trace_based"
) -> MeterProvider:
    from opentelemetry.sdk.metrics import (
        AlwaysOffExemplarFilter,
        AlwaysOnExemplarFilter,
        TraceBasedExemplarFilter,
    )

    filters: dict[str, Callable[[], Any]] = {
        "trace_based": TraceBasedExemplarFilter,
        "always_on": AlwaysOnExemplarFilter,
        "always_off": AlwaysOffExemplarFilter,
    }
    return MeterProvider(
        metric_readers=readers,
        resource=resource,
        shutdown_on_exit=False,
        exemplar_filter=filters[exemplar_filter](),
    )


# --- our own histogram aggregation, merged into what readers collect ---------------------------


def aggregatable(readers: Sequence[MetricReader]) -> bool:
    """Whether every reader wants cumulative explicit-bucket histograms, which is what our own
    aggregation produces (else histograms stay on the SDK's instruments)."""
    from opentelemetry.sdk.metrics._internal.instrument import _Histogram
    from opentelemetry.sdk.metrics.view import DefaultAggregation

    for reader in readers:
        temporality = getattr(reader, "_instrument_class_temporality", {}).get(_Histogram)
        aggregation = getattr(reader, "_instrument_class_aggregation", {}).get(_Histogram)
        if temporality is not _CUMULATIVE or not isinstance(aggregation, DefaultAggregation):
            return False
    return True


def aggregate_into(readers: Sequence[MetricReader], store: Store, resource: Resource) -> None:
    """Make every reader's collection carry the store's histograms, as the SDK would have.

    Each reader is given ``_collect`` by its MeterProvider; ours wraps it. A reader keeps the
    sequence number of its last collection, so it reports each bucket's exemplar once, as the
    SDK's per-reader reservoirs do.
    """
    for reader in readers:
        original = reader._collect
        if original is None:
            continue
        since = [0]

        def collect(
            r: MetricReader,
            timeout_millis: float = 10_000,
            _original: Callable[..., Any] = original,
            _since: list[int] = since,
        ) -> Any:
            data = _original(r, timeout_millis=timeout_millis)
            try:
                return merge(data, store, _since, resource)
            except Exception as exc:  # our part must never cost the SDK's collection
                internal_error("aggregate", exc)
                return data

        reader._collect = collect


def merge(
    data: MetricsData | None, store: Store, since: list[int], resource: Resource
) -> MetricsData | None:
    """``data`` with the store's histograms added to bitnet-obs's scope."""
    points, since[0] = store.snapshot(since[0])
    if not any(points.values()):
        return data
    now = time.time_ns()
    ours = [_metric(name, found, now) for name, found in points.items() if found]
    if data is None or not data.resource_metrics:
        scope = InstrumentationScope(SCOPE, __version__, schema_url=SCHEMA_URL)
        return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, ours, SCHEMA_URL)], "")])
    first, *rest = data.resource_metrics
    scopes = list(first.scope_metrics)
    for i, scope_metrics in enumerate(scopes):
        if scope_metrics.scope.name == SCOPE:
            merged = _combine(scope_metrics.metrics, ours)
            scopes[i] = ScopeMetrics(scope_metrics.scope, merged, scope_metrics.schema_url)
            break
    else:
        scope = InstrumentationScope(SCOPE, __version__, schema_url=SCHEMA_URL)
        scopes.append(ScopeMetrics(scope, ours, SCHEMA_URL))
    return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *rest])


def _combine(sdk: Sequence[Metric], ours: list[Metric]) -> list[Metric]:
    """One metric per name: a histogram the SDK also holds (records made while a thread still
    used the previous binding, around ``configure()``) is summed with ours, point by point."""
    by_name = {m.name: m for m in ours}
    out: list[Metric] = []
    for metric in sdk:
        mine = by_name.pop(metric.name, None)
        if mine is None or not isinstance(metric.data, Histogram):
            out.append(metric)
            continue
        points: dict[tuple[tuple[str, Any], ...], HistogramDataPoint] = {
            _attrs_key(p.attributes): cast(HistogramDataPoint, p) for p in mine.data.data_points
        }
        for p in metric.data.data_points:
            key = _attrs_key(p.attributes)
            other = points.get(key)
            point = p
            points[key] = point if other is None else _sum_points(other, point)
        data = Histogram(list(points.values()), _CUMULATIVE)
        out.append(Metric(mine.name, mine.description, mine.unit, data))
    out.extend(m for m in ours if m.name in by_name)
    return out


def _attrs_key(attributes: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((attributes or {}).items()))


def _sum_points(a: HistogramDataPoint, b: HistogramDataPoint) -> HistogramDataPoint:
    return HistogramDataPoint(
        attributes=a.attributes,
        start_time_unix_nano=min(a.start_time_unix_nano, b.start_time_unix_nano),
        time_unix_nano=max(a.time_unix_nano, b.time_unix_nano),
        count=a.count + b.count,
        sum=a.sum + b.sum,
        bucket_counts=[x + y for x, y in zip(a.bucket_counts, b.bucket_counts, strict=True)],
        explicit_bounds=a.explicit_bounds,
        min=min(a.min, b.min),
        max=max(a.max, b.max),
        exemplars=[*a.exemplars, *b.exemplars],
    )


def _metric(name: str, points: list[Point], now: int) -> Metric:
    instrument = BY_NAME[name]
    data_points = [
        HistogramDataPoint(
            attributes=p.attributes,
            start_time_unix_nano=p.start_time_unix_nano,
            time_unix_nano=now,
            count=p.count,
            sum=p.sum,
            bucket_counts=p.bucket_counts,
            explicit_bounds=p.explicit_bounds,
            min=p.min,
            max=p.max,
            exemplars=[
                SdkExemplar({}, e.value, e.time_unix_nano, e.span_id, e.trace_id)
                for e in p.exemplars
            ],
        )
        for p in points
    ]
    return Metric(
        name, instrument.description, instrument.unit, Histogram(data_points, _CUMULATIVE)
    )
