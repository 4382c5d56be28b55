"""``configure()`` and ``shutdown()``: the SDK pipeline. The only module that knows exporters.

Policy when the application already installed a provider (e.g. ``opentelemetry-instrument``):
we **refuse** to replace it, log one WARNING, and report through the installed provider.
Attaching is impossible for metrics anyway: an SDK MeterProvider's readers are fixed at
construction.

``shutdown(timeout)`` is bounded: the SDK's own ``force_flush`` ignores its timeout and its
``shutdown`` blocks ~7 s while an OTLP export is retrying, so both run on a helper thread and
we stop waiting at the deadline (the retry loop is then interrupted and the data counted as
dropped).

Every span either reaches its exporter's success or is counted once in
``bitnet.obs.dropped{bitnet.obs.signal="traces"}``, by reason: ``queue_full`` (the SDK's batch
queue holds 2048 spans and drops the oldest; it counts only with its internal metrics on, so we
count through a shim), ``export_failed``, ``shutdown`` (still queued when the shutdown
deadline passed), ``shutdown_in_flight`` (being sent then: a slow collector may still get it)
and ``after_shutdown``. Metric points of a failed export are counted the same
way (``signal="metrics"``); with cumulative temporality the next export still carries the
totals, so those lose resolution, not counts.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import importlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.version import __version__ as sdk_version

from bitnet_obs import _config, _instruments, _tally
from bitnet_obs._config import OTLPSettings, Settings
from bitnet_obs._selfmon import export_result, internal_error, logger
from bitnet_obs._server import MetricsServer, Response, tls_context

_DROPPED = _instruments.TALLIES["bitnet.obs.dropped"]
_MAX_ERROR_TEXT = 300


def count_dropped(signal: str, reason: str, n: int = 1) -> None:
    """Count telemetry given up (``bitnet.obs.dropped``); never raises."""
    if n > 0:
        _DROPPED.add((("bitnet.obs.drop_reason", reason), ("bitnet.obs.signal", signal)), n)


def dropped(signal: str | None = None, reason: str | None = None) -> int:
    """How many items were counted as dropped (of one signal and/or reason)."""
    wanted: dict[str, str] = {}
    if signal is not None:
        wanted["bitnet.obs.signal"] = signal
    if reason is not None:
        wanted["bitnet.obs.drop_reason"] = reason
    return _DROPPED.value(**wanted)


def _instrument_types() -> tuple[type, ...]:
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics import _Gauge as Gauge

    return (
        Counter,
        UpDownCounter,
        Histogram,
        Gauge,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
    )


@dataclass
class ExporterHealth:
    """Last outcome of one exporter, for the health checks and the self-metrics."""

    name: str
    last_success: float | None = None
    last_failure: float | None = None
    consecutive_failures: int = 0
    last_error: str = ""

    def record(self, ok: bool, error: str = "") -> None:
        now = time.time()
        if ok:
            self.last_success, self.consecutive_failures = now, 0
        else:
            self.last_failure, self.last_error = now, error[:_MAX_ERROR_TEXT]
            self.consecutive_failures += 1
        export_result(self.name, ok)


EXPORTERS: dict[str, ExporterHealth] = {}


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


class _Guard:
    """What both guarded exporters share: no exception escapes, every outcome is recorded in
    the exporter's health, and what is given up is counted in ``bitnet.obs.dropped``."""

    signal = ""

    def _guard(self, name: str) -> None:
        self.health = EXPORTERS.setdefault(name, ExporterHealth(name))
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


class _GuardedMetricExporter(MetricExporter, _Guard):
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


class _GuardedSpanExporter(SpanExporter, _Guard):
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


class _DropCounter:
    """Stands in for the SDK batch processor's own metrics object and counts its drops in ours.

    The SDK counts a full-queue drop only when its internal metrics are on; ``emit`` runs on
    the application's thread, so this must stay cheap and never raise.
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


def _count_span_drops(processor: BatchSpanProcessor) -> None:
    """Count the batch queue's drops; an SDK without these internals degrades to uncounted."""
    inner = _batch_processor(processor)
    if inner is None or not callable(getattr(inner._metrics, "drop_items", None)):
        logger.debug("this OpenTelemetry SDK's span queue drops cannot be counted")
        return
    inner._metrics = _DropCounter(inner._metrics, "traces")


def _drain(processor: BatchSpanProcessor) -> int:
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


_OTLP_CLASSES = {
    ("grpc", "metrics"): (
        "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
        "OTLPMetricExporter",
    ),
    ("grpc", "traces"): (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "OTLPSpanExporter",
    ),
    ("http/protobuf", "metrics"): (
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
        "OTLPMetricExporter",
    ),
    ("http/protobuf", "traces"): (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "OTLPSpanExporter",
    ),
}


def _otlp_exporter(o: OTLPSettings, signal: str) -> tuple[str, Any]:
    """(name, exporter) of one signal's OTLP exporter, every setting passed explicitly."""
    module, name = _OTLP_CLASSES[(o.protocol, signal)]
    cls = getattr(importlib.import_module(module), name)
    kwargs: dict[str, Any] = {
        "endpoint": o.endpoint,
        "headers": dict(o.headers),
        "timeout": o.timeout_s,
    }
    gzip = o.compression == "gzip"
    if o.protocol == "grpc":
        import grpc

        kwargs["insecure"] = o.endpoint.startswith("http://")
        kwargs["compression"] = grpc.Compression.Gzip if gzip else None
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression

        kwargs["compression"] = Compression.Gzip if gzip else Compression.NoCompression
    transport = "grpc" if o.protocol == "grpc" else "http"
    return f"otlp_{transport}_{signal}", cls(**kwargs)


def _sampler(settings: Settings) -> sampling.Sampler:
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


@dataclass
class Telemetry:
    """What ``configure()`` set up. ``metrics_url`` is None when no HTTP server runs."""

    settings: Settings
    meter_provider: MeterProvider | None = None
    tracer_provider: TracerProvider | None = None
    server: MetricsServer | None = None
    readers: list[MetricReader] = field(default_factory=list)
    span_exporters: list[SpanExporter] = field(default_factory=list)
    span_processors: list[BatchSpanProcessor] = field(default_factory=list)
    guards: list[_GuardedMetricExporter | _GuardedSpanExporter] = field(default_factory=list)
    shut_down: bool = False

    @property
    def metrics_url(self) -> str | None:
        return f"{self.server.url}/metrics" if self.server else None

    @property
    def health_url(self) -> str | None:
        return f"{self.server.url}/health" if self.server else None


_lock = threading.RLock()
_current: Telemetry | None = None
_atexit_registered = False


def _proxy_meter_provider() -> bool:
    return type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"


def configure(
    *,
    environ: Mapping[str, str] | None = None,
    metric_readers: Sequence[MetricReader] = (),
    span_exporters: Sequence[SpanExporter] = (),
    **overrides: Any,
) -> Telemetry:
    """Set up the OpenTelemetry SDK from ``OTEL_*``/``BITNET_OBS_*`` variables and overrides.

    Idempotent and thread-safe: a second call returns the first result (a WARNING says so if
    it asked for something different). Raises :class:`ConfigError` on a malformed value.
    ``metric_readers``/``span_exporters`` add extra SDK parts (tests, custom backends)::

        import bitnet_obs
        bitnet_obs.configure(service_name="my-server")
    """
    global _current, _atexit_registered
    with _lock:
        if _current is not None:
            if overrides or metric_readers or span_exporters:
                logger.warning("bitnet_obs.configure() was already called; keeping the first setup")
            return _current
        settings = _config.with_overrides(_config.from_env(environ), overrides)
        _tally.set_limit(settings.cardinality_limit)
        telemetry = Telemetry(settings)
        if settings.sdk_disabled:
            logger.info("OTEL_SDK_DISABLED=true: bitnet-obs records nothing")
            _current = telemetry
            return telemetry
        resource = build_resource(settings)
        _enable_devices_health_sla(settings)  # before the server answers its first probe
        _setup_metrics(telemetry, resource, list(metric_readers))
        _setup_traces(telemetry, resource, list(span_exporters))
        _instruments.bind(metrics.get_meter_provider(), trace.get_tracer_provider())
        _current = telemetry
        if not _atexit_registered:
            atexit.register(_at_exit)
            _atexit_registered = True
        return telemetry


def _enable_devices_health_sla(settings: Settings) -> None:
    """System/GPU metrics, the health probes and BITNET_OBS_SLA_* objectives; never raises."""
    from bitnet_obs import devices, health, sla

    try:
        devices.enable(settings.device_metrics)
        health.enable()
        objectives = sla.Objectives.from_settings(settings)
        if objectives is not None:
            sla.set_objectives(objectives)
    except Exception as exc:
        internal_error("configure:devices_health_sla", exc)


def _setup_metrics(
    telemetry: Telemetry,
    resource: Resource,
    extra: list[MetricReader],
    install_global: bool = True,
) -> None:
    settings = telemetry.settings
    limits = dict.fromkeys(_instrument_types(), settings.cardinality_limit)
    readers: list[MetricReader] = []
    registry = None
    if "prometheus" in settings.metrics_exporters:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=True)
        readers.append(
            PrometheusMetricReader(
                scope_info_enabled=False, registry=registry, cardinality_limits=limits
            )
        )
    periodic: list[tuple[str, MetricExporter]] = []
    if "otlp" in settings.metrics_exporters:
        periodic.append(_otlp_exporter(settings.otlp_metrics, "metrics"))
    if "console" in settings.metrics_exporters:
        periodic.append(("console_metrics", ConsoleMetricExporter()))
    for name, exporter in periodic:
        guard = _GuardedMetricExporter(name, exporter)
        telemetry.guards.append(guard)
        readers.append(
            PeriodicExportingMetricReader(
                guard,
                export_interval_millis=settings.metric_export_interval_ms,
                export_timeout_millis=settings.metric_export_timeout_ms,
                cardinality_limits=limits,
            )
        )
    readers.extend(extra)
    if settings.server_enabled:
        telemetry.server = _start_server(settings, _metrics_renderer(registry))
    if not readers:
        return
    if install_global and not _proxy_meter_provider():
        logger.warning(
            "a MeterProvider is already installed (%s); bitnet-obs reports through it and does "
            "not add its exporters %s",
            type(metrics.get_meter_provider()).__name__,
            settings.metrics_exporters,
        )
        return
    provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
    if install_global:
        metrics.set_meter_provider(provider)
    telemetry.meter_provider = provider
    telemetry.readers = readers


def _setup_traces(
    telemetry: Telemetry,
    resource: Resource,
    extra: list[SpanExporter],
    install_global: bool = True,
) -> None:
    settings = telemetry.settings
    exporters: list[tuple[str, SpanExporter]] = []
    if "otlp" in settings.traces_exporters:
        exporters.append(_otlp_exporter(settings.otlp_traces, "traces"))
    if "console" in settings.traces_exporters:
        exporters.append(("console_traces", ConsoleSpanExporter()))
    exporters.extend((f"extra_traces_{i}", exp) for i, exp in enumerate(extra))
    if not exporters:
        return
    if install_global and not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        logger.warning(
            "a TracerProvider is already installed (%s); bitnet-obs traces through it and does "
            "not add its exporters %s",
            type(trace.get_tracer_provider()).__name__,
            settings.traces_exporters,
        )
        return
    provider = TracerProvider(sampler=_sampler(settings), resource=resource, shutdown_on_exit=False)
    for name, exporter in exporters:
        guard = _GuardedSpanExporter(name, exporter)
        telemetry.guards.append(guard)
        processor = BatchSpanProcessor(guard)
        _count_span_drops(processor)
        provider.add_span_processor(processor)
        telemetry.span_processors.append(processor)
        telemetry.span_exporters.append(exporter)
    if install_global:
        trace.set_tracer_provider(provider)
    telemetry.tracer_provider = provider


def _start_server(settings: Settings, renderer: Callable[[str], Response]) -> MetricsServer:
    tls = None
    if settings.tls_cert_file is not None:
        tls = tls_context(settings.tls_cert_file, settings.tls_key_file)
    host = settings.prometheus_host
    if settings.basic_auth is not None and tls is None and host not in ("127.0.0.1", "::1"):
        logger.warning(
            "basic auth without TLS on %s: credentials cross the network in clear text; "
            "set BITNET_OBS_TLS_CERT_FILE",
            host,
        )
    return MetricsServer(
        host, settings.prometheus_port, renderer, tls=tls, basic_auth=settings.basic_auth
    )


def _metrics_renderer(registry: Any) -> Callable[[str], Response]:
    def render(accept: str) -> Response:
        if registry is None:
            msg = b"metrics are exported over OTLP or console; no Prometheus exporter is set\n"
            return 404, "text/plain; charset=utf-8", msg
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return 200, content_type, encoder(registry)

    return render


def current() -> Telemetry | None:
    return _current


_env_settings: Settings | None = None


def settings() -> Settings:
    """The settings in force: configure()'s, else the environment's (parsed once)."""
    global _env_settings
    if _current is not None:
        return _current.settings
    if _env_settings is None:
        try:
            _env_settings = _config.from_env()
        except _config.ConfigError as exc:
            internal_error("config", exc)
            _env_settings = Settings()
    return _env_settings


def is_configured() -> bool:
    return _current is not None


def _bounded(fn: Callable[[], object], timeout: float, name: str) -> bool:
    """Run fn on a daemon thread; True when it finished within timeout."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        except Exception as exc:
            internal_error(f"pipeline:{name}", exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"bitnet-obs-{name}", daemon=True).start()
    return done.wait(max(0.0, timeout))


def force_flush(timeout: float | None = None) -> bool:
    """Export what is pending; returns False if the deadline passed first (data may be late)."""
    telemetry = _current
    if telemetry is None or telemetry.shut_down:
        return True
    bound = telemetry.settings.shutdown_timeout_s if timeout is None else timeout
    millis = max(1.0, bound * 1000)
    ok = True
    if telemetry.meter_provider is not None:
        mp = telemetry.meter_provider
        ok &= _bounded(lambda: mp.force_flush(millis), bound, "flush-metrics")
    if telemetry.tracer_provider is not None:
        tp = telemetry.tracer_provider
        ok &= _bounded(lambda: tp.force_flush(int(millis)), bound, "flush-traces")
    return ok


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop everything within ``timeout`` seconds (default BITNET_OBS_SHUTDOWN_TIMEOUT).

    Returns True when everything was exported in time. Past the deadline pending telemetry is
    dropped, counted in ``bitnet.obs.dropped`` (reasons ``shutdown`` for queued spans,
    ``shutdown_in_flight`` for a batch being sent, which a slow collector may still get) and in
    ``bitnet.obs.internal_errors{kind="shutdown_timeout"}``, and logged; the call still returns
    on time even when the collector is dead.
    """
    with _lock:
        telemetry = _current
        if telemetry is None or telemetry.shut_down:
            return True
        telemetry.shut_down = True
    bound = telemetry.settings.shutdown_timeout_s if timeout is None else timeout
    deadline = time.monotonic() + bound
    millis = max(1.0, bound * 1000)
    done: list[threading.Event] = []
    for provider in (telemetry.meter_provider, telemetry.tracer_provider):
        if provider is not None:
            event = threading.Event()
            done.append(event)
            threading.Thread(
                target=_shutdown_one,
                args=(provider, millis, event),
                daemon=True,
                name="bitnet-obs-shutdown",
            ).start()
    ok = all(event.wait(max(0.0, deadline - time.monotonic())) for event in done)
    if not ok:
        # Whatever is still queued or in flight will not be exported: count it, once.
        for guard in telemetry.guards:
            count_dropped(guard.signal, "shutdown_in_flight", guard.flight.abandon())
        for processor in telemetry.span_processors:
            count_dropped("traces", "shutdown", _drain(processor))
        # Interrupt the OTLP retry back-off so the helper threads end soon, too.
        for reader in telemetry.readers:
            guarded = getattr(reader, "_exporter", None)
            if isinstance(guarded, _GuardedMetricExporter):
                abort = functools.partial(guarded.inner.shutdown, timeout_millis=1)
                _bounded(abort, 0.05, "abort")
        for span_exporter in telemetry.span_exporters:
            _bounded(span_exporter.shutdown, 0.05, "abort")
        internal_error(
            "shutdown_timeout",
            detail=f"shutdown did not finish within {bound:g}s; pending telemetry dropped",
        )
    if telemetry.server is not None:
        telemetry.server.stop()
    return ok


def _shutdown_one(provider: Any, millis: float, event: threading.Event) -> None:
    try:
        provider.shutdown(timeout_millis=millis) if isinstance(
            provider, MeterProvider
        ) else provider.shutdown()
    except Exception as exc:
        internal_error("pipeline:shutdown", exc)
    finally:
        event.set()


def _at_exit() -> None:
    shutdown()


def _reset_for_tests() -> None:
    """Forget the current setup (global OTel providers cannot be unset; tests rebind)."""
    global _current
    with _lock:
        if _current is not None and not _current.shut_down:
            shutdown(timeout=2)
        _current = None


def _after_fork_in_child() -> None:
    """A forked worker gets its own pipeline and ``service.instance.id``.

    The parent's providers (still the global ones in the child) are muted, so the parent's
    accumulated data is never sent twice; bitnet-obs's instruments are rebound to fresh
    providers that push over OTLP/console with a new instance id (an explicit
    ``service.instance.id`` from OTEL_RESOURCE_ATTRIBUTES gets ``-<pid>`` appended, so
    workers never share one). The HTTP server stays with
    the parent (the Prometheus exporter has no multi-process mode: use OTLP for workers).
    Worker exits flush through atexit, and through a multiprocessing finalizer for
    ``multiprocessing`` children, which skip atexit.
    """
    global _current, _lock
    _lock = threading.RLock()  # another parent thread may have held it at fork time
    telemetry = _current
    if telemetry is None or telemetry.shut_down or telemetry.settings.sdk_disabled:
        return
    try:
        for guard in telemetry.guards:
            guard.muted = True
        telemetry.shut_down = True
        attributes = dict(telemetry.settings.resource_attributes)
        if "service.instance.id" in attributes:  # set explicitly (e.g. the pod name):
            attributes["service.instance.id"] += f"-{os.getpid()}"  # unique per worker
        settings = dataclasses.replace(
            telemetry.settings,
            metrics_exporters=tuple(
                e for e in telemetry.settings.metrics_exporters if e != "prometheus"
            ),
            server="off",
            resource_attributes=attributes,
        )
        child = Telemetry(settings)
        resource = build_resource(settings)
        if telemetry.meter_provider is not None:
            _setup_metrics(child, resource, [], install_global=False)
        if telemetry.tracer_provider is not None:
            _setup_traces(child, resource, [], install_global=False)
        _instruments.bind(
            child.meter_provider or metrics.get_meter_provider(),
            child.tracer_provider or trace.get_tracer_provider(),
        )
        _current = child
        import multiprocessing.util

        # multiprocessing clears finalizers after fork, then runs its after-fork hooks:
        # register the exit flush from one of those.
        multiprocessing.util.register_after_fork(child, _register_exit_flush)
    except Exception as exc:
        internal_error("fork", exc)


def _register_exit_flush(_: object) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(None, shutdown, exitpriority=10)


os.register_at_fork(after_in_child=_after_fork_in_child)
