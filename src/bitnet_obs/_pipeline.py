"""``configure()``, ``shutdown()``, ``force_flush()`` and forked workers: the pipeline's lifecycle.

What gets built (readers, exporters, sampler, resource) comes from :mod:`bitnet_obs._export`,
by name; this module decides when, and owns the one :class:`Telemetry` in force.

Policy when the application already installed a provider (e.g. ``opentelemetry-instrument``):
we **refuse** to replace it, log one WARNING, and report through the installed provider (an SDK
MeterProvider's readers are fixed at construction, so attaching is impossible). The HTTP server
still answers the health probes; its ``/metrics`` says where the metrics go instead of serving
an empty page.

``shutdown(timeout)`` is bounded: the SDK's own ``force_flush`` ignores its timeout and its
``shutdown`` blocks ~7 s while an OTLP export is retrying, so both run on a helper thread and we
stop waiting at the deadline (the retry loop is then interrupted and the data counted as
dropped). A later ``configure()`` sets up a new pipeline. OpenTelemetry lets the global
providers be set only once per process, so that new pipeline carries bitnet-obs's own
telemetry; other instrumentation keeps reporting to the first one.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from bitnet_obs import _config, _export, _instruments, _state, devices, health, runtime, sla
from bitnet_obs._aggregate import Store
from bitnet_obs._call import preload_outputs
from bitnet_obs._config import Settings
from bitnet_obs._errors import ConfigError
from bitnet_obs._export import Guard, GuardedSpanExporter
from bitnet_obs._exposition import PullReader
from bitnet_obs._parsers import Number
from bitnet_obs._selfmon import count_dropped, declare_watched, internal_error, logger
from bitnet_obs._server import MetricsServer, Response, tls_context

_TIMEOUT = Number(0.0, 3600.0, "seconds")


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
    guards: list[Guard] = field(default_factory=list)
    shut_down: bool = False
    #: set up by the fork handler for a forked worker: a configure() there replaces it
    inherited: bool = False

    @property
    def metrics_url(self) -> str | None:
        return f"{self.server.url}/metrics" if self.server else None

    @property
    def health_url(self) -> str | None:
        return f"{self.server.url}/health" if self.server else None


_lock = threading.RLock()
_current: Telemetry | None = None
_atexit_registered = False
_globals_ours = False  # the global API providers are the ones our first configure() installed


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
    it asked for something different). Raises :class:`ConfigError` on a malformed value, a
    busy port or an unknown host. ``metric_readers``/``span_exporters`` add extra SDK parts
    (tests, custom backends)::

        import bitnet_obs
        bitnet_obs.configure(service_name="my-server")
    """
    global _current, _atexit_registered
    with _lock:
        current = _current
        if current is not None and not current.shut_down and not current.inherited:
            if overrides or metric_readers or span_exporters or environ is not None:
                logger.warning("bitnet_obs.configure() was already called; keeping the first setup")
            return current
        settings = _config.with_overrides(_config.from_env(environ), overrides)
        if current is not None and current.inherited:
            _stop(current, 1.0)  # a forked worker asks for a pipeline of its own
        telemetry = _build(settings, list(metric_readers), list(span_exporters), fork=False)
        _current = telemetry
        if not _atexit_registered:
            atexit.register(_at_exit)
            _atexit_registered = True
        return telemetry


def _build(
    settings: Settings,
    extra_readers: list[MetricReader],
    extra_exporters: list[SpanExporter],
    *,
    fork: bool,
) -> Telemetry:
    telemetry = Telemetry(settings, inherited=fork)
    if settings.sdk_disabled:
        _config.use(settings)
        logger.info("OTEL_SDK_DISABLED=true: bitnet-obs records nothing")
        return telemetry
    readers, pull, ours = _metric_readers(telemetry, extra_readers, fork)
    if settings.server_enabled and not fork:  # first: a busy port changes nothing else
        telemetry.server = _start_server(settings, _metrics_renderer(pull, ours))
    _config.use(settings)
    _instruments.set_cardinality_limit(settings.cardinality_limit)
    declare_watched()
    resource = _export.build_resource(settings)
    store = _install_metrics(telemetry, resource, readers, fork)
    _setup_traces(telemetry, resource, extra_exporters, fork)
    _instruments.bind(
        telemetry.meter_provider or metrics.get_meter_provider(),
        telemetry.tracer_provider or _tracer_provider_in_force(),
        store,
    )
    if not fork:  # the health module answered probes since its import; its checks start now
        _enable_features(settings)
    preload_outputs()  # numpy is loaded by now: the request path never imports it
    return telemetry


def _enable_features(settings: Settings) -> None:
    """System/GPU metrics, the health probes, the runtime fingerprint and BITNET_OBS_SLA_*
    objectives; never raises."""
    try:
        devices.enable(settings.device_metrics)
        health.enable()
        runtime.enable()
        objectives = sla.Objectives.from_settings(settings)
        if objectives is not None:
            sla.set_objectives(objectives)
    except Exception as exc:
        internal_error("configure:features", exc)


def _install(kind: str, proxy: bool, installed: object, exporters: tuple[str, ...]) -> bool:
    """Whether we may put our provider in force: False (with one WARNING) when the application
    installed its own."""
    if proxy or _globals_ours:
        return True
    logger.warning(
        "a %s is already installed (%s); bitnet-obs reports through it and does not add its "
        "exporters %s",
        kind,
        type(installed).__name__,
        exporters,
    )
    return False


def _metric_readers(
    telemetry: Telemetry, extra: list[MetricReader], fork: bool
) -> tuple[list[MetricReader], Any, bool]:
    """(readers, the pull reader of /metrics or None, whether the MeterProvider will be ours)."""
    settings = telemetry.settings
    exporters = settings.metrics_exporters
    if fork:  # the Prometheus pull model has no multi-process mode: workers push
        exporters = tuple(e for e in exporters if e != "prometheus")
    proxy = _proxy_meter_provider()
    ours = fork or _install("MeterProvider", proxy, metrics.get_meter_provider(), exporters)
    readers: list[MetricReader] = []
    pull = None
    if ours:
        for name in exporters:
            reader, part = _export.METRIC_BUILDERS[name](settings)
            readers.append(reader)
            if name == "prometheus":
                pull = part
            else:
                telemetry.guards.append(part)
        readers.extend(extra)
    return readers, pull, ours


def _install_metrics(
    telemetry: Telemetry, resource: Resource, readers: list[MetricReader], fork: bool
) -> Store | None:
    """Our MeterProvider over these readers; the store of our own histogram aggregation when
    every reader can take it (else None: histograms through the SDK's instruments)."""
    global _globals_ours
    if not readers:
        return None
    settings = telemetry.settings
    proxy = _proxy_meter_provider()
    provider = _export.meter_provider(readers, resource, settings.metrics_exemplar_filter)
    store = None
    if _export.aggregatable(readers):
        store = Store(settings.cardinality_limit, settings.metrics_exemplar_filter)
        _export.aggregate_into(readers, store, resource)
    if proxy and not fork:
        metrics.set_meter_provider(provider)
        _globals_ours = True
    telemetry.meter_provider = provider
    telemetry.readers = readers
    return store


def _setup_traces(
    telemetry: Telemetry, resource: Resource, extra: list[SpanExporter], fork: bool
) -> None:
    global _globals_ours
    settings = telemetry.settings
    exporters = [_export.SPAN_BUILDERS[name](settings) for name in settings.traces_exporters]
    exporters.extend((f"extra_traces_{i}", exp) for i, exp in enumerate(extra))
    if not exporters:
        return
    proxy = isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    names = settings.traces_exporters
    if not (fork or _install("TracerProvider", proxy, trace.get_tracer_provider(), names)):
        return
    provider = TracerProvider(
        sampler=_export.sampler(settings), resource=resource, shutdown_on_exit=False
    )
    for name, exporter in exporters:
        guard = GuardedSpanExporter(name, exporter)
        telemetry.guards.append(guard)
        processor = _export.span_processor(guard)
        provider.add_span_processor(processor)
        telemetry.span_processors.append(processor)
        telemetry.span_exporters.append(exporter)
    if proxy and not fork:
        trace.set_tracer_provider(provider)
        _globals_ours = True
    telemetry.tracer_provider = provider


def _tracer_provider_in_force() -> trace.TracerProvider:
    """Traces off (no exporter of ours, none installed by the application): a no-op provider,
    so the request path does no span work at all, decided here once. An application's own
    provider, installed before ``configure()``, is used as it is."""
    installed = trace.get_tracer_provider()
    if isinstance(installed, trace.ProxyTracerProvider):
        return trace.NoOpTracerProvider()
    return installed


def _start_server(settings: Settings, renderer: Callable[[str], Response]) -> MetricsServer:
    host, port = settings.prometheus_host, settings.prometheus_port
    tls = None
    if settings.tls_cert_file is not None:
        tls = tls_context(settings.tls_cert_file, settings.tls_key_file)
    if settings.basic_auth is not None and tls is None and host not in ("127.0.0.1", "::1"):
        logger.warning(
            "basic auth without TLS on %s: credentials cross the network in clear text; "
            "set BITNET_OBS_TLS_CERT_FILE",
            host,
        )
    try:
        return MetricsServer(host, port, renderer, tls=tls, basic_auth=settings.basic_auth)
    except socket.gaierror as exc:
        raise ConfigError(
            f"OTEL_EXPORTER_PROMETHEUS_HOST={host!r} cannot be resolved ({exc.strerror}); "
            "accepted: a resolvable host name or an IP address of this machine"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            what = (
                f"OTEL_EXPORTER_PROMETHEUS_PORT={port} is in use on {host}; accepted: a free "
                "port, or 0 to pick one"
            )
        else:
            what = (
                f"OTEL_EXPORTER_PROMETHEUS_HOST={host!r} with port {port} cannot be bound "
                f"({exc.strerror or exc}); accepted: an address of this machine and a free port"
            )
        raise ConfigError(what) from None


def _metrics_renderer(reader: PullReader | None, ours: bool) -> Callable[[str], Response]:
    def render(accept: str) -> Response:
        if reader is None:
            where = (
                "metrics are exported over OTLP or console; no Prometheus exporter is set\n"
                if ours
                else "bitnet-obs reports through the application's MeterProvider; its "
                "exporters decide where metrics go\n"
            )
            return 404, "text/plain; charset=utf-8", where.encode()
        content_type, parts = reader.render_parts(accept)
        return 200, content_type, parts

    return render


def current() -> Telemetry | None:
    """The setup in force (None before ``configure()`` and after ``shutdown()``)."""
    telemetry = _current
    return telemetry if telemetry is not None and not telemetry.shut_down else None


def is_configured() -> bool:
    """True between ``configure()`` and ``shutdown()``."""
    return current() is not None


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
    checked = None if timeout is None else _TIMEOUT.check("timeout", timeout)
    telemetry = current()
    if telemetry is None:
        return True
    bound = _deadline(telemetry, checked)
    millis = max(1.0, bound * 1000)
    ok = True
    if telemetry.meter_provider is not None:
        mp = telemetry.meter_provider
        ok &= _bounded(lambda: mp.force_flush(millis), bound, "flush-metrics")
    if telemetry.tracer_provider is not None:
        tp = telemetry.tracer_provider
        ok &= _bounded(lambda: tp.force_flush(int(millis)), bound, "flush-traces")
    return ok


def _deadline(telemetry: Telemetry, timeout: float | None) -> float:
    if timeout is None:
        return telemetry.settings.shutdown_timeout_s
    return _TIMEOUT.check("timeout", timeout)


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop everything within ``timeout`` seconds (default BITNET_OBS_SHUTDOWN_TIMEOUT,
    at most 3600).

    Returns True when everything was exported in time. Past the deadline pending telemetry is
    dropped, counted in ``bitnet.obs.dropped`` (reasons ``shutdown`` for queued spans,
    ``shutdown_in_flight`` for a batch being sent, which a slow collector may still get) and in
    ``bitnet.obs.internal_errors{kind="shutdown_timeout"}``, and logged; the call still returns
    on time even when the collector is dead. A later ``configure()`` starts a new pipeline.
    """
    checked = None if timeout is None else _TIMEOUT.check("timeout", timeout)
    with _lock:
        telemetry = _current
        if telemetry is None or telemetry.shut_down:
            return True
        bound = _deadline(telemetry, checked)
        telemetry.shut_down = True
        _config.use(None)
    return _stop(telemetry, bound)


def _stop(telemetry: Telemetry, bound: float) -> bool:
    telemetry.shut_down = True
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
            count_dropped("traces", "shutdown", _export.drain(processor))
        # Interrupt the OTLP retry back-off so the helper threads end soon, too.
        for guard in telemetry.guards:
            _bounded(guard.abort, 0.05, "abort")
        internal_error(
            "shutdown_timeout",
            detail=f"shutdown did not finish within {bound:g}s; pending telemetry dropped",
        )
    if telemetry.server is not None:
        telemetry.server.stop()
    return ok


def _shutdown_one(provider: Any, millis: float, event: threading.Event) -> None:
    try:
        if isinstance(provider, MeterProvider):
            provider.shutdown(timeout_millis=millis)
        else:
            provider.shutdown()
    except Exception as exc:
        internal_error("pipeline:shutdown", exc)
    finally:
        event.set()


def _at_exit() -> None:
    shutdown()


@_state.on_reset(phase=_state.STOP)
def _forget() -> None:
    """Stop the setup in force (quickly) and forget it (``bitnet_obs.testing.reset()``)."""
    global _current
    with _lock:
        telemetry, _current = _current, None
    if telemetry is not None and not telemetry.shut_down:
        _stop(telemetry, 2.0)


@_state.on_fork
def _after_fork_in_child() -> None:
    """A forked worker gets its own pipeline and ``service.instance.id``.

    The parent's providers (still the global ones in the child) are muted, so the parent's
    accumulated data is never sent twice; bitnet-obs's instruments are rebound to fresh
    providers that push over OTLP/console with a new instance id (an explicit
    ``service.instance.id`` from OTEL_RESOURCE_ATTRIBUTES gets ``-<pid>`` appended, so workers
    never share one). The HTTP server stays with the parent (the Prometheus exporter has no
    multi-process mode: use OTLP for workers); a ``configure()`` in the worker replaces this
    inherited setup with one of its own. Worker exits flush through atexit, and through a
    multiprocessing finalizer for ``multiprocessing`` children, which skip atexit.
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
            attributes["service.instance.id"] = f"{attributes['service.instance.id']}-{os.getpid()}"
        settings = dataclasses.replace(
            telemetry.settings, server="off", resource_attributes=attributes
        )
        _current = _build(settings, [], [], fork=True)
        import multiprocessing.util

        # multiprocessing clears finalizers after fork, then runs its after-fork hooks:
        # register the exit flush from one of those.
        multiprocessing.util.register_after_fork(_current, _register_exit_flush)
    except Exception as exc:
        internal_error("fork", exc)


def _register_exit_flush(_: object) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(None, shutdown, exitpriority=10)
