"""The metric catalogue: one typed handle per instrument, defined once, here.

Every instrument bitnet-obs reports is a module-level object below (as prometheus_client's
metric objects are): its name, kind, unit, description, attribute keys and buckets, and the
methods that record it. ``docs/metrics.md`` is generated from :data:`CATALOGUE`
(``tools/gen_docs.py``), with the Prometheus name each instrument gets and the seed-design
metric it replaces.

Three kinds of handle, chosen by cost:

- :class:`Counter` / :class:`UpDownCounter`: a local :class:`~bitnet_obs._tally.Tally` (one
  lock and one dict update), read by an observable instrument at collection time; exact under
  threads and asyncio, and the SDK sees one observation per series per collection.
- :class:`Histogram` / :class:`Gauge`: recorded through the OpenTelemetry **API** instrument of
  the meter in force.
- :class:`ObservedGauge` (and callback-fed counters): read from registered callbacks at
  collection time only (devices, health, SLA).

Handles are bound to providers by :func:`bind` (``configure()``, the testing helpers); until then
the first use binds them to the global API providers, so bitnet-obs reports through whatever
``MeterProvider`` the application installed.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import NonRecordingSpan, SpanContext, Tracer, TracerProvider

from bitnet_obs import _names, _state
from bitnet_obs import _semconv as sc
from bitnet_obs._aggregate import Cell, SpanIds, Store
from bitnet_obs._semconv import ERROR_TYPE, RENAMED_ATTRIBUTES, SCHEMA_URL
from bitnet_obs._tally import AttrKey, AttrValue, Tally
from bitnet_obs._version import __version__

SCOPE = "bitnet_obs"

Callback = Callable[[CallbackOptions], Iterable[Observation]]


class Kind(enum.Enum):
    COUNTER = "counter"
    UPDOWNCOUNTER = "updowncounter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"
    OBSERVABLE_COUNTER = "observable counter"
    OBSERVABLE_UPDOWNCOUNTER = "observable updowncounter"
    OBSERVABLE_GAUGE = "observable gauge"


_CATALOGUE: list[Instrument] = []


class Instrument:
    """One instrument of the catalogue. ``seed`` names the seed-design metric(s) it replaces;
    ``until`` marks a 0.1 name kept only for ``gen_ai_latest/dup`` (the release that drops it);
    :attr:`renamed` maps each renamed attribute to the 0.1 name emitted beside it then."""

    kind: ClassVar[Kind]

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        attributes: tuple[str, ...] = (),
        *,
        buckets: tuple[float, ...] | None = None,
        seed: str = "",
        until: str = "",
    ) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.attributes = attributes
        self.buckets = buckets
        self.seed = seed
        self.until = until
        self.renamed = {k: v for k, v in RENAMED_ATTRIBUTES.items() if k in attributes}
        self._sdk: Any = None
        _CATALOGUE.append(self)

    @property
    def prometheus_name(self) -> str:
        """The name the OTel Prometheus exporter gives this instrument (checked by a test)."""
        return prometheus_name(self)

    def _create(self, meter: Meter) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Histogram(Instrument):
    """A distribution recorded per event (durations, sizes, accuracy figures).

    Recorded into our own aggregation (:mod:`bitnet_obs._aggregate`) when the binding in force
    has a store, else into the SDK instrument of the meter in force.
    """

    kind = Kind.HISTOGRAM

    def record(
        self, value: float, attributes: Mapping[str, AttrValue], span: SpanContext | None = None
    ) -> None:
        """One value; ``span``: the request's span (for exemplars) when it is not the current
        one."""
        sdk = self._sdk
        if sdk is None:
            sdk = _bound_default(self)
        store = _store
        if store is not None:
            cell = store.cell(self.name, self._bounds, attributes)
            store.record(cell, value, span_ids(span))
        elif span is not None:
            sdk.record(value, attributes, context=trace.set_span_in_context(NonRecordingSpan(span)))
        else:
            sdk.record(value, attributes)

    def bound(self, attributes: Mapping[str, AttrValue]) -> Bound:
        """This histogram for one attribute set in the binding in force (the hot path keeps it
        per call site and outcome, and rebinds when :func:`generation` changes)."""
        if self._sdk is None:
            _bound_default(self)
        store = _store
        if store is not None:
            return Bound(store.cell(self.name, self._bounds, attributes), None, attributes)
        return Bound(None, self._sdk, dict(attributes))

    @property
    def _bounds(self) -> tuple[float, ...]:
        return self.buckets or ()

    def _create(self, meter: Meter) -> Any:
        return meter.create_histogram(
            self.name,
            unit=self.unit,
            description=self.description,
            explicit_bucket_boundaries_advisory=list(self.buckets or ()),
        )


class Bound(NamedTuple):
    """A histogram bound to one attribute set: our cell, or the SDK instrument and attributes."""

    cell: Cell | None
    sdk: Any
    attributes: Mapping[str, AttrValue]


def span_ids(span: SpanContext | None) -> SpanIds:
    """(span_id, trace_id) for an exemplar: the given span's, else the current span's; None
    unless it is sampled (the SDK's trace-based exemplar filter)."""
    context = span if span is not None else trace.get_current_span().get_span_context()
    if context.is_valid and context.trace_flags.sampled:
        return context.span_id, context.trace_id
    return None


def record_bound(pairs: Sequence[tuple[Bound, float]], span: SpanContext | None) -> None:
    """Several records of one request, under one lock when they are ours; exemplars link to
    ``span`` only (the request's own, if it has one), in both paths."""
    store = _store
    if store is not None and pairs and pairs[0][0].cell is not None:
        ids = (
            (span.span_id, span.trace_id) if span is not None and span.trace_flags.sampled else None
        )
        store.record_many([(b.cell, v) for b, v in pairs if b.cell is not None], ids)
        return
    context = trace.set_span_in_context(NonRecordingSpan(span)) if span is not None else _NO_SPAN
    for b, value in pairs:
        if b.sdk is not None:
            b.sdk.record(value, b.attributes, context=context)


_NO_SPAN = otel_context.Context()  # records without a span of ours: no exemplar, as ours


class Gauge(Instrument):
    """The last value set per attribute set (a synchronous gauge)."""

    kind = Kind.GAUGE

    def set(self, value: float, attributes: Mapping[str, AttrValue]) -> None:
        sdk = self._sdk
        if sdk is None:
            sdk = _bound_default(self)
        sdk.set(value, attributes)

    def _create(self, meter: Meter) -> Any:
        return meter.create_gauge(self.name, unit=self.unit, description=self.description)


class _Observed(Instrument):
    """An observable instrument fed by callbacks registered at run time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._callbacks: list[Callback] = []

    def register(self, callback: Callback) -> None:
        """Feed this instrument from ``callback`` at every collection (idempotent)."""
        if callback not in self._callbacks:
            self._callbacks.append(callback)

    def unregister(self, callback: Callback) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        out: list[Observation] = []
        for callback in list(self._callbacks):
            out.extend(callback(options))
        return out


class ObservedGauge(_Observed):
    """A value read at collection time from registered callbacks (devices, health, SLA)."""

    kind = Kind.OBSERVABLE_GAUGE

    def _create(self, meter: Meter) -> Any:
        return meter.create_observable_gauge(
            self.name, callbacks=[self._observe], unit=self.unit, description=self.description
        )


class Counter(_Observed):
    """A monotonic total kept in a local tally (plus any callbacks of cumulative values, such
    as psutil's disk bytes), observed at collection time."""

    kind = Kind.OBSERVABLE_COUNTER

    def __init__(self, *args: Any, shared: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tally = Tally(self.name, shared=shared)  # shared: the request path's lock

    def add(self, key: AttrKey, amount: int = 1) -> None:
        """Add to the series of this attribute key (see :func:`~bitnet_obs._tally.key_of`)."""
        self.tally.add(key, amount)

    def value(self, **attributes: AttrValue) -> int:
        """Sum of the series whose attributes include the given ones."""
        return self.tally.value(**attributes)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        out = list(self.tally.observe(options))
        renamed = self.renamed
        if renamed and _dup_reader():  # 0.1's attribute names beside the current ones
            out = [_with_legacy(o, renamed) for o in out]
        out.extend(super()._observe(options))
        return out

    def _create(self, meter: Meter) -> Any:
        return meter.create_observable_counter(
            self.name, callbacks=[self._observe], unit=self.unit, description=self.description
        )


def _with_legacy(observation: Observation, renamed: Mapping[str, str]) -> Observation:
    attributes = observation.attributes
    if not attributes or not any(k in attributes for k in renamed):
        return observation
    extra = {renamed[k]: v for k, v in attributes.items() if k in renamed}
    return Observation(observation.value, {**attributes, **extra})


def _latest_only() -> bool:
    return False


#: Whether 0.1's GenAI names are emitted beside the current ones; read at collection and at
#: the end of an opted-in request only.
_dup_reader: Callable[[], bool] = _latest_only


def set_dup_reader(reader: Callable[[], bool]) -> None:
    """How the catalogue learns the naming mode (``BITNET_OBS_SEMCONV_STABILITY_OPT_IN``):
    ``_config``, which imports this module, registers a reader of the settings in force."""
    global _dup_reader
    _dup_reader = reader


class UpDownCounter(Counter):
    """A total that goes up and down (requests in progress, queue depth), kept in a tally."""

    kind = Kind.OBSERVABLE_UPDOWNCOUNTER

    def _create(self, meter: Meter) -> Any:
        return meter.create_observable_up_down_counter(
            self.name, callbacks=[self._observe], unit=self.unit, description=self.description
        )


# fmt: off
# Bucket boundaries. Durations follow the GenAI semantic conventions' advice (seconds, not the
# SDK's millisecond-shaped defaults).
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92
)
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
)
# Time per output token: the advised 0.01..2.5 s, all kept, plus three boundaries below them
# (small 1-bit models, and larger ones on a GPU, can decode under 10 ms a token; docs/metrics.md).
TPOT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5
)
# Inter-token gaps: a decode step of a 1-bit model on a CPU is a few ms to a few tens of ms;
# stalls (a GC pause, a swap, a noisy neighbour) reach seconds.
ITL_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0
)
THROUGHPUT_BUCKETS = (
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0
)
# The GenAI conventions' advice for per-operation token histograms.
TOKEN_USAGE_BUCKETS = (
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
    4194304.0, 16777216.0, 67108864.0
)
# Ternary weights sit near 0.887 against FP32, kernels near 1.0 against the quantized reference:
# fine buckets in both regions, plus the seed's 0.9 / 0.95 / 0.99 / 0.995 / 0.999 / 1.0.
ACCURACY_BUCKETS = (
    0.5, 0.8, 0.82, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95,
    0.97, 0.99, 0.995, 0.999, 0.9999, 1.0
)
SQNR_BUCKETS = (
    0.0, 2.0, 4.0, 5.0, 5.5, 6.0, 6.5, 7.0, 8.0, 10.0, 15.0, 20.0, 30.0, 40.0, 45.0, 50.0,
    60.0, 80.0, 100.0
)
REL_ERROR_BUCKETS = (
    1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6,
    0.8, 1.0
)
QUANT_DURATION_BUCKETS = (
    1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
)

HEALTH_CHECK_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)

_REQ = (
    sc.OPERATION_NAME,
    sc.REQUEST_MODEL,
    sc.PROVIDER_NAME,
    sc.RESPONSE_MODEL,  # where known (response_model=, instrumentors)
    sc.SERVER_ADDRESS,  # where known (server_address=, server_port=)
    sc.SERVER_PORT,
    "bitnet.quant.format",
    "bitnet.device",
    "bitnet.request.priority",
)
_QUANT = (
    "bitnet.quant.format",
    "bitnet.quant.kind",
    "bitnet.quant.reference",
    "bitnet.tensor",
    "bitnet.quant.row_sample",
)
_GPU = (sc.HW_ID, sc.HW_TYPE, sc.HW_NAME, "bitnet.gpu.index")

MODEL_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_FORMATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
# fmt: on
_MODEL = (sc.REQUEST_MODEL, "bitnet.quant.format", "bitnet.device")
_QUEUE = ("bitnet.queue.name", "bitnet.request.priority")
_CACHE = ("bitnet.cache.name", sc.REQUEST_MODEL)


REQUEST_DURATION = Histogram(
    sc.SERVER_REQUEST_DURATION,
    "s",
    "End-to-end duration of an inference request (with its wait in a RequestQueue, if any).",
    (*_REQ, ERROR_TYPE),
    buckets=DURATION_BUCKETS,
    seed="bitnet_inference_duration_seconds",
)
TIME_TO_FIRST_TOKEN = Histogram(
    sc.SERVER_TIME_TO_FIRST_TOKEN,
    "s",
    "Time from the request's arrival (with its wait in a RequestQueue, if any) to the first "
    "output token.",
    _REQ,
    buckets=TTFT_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    sc.SERVER_TIME_PER_OUTPUT_TOKEN,
    "s",
    "Mean time per output token after the first one.",
    _REQ,
    buckets=TPOT_BUCKETS,
)
REQUESTS = Counter(
    "bitnet.inference.requests",
    "{request}",
    "Finished inference requests by outcome (ok, error, cancelled), error.type and, when the "
    "code reports one, bitnet.response.finish_reason (stop, length, ...).",
    (*_REQ, "bitnet.outcome", ERROR_TYPE, sc.FINISH_REASON),
    seed="bitnet_inference_requests_total",
    shared=True,
)
ACTIVE_REQUESTS = UpDownCounter(
    "bitnet.inference.active_requests",
    "{request}",
    "Inference requests in progress.",
    _REQ,
    seed="bitnet_active_inference_requests",
    shared=True,
)
TOKENS = Counter(
    "bitnet.inference.tokens",
    "{token}",
    "Tokens processed, by bitnet.token.type (input, output); rate() gives tokens/s.",
    (*_REQ, sc.TOKEN_TYPE),
    shared=True,
)
INTER_TOKEN_LATENCY = Histogram(
    "bitnet.inference.inter_token_latency",
    "s",
    "Time between consecutive streamed items of a request, each gap recorded: stalls show in "
    "its high quantiles, which per-request means (time per output token) hide.",
    _REQ,
    buckets=ITL_BUCKETS,
)
PREFILL_DURATION = Histogram(
    "bitnet.inference.prefill.duration",
    "s",
    "Prefill: from the start of the call to its first output token (no queue wait).",
    _REQ,
    buckets=TTFT_BUCKETS,
)
DECODE_DURATION = Histogram(
    "bitnet.inference.decode.duration",
    "s",
    "Decode: from the first output token to the end of the call.",
    _REQ,
    buckets=DURATION_BUCKETS,
)
THROUGHPUT = Histogram(
    "bitnet.inference.throughput",
    "{token}/s",
    "Output tokens per second of each request.",
    _REQ,
    buckets=THROUGHPUT_BUCKETS,
    seed="bitnet_tokens_per_second",
)
INPUT_TOKENS_PER_OPERATION = Histogram(
    sc.CLIENT_OPERATION_INPUT_TOKENS,
    "{token}",
    "Input tokens of each request, failed ones included (opt-in: client_token_usage=True).",
    (*_REQ, ERROR_TYPE),
    buckets=TOKEN_USAGE_BUCKETS,
)
OUTPUT_TOKENS_PER_OPERATION = Histogram(
    sc.CLIENT_OPERATION_OUTPUT_TOKENS,
    "{token}",
    "Output tokens of each request, failed ones included (opt-in: client_token_usage=True).",
    (*_REQ, ERROR_TYPE),
    buckets=TOKEN_USAGE_BUCKETS,
)
TOKEN_USAGE = Histogram(
    sc.LEGACY_CLIENT_TOKEN_USAGE,
    "{token}",
    "0.1's per-request token histogram by gen_ai.token.type (opt-in, and only with "
    "gen_ai_latest/dup).",
    (*_REQ, ERROR_TYPE, sc.LEGACY_TOKEN_TYPE),
    buckets=TOKEN_USAGE_BUCKETS,
    until="0.3",
)


def record_token_usage(
    n_in: int, n_out: int, attributes: Mapping[str, AttrValue], span: SpanContext | None
) -> None:
    """The opt-in per-request token histograms of one finished request (failed ones too, as the
    conventions ask); with ``gen_ai_latest/dup`` also 0.1's ``gen_ai.client.token.usage``."""
    INPUT_TOKENS_PER_OPERATION.record(n_in, attributes, span)
    OUTPUT_TOKENS_PER_OPERATION.record(n_out, attributes, span)
    if _dup_reader():
        for kind, n in (("input", n_in), ("output", n_out)):
            if n:
                TOKEN_USAGE.record(n, {**attributes, sc.LEGACY_TOKEN_TYPE: kind}, span)


FALLBACKS = Counter(
    "bitnet.device.fallbacks",
    "{fallback}",
    "Device fallbacks (e.g. GPU to CPU) and why.",
    ("bitnet.device.from", "bitnet.device.to", "bitnet.fallback.reason", sc.REQUEST_MODEL),
    seed="bitnet_device_fallback_events_total",
)
KERNEL_FALLBACKS = Counter(
    "bitnet.kernel.fallbacks",
    "{call}",
    "Calls whose kernel (set_kernel) differs from the one declared on the decorator (kernel=): "
    "a silent fall back to a slower or wrong path.",
    (sc.REQUEST_MODEL, "bitnet.kernel.declared", "bitnet.kernel.actual"),
)
QUANT_ACCURACY = Histogram(
    "bitnet.quant.accuracy",
    "1",
    "Accuracy ratio: clip(cosine, 0, 1) for tensors, top-1 agreement for logits.",
    _QUANT,
    buckets=ACCURACY_BUCKETS,
    seed="bitnet_quantization_accuracy",
)
QUANT_SQNR = Histogram(
    "bitnet.quant.sqnr",
    "{dB}",
    "Signal-to-quantization-noise ratio of a quantized tensor against its reference.",
    _QUANT,
    buckets=SQNR_BUCKETS,
)
QUANT_RELATIVE_ERROR = Histogram(
    "bitnet.quant.relative_error",
    "1",
    "Relative L2 error ||r - a|| / ||r|| against the reference.",
    _QUANT,
    buckets=REL_ERROR_BUCKETS,
    seed="bitnet_quantization_error",
)
QUANT_OPERATIONS = Counter(
    "bitnet.quant.operations",
    "{operation}",
    "Accuracy measurements taken.",
    _QUANT,
    seed="bitnet_quantization_operations_total",
)
QUANT_KERNEL_OVERFLOWS = Counter(
    "bitnet.quant.kernel_overflows",
    "{output}",
    "Outputs (token x row) of sampled fidelity checks where bitnet.cpp's x86 AVX2 I2_S kernel "
    "wraps a 16-bit lane, so its result differs from the exact dot product.",
    ("bitnet.quant.format", "bitnet.tensor"),
)
QUANT_DURATION = Histogram(
    "bitnet.quant.duration",
    "s",
    "Time spent computing one accuracy measurement.",
    _QUANT,
    buckets=QUANT_DURATION_BUCKETS,
)
QUANT_SCALE = Gauge(
    "bitnet.quant.scale",
    "1",
    "Per-tensor weight scale (absmean) of the ternary quantization.",
    _QUANT,
)
QUANT_SAMPLES_SKIPPED = Counter(
    "bitnet.quant.samples_skipped",
    "{sample}",
    "Accuracy samples not taken, by bitnet.quant.skip_reason (budget, bad_input, ...).",
    ("bitnet.quant.kind", "bitnet.quant.skip_reason"),
)
INTERNAL_ERRORS = Counter(
    "bitnet.obs.internal_errors",
    "{error}",
    "Failures inside bitnet-obs that were swallowed to protect inference.",
    ("bitnet.obs.error.kind",),
)
EXPORTS = Counter(
    "bitnet.obs.exports",
    "{export}",
    "Export attempts per exporter and outcome; failures mean telemetry is being dropped.",
    ("bitnet.obs.exporter", "bitnet.outcome"),
)
DROPPED = Counter(
    "bitnet.obs.dropped",
    "{item}",
    "Spans, metric points and HTTP connections given up, by bitnet.obs.signal and "
    "bitnet.obs.drop_reason (queue_full, export_failed, shutdown, after_shutdown, ...).",
    ("bitnet.obs.signal", "bitnet.obs.drop_reason"),
)
SYSTEM_CPU_UTILIZATION = ObservedGauge(
    sc.SYSTEM_CPU_UTILIZATION,
    "1",
    "Fraction of host CPU time (all logical CPUs) spent in each cpu.mode since the last read.",
    (sc.CPU_MODE,),
    seed="bitnet_cpu_utilization_ratio",
)
SYSTEM_MEMORY_USAGE = UpDownCounter(
    sc.SYSTEM_MEMORY_USAGE,
    "By",
    "Host memory by system.memory.state (used, free, cached, buffers).",
    (sc.SYSTEM_MEMORY_STATE,),
    seed="bitnet_system_memory_usage_bytes",
)
SYSTEM_MEMORY_UTILIZATION = ObservedGauge(
    sc.SYSTEM_MEMORY_UTILIZATION,
    "1",
    "Fraction of host memory in each system.memory.state.",
    (sc.SYSTEM_MEMORY_STATE,),
)
SYSTEM_DISK_IO = Counter(
    sc.SYSTEM_DISK_IO,
    "By",
    "Bytes read from and written to the host's disks (summed over disks).",
    (sc.DISK_IO_DIRECTION,),
)
SYSTEM_NETWORK_IO = Counter(
    sc.SYSTEM_NETWORK_IO,
    "By",
    "Bytes received and transmitted on the host's interfaces other than loopback.",
    (sc.NETWORK_IO_DIRECTION,),
)
PROCESS_CPU_UTILIZATION = ObservedGauge(
    sc.PROCESS_CPU_UTILIZATION,
    "1",
    "CPU used by this process since the last read, as a fraction of the CPUs it may run on.",
    (sc.CPU_MODE,),
)
PROCESS_MEMORY_USAGE = UpDownCounter(
    sc.PROCESS_MEMORY_USAGE,
    "By",
    "Resident memory (RSS) of this process.",
)
GPU_UTILIZATION = ObservedGauge(
    sc.HW_GPU_UTILIZATION,
    "1",
    "Fraction of time the GPU was busy over NVML's last sample period.",
    _GPU,
    seed="bitnet_gpu_utilization_ratio",
)
GPU_MEMORY_USAGE = UpDownCounter(
    sc.HW_GPU_MEMORY_USAGE,
    "By",
    "GPU memory in use.",
    _GPU,
    seed="bitnet_gpu_memory_usage_bytes",
)
GPU_MEMORY_LIMIT = UpDownCounter(
    sc.HW_GPU_MEMORY_LIMIT,
    "By",
    "GPU memory size.",
    _GPU,
)
GPU_MEMORY_UTILIZATION = ObservedGauge(
    sc.HW_GPU_MEMORY_UTILIZATION,
    "1",
    "Fraction of GPU memory in use.",
    _GPU,
)
GPU_TEMPERATURE = ObservedGauge(
    sc.HW_TEMPERATURE,
    "Cel",
    "GPU core temperature.",
    _GPU,
)
GPU_POWER = ObservedGauge(
    sc.HW_POWER,
    "W",
    "GPU power draw.",
    _GPU,
)
GPU_ERRORS = Counter(
    sc.HW_ERRORS,
    "{error}",
    "GPU ECC memory errors since the driver loaded, by error.type (corrected, uncorrected).",
    (*_GPU, ERROR_TYPE),
)
HEALTH_STATUS = ObservedGauge(
    "bitnet.health.status",
    "1",
    "Last result of each health check: 1 healthy, 0.5 degraded, 0 unhealthy.",
    ("bitnet.health.component",),
    seed="bitnet_component_health_status",
)
HEALTH_CHECK_DURATION = Histogram(
    "bitnet.health.check.duration",
    "s",
    "Time one health check took (recorded when it finishes, even after a timeout).",
    ("bitnet.health.component",),
    buckets=HEALTH_CHECK_BUCKETS,
    seed="bitnet_health_check_duration_seconds",
)
HEALTH_CHECK_FAILURES = Counter(
    "bitnet.health.check.failures",
    "{failure}",
    "Health check runs that were unhealthy, timed out or raised, by error.type.",
    ("bitnet.health.component", ERROR_TYPE),
    seed="bitnet_health_check_failures_total",
)
SLA_COMPLIANCE = ObservedGauge(
    "bitnet.sla.compliance",
    "1",
    "Fraction of the window's requests that met each objective (and all of them: overall).",
    ("bitnet.sla.objective",),
    seed="bitnet_sla_compliance_ratio",
)
SLA_VIOLATIONS = Counter(
    "bitnet.sla.violations",
    "{violation}",
    "Times an objective went from met to missed (warning) or badly missed (critical).",
    ("bitnet.sla.objective", "bitnet.sla.severity"),
    seed="bitnet_sla_violations_total",
)
MODEL_LOAD_DURATION = Histogram(
    "bitnet.model.load.duration",
    "s",
    "Time to load a model (weights read, quantized, placed on the device).",
    (*_MODEL, ERROR_TYPE),
    buckets=MODEL_LOAD_BUCKETS,
    seed="bitnet_model_load_duration_seconds",
)
MODEL_LOADS = Counter(
    "bitnet.model.loads",
    "{load}",
    "Model loads by outcome (ok, error) and error.type.",
    (*_MODEL, "bitnet.outcome", ERROR_TYPE),
    seed="bitnet_model_load_failures_total (outcome=error)",
)
MODEL_LOADED = UpDownCounter(
    "bitnet.model.loaded",
    "{model}",
    "Models currently loaded (load ok minus unload).",
    _MODEL,
    seed="bitnet_models_loaded",
)
MODEL_SIZE = Gauge(
    "bitnet.model.size",
    "By",
    "Size of a loaded model's weights in bytes.",
    _MODEL,
    seed="bitnet_model_size_bytes",
)
MODEL_INFO = ObservedGauge(
    "bitnet.model.info",
    "1",
    "A loaded model file (value 1): its format, stored types with tensor counts, size "
    "in bytes and SHA-256 (computed off the request path), and for GGUF the architecture and "
    "parameter count its header declares; gone at unload_model.",
    (
        *_MODEL,
        "bitnet.model.file.name",
        "bitnet.model.file.format",
        "bitnet.model.file.quant_types",
        "bitnet.model.file.size",
        "bitnet.model.file.sha256",
        "bitnet.model.architecture",
        "bitnet.model.parameters",
    ),
)
# Output health (bitnet_obs.output; the request path's add_output_ids / observe_logits).
DEGENERATE_OUTPUTS = Counter(
    "bitnet.output.degenerate",
    "{output}",
    "Outputs judged degenerate (bitnet_obs.output), by bitnet.degenerate.reason: "
    "repeat_run, cycle, low_diversity.",
    (*_REQ, "bitnet.degenerate.reason"),
    shared=True,
)
OUTPUT_REPEAT_RUN = Histogram(
    "bitnet.output.repeat_run",
    "{token}",
    "Longest run of one repeated token id in each output.",
    _REQ,
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 1024, 4096),
)
OUTPUT_DISTINCT_FRACTION = Histogram(
    "bitnet.output.distinct_fraction",
    "1",
    "Lowest fraction of distinct token ids in a window of each output.",
    _REQ,
    buckets=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1),
)
LOGITS_ENTROPY = Histogram(
    "bitnet.output.logits.entropy",
    "{nat}",
    "Next-token entropy of sampled decoding steps: 0 certain, log(vocab) uniform.",
    _REQ,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12),
)
LOGITS_TOP1_MARGIN = Histogram(
    "bitnet.output.logits.top1_margin",
    "1",
    "p(top-1) - p(top-2) of sampled decoding steps.",
    _REQ,
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1),
)
# Cross-validation against golden outputs (bitnet_obs.crossval, canaries).
CROSSVAL_RUNS = Counter(
    "bitnet.crossval.runs",
    "{run}",
    "Cross-validation runs against golden outputs (crossval.check, canaries), by "
    "bitnet.crossval.outcome (pass, fail).",
    (sc.REQUEST_MODEL, "bitnet.crossval.outcome"),
    seed="bitnet_crossval_test_failures_total (outcome=fail)",
)
CROSSVAL_PASSING = Gauge(
    "bitnet.crossval.passing",
    "1",
    "1 if the last cross-validation run passed, 0 if it failed.",
    (sc.REQUEST_MODEL,),
)
CROSSVAL_TOKEN_AGREEMENT = Gauge(
    "bitnet.crossval.token_agreement",
    "1",
    "Fraction of golden output tokens the candidate reproduced in the last run.",
    (sc.REQUEST_MODEL,),
    seed="bitnet_crossval_accuracy_difference (as 1 - agreement)",
)
CROSSVAL_KL = Gauge(
    "bitnet.crossval.kl",
    "{nat}",
    "Mean KL(golden || candidate) of next-token distributions in the last run.",
    (sc.REQUEST_MODEL,),
)
CROSSVAL_THROUGHPUT = Gauge(
    "bitnet.crossval.throughput",
    "{token}/s",
    "Tokens/s on the golden cases in the last run, by bitnet.crossval.implementation "
    "(candidate, reference).",
    (sc.REQUEST_MODEL, "bitnet.crossval.implementation"),
    seed="per-implementation throughput (candidate / reference)",
)
RUNTIME_INFO = ObservedGauge(
    "bitnet.runtime.info",
    "1",
    "1 per process; the attributes say what it runs on: CPU model and BitNet-relevant "
    "ISA features, OS/arch, Python, numpy, torch and transformers versions, and "
    "llama-cpp-python's version with the features its llama.cpp build compiled in.",
    (
        sc.HOST_ARCH,
        sc.OS_TYPE,
        sc.HOST_CPU_MODEL_NAME,
        sc.HOST_CPU_VENDOR_ID,
        "bitnet.cpu.features",
        "bitnet.cpu.simd",
        sc.PROCESS_RUNTIME_VERSION,
        "bitnet.numpy.version",
        "bitnet.torch.version",
        "bitnet.transformers.version",
        "bitnet.llama_cpp.version",
        "bitnet.llama_cpp.features",
        "bitnet.llama_cpp.simd",
    ),
)
QUEUE_DEPTH = UpDownCounter(
    "bitnet.queue.depth",
    "{request}",
    "Requests waiting in a queue, by queue and priority.",
    _QUEUE,
    seed="bitnet_queue_depth",
)
QUEUE_WAIT_DURATION = Histogram(
    "bitnet.queue.wait.duration",
    "s",
    "Time a request spent queued before it was taken for inference.",
    _QUEUE,
    buckets=QUEUE_WAIT_BUCKETS,
    seed="bitnet_queue_wait_seconds",
)
BATCH_FORMATION_DURATION = Histogram(
    "bitnet.batch.formation.duration",
    "s",
    "Time spent forming one batch, from its first request to dispatch.",
    ("bitnet.queue.name",),
    buckets=BATCH_FORMATION_BUCKETS,
    seed="bitnet_batch_formation_duration_seconds",
)
BATCH_SIZE = Histogram(
    "bitnet.batch.size",
    "{request}",
    "Requests per dispatched batch.",
    ("bitnet.queue.name",),
    buckets=BATCH_SIZE_BUCKETS,
    seed="bitnet_batch_size",
)
CACHE_HITS = Counter(
    "bitnet.cache.hits",
    "{hit}",
    "KV/prefix cache hits; hit rate = hits / (hits + misses).",
    _CACHE,
    seed="bitnet_cache_hit_rate (as hits / (hits + misses))",
)
CACHE_MISSES = Counter(
    "bitnet.cache.misses",
    "{miss}",
    "KV/prefix cache misses.",
    _CACHE,
)
CACHE_USAGE = ObservedGauge(
    "bitnet.cache.usage",
    "By",
    "Bytes held by a cache (block caches report blocks x block size).",
    ("bitnet.cache.name",),
)

CATALOGUE: tuple[Instrument, ...] = tuple(_CATALOGUE)
BY_NAME: dict[str, Instrument] = {instrument.name: instrument for instrument in CATALOGUE}
COUNTERS: tuple[Counter, ...] = tuple(i for i in CATALOGUE if isinstance(i, Counter))


# --- binding -----------------------------------------------------------------------------------


class _Binding(NamedTuple):
    """The meter, tracer and own-aggregation store in force; swapped whole by :func:`bind`."""

    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    store: Store | None
    tracer: Tracer
    generation: int
    instruments: tuple[Any, ...]  # each catalogue instrument's SDK instrument, in order


_lock = threading.Lock()
_binding: _Binding | None = None
_store: Store | None = None  # the binding's, read on every record
_generation = 0


def bind(
    meter_provider: MeterProvider, tracer_provider: TracerProvider, store: Store | None = None
) -> None:
    """Point every instrument at these providers (``configure()`` and the testing helpers).

    With a ``store``, histograms are aggregated by us into it (the caller merges it into what
    the providers' readers collect); without, they are recorded through the SDK instruments.
    """
    meter = meter_provider.get_meter(SCOPE, __version__, schema_url=SCHEMA_URL)
    made = tuple(instrument._create(meter) for instrument in CATALOGUE)
    _install(meter_provider, tracer_provider, store, made)


def _install(
    meter_provider: MeterProvider,
    tracer_provider: TracerProvider,
    store: Store | None,
    made: tuple[Any, ...],
) -> None:
    global _binding, _store, _generation
    with _lock:
        for instrument, sdk in zip(CATALOGUE, made, strict=True):
            instrument._sdk = sdk
        _generation += 1
        tracer = tracer_provider.get_tracer(SCOPE, __version__, schema_url=SCHEMA_URL)
        _binding = _Binding(meter_provider, tracer_provider, store, tracer, _generation, made)
        _store = store


def store() -> Store | None:
    """The own-aggregation store of the binding in force (None: histograms go to the SDK)."""
    return _store


def generation() -> int:
    """Changes whenever the binding does (a cached :class:`Bound` is then stale)."""
    return _generation


def binding() -> _Binding:
    """The binding in force (to the global API providers on first use); pass it to
    :func:`restore` later."""
    return _binding or _bind_global()


def restore(previous: _Binding | None) -> None:
    """Put back a binding :func:`binding` returned (None: the global API providers)."""
    if previous is None:
        _bind_global(force=True)
    else:
        _install(previous.meter_provider, previous.tracer_provider, previous.store,
                 previous.instruments)  # fmt: skip


def tracer() -> Tracer:
    """The tracer in force."""
    current = _binding
    return (current or _bind_global()).tracer


def _bind_global(force: bool = False) -> _Binding:
    current = _binding
    if current is None or force:
        bind(metrics.get_meter_provider(), trace.get_tracer_provider())
    assert _binding is not None
    return _binding


def _bound_default(instrument: Instrument) -> Any:
    """First use before any :func:`bind`: bind to the global API providers."""
    _bind_global()
    return instrument._sdk


@_state.on_fork
def _reinit_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


@_state.on_reset(phase=_state.CLEAR)
def _unbind() -> None:
    global _binding, _store, _generation
    with _lock:
        _binding, _store = None, None
        _generation += 1
        for instrument in CATALOGUE:
            instrument._sdk = None
    set_cardinality_limit(DEFAULT_CARDINALITY_LIMIT)


DEFAULT_CARDINALITY_LIMIT = 2000


def set_cardinality_limit(limit: int) -> None:
    """Most distinct attribute sets per tally-backed instrument."""
    for counter in COUNTERS:
        counter.tally.limit = limit


# --- Prometheus names ------------------------------------------------------------------------


def prometheus_name(instrument: Instrument) -> str:
    """The name Prometheus shows for this instrument's samples (a test checks it against the
    OTel exporter)."""
    counter = instrument.kind in (Kind.COUNTER, Kind.OBSERVABLE_COUNTER)
    return _names.prometheus_name(instrument.name, instrument.unit, counter)
