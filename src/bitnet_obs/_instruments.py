"""The metric catalogue: every instrument's name, type, unit, description and buckets.

This is the one place instruments are defined. ``docs/metrics.md`` is generated from
:data:`CATALOGUE` (``python -m bitnet_obs._instruments``), with the Prometheus name each one
gets and the seed-design metric it replaces.

Instruments are created through the OpenTelemetry **API** only, so they report to whatever
``MeterProvider`` is in force: ours from ``configure()``, or one the application set up.
"""

from __future__ import annotations

import enum
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import Tracer, TracerProvider

from bitnet_obs import _tally
from bitnet_obs._version import __version__

SCOPE = "bitnet_obs"


class Kind(enum.Enum):
    COUNTER = "counter"
    UPDOWNCOUNTER = "updowncounter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"
    OBSERVABLE_COUNTER = "observable counter"
    OBSERVABLE_UPDOWNCOUNTER = "observable updowncounter"
    OBSERVABLE_GAUGE = "observable gauge"


@dataclass(frozen=True)
class Spec:
    """One instrument. ``seed`` names the seed-design metric(s) it replaces."""

    name: str
    kind: Kind
    unit: str
    description: str
    attributes: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    seed: str = ""


# Bucket boundaries. Durations follow the GenAI semantic conventions' advice (seconds, not the
# SDK's millisecond-shaped defaults).
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
TPOT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)
THROUGHPUT_BUCKETS = (
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    2000.0,
    5000.0,
    10000.0,
)
TOKEN_USAGE_BUCKETS = (
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
)
# Ternary weights sit near 0.887 against FP32, kernels near 1.0 against the quantized reference:
# fine buckets in both regions, plus the seed's 0.9 / 0.95 / 0.99 / 0.995 / 0.999 / 1.0.
ACCURACY_BUCKETS = (
    0.5,
    0.8,
    0.82,
    0.84,
    0.85,
    0.86,
    0.87,
    0.88,
    0.89,
    0.9,
    0.91,
    0.92,
    0.93,
    0.94,
    0.95,
    0.97,
    0.99,
    0.995,
    0.999,
    0.9999,
    1.0,
)
SQNR_BUCKETS = (
    0.0,
    2.0,
    4.0,
    5.0,
    5.5,
    6.0,
    6.5,
    7.0,
    8.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    45.0,
    50.0,
    60.0,
    80.0,
    100.0,
)
REL_ERROR_BUCKETS = (
    1e-7,
    1e-6,
    1e-5,
    1e-4,
    1e-3,
    0.005,
    0.01,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.8,
    1.0,
)
QUANT_DURATION_BUCKETS = (
    1e-5,
    1e-4,
    5e-4,
    1e-3,
    5e-3,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

HEALTH_CHECK_BUCKETS = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_REQ = (
    "gen_ai.operation.name",
    "gen_ai.request.model",
    "gen_ai.provider.name",
    "bitnet.quant.format",
    "bitnet.device",
)
_QUANT = ("bitnet.quant.format", "bitnet.quant.kind", "bitnet.quant.reference", "bitnet.tensor")
_GPU = ("hw.id", "hw.type", "hw.name", "bitnet.gpu.index")

MODEL_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_FORMATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
_MODEL = ("gen_ai.request.model", "bitnet.quant.format", "bitnet.device")
_QUEUE = ("bitnet.queue.name", "bitnet.request.priority")
_CACHE = ("bitnet.cache.name", "gen_ai.request.model")

CATALOGUE: tuple[Spec, ...] = (
    # --- inference (per request) ---
    Spec(
        "gen_ai.server.request.duration",
        Kind.HISTOGRAM,
        "s",
        "End-to-end duration of an inference request.",
        (*_REQ, "error.type"),
        DURATION_BUCKETS,
        "bitnet_inference_duration_seconds",
    ),
    Spec(
        "gen_ai.server.time_to_first_token",
        Kind.HISTOGRAM,
        "s",
        "Time from request start to the first output token.",
        _REQ,
        TTFT_BUCKETS,
    ),
    Spec(
        "gen_ai.server.time_per_output_token",
        Kind.HISTOGRAM,
        "s",
        "Mean time per output token after the first one.",
        _REQ,
        TPOT_BUCKETS,
    ),
    Spec(
        "bitnet.inference.requests",
        Kind.OBSERVABLE_COUNTER,
        "{request}",
        "Finished inference requests by outcome (ok, error, cancelled).",
        (*_REQ, "bitnet.outcome", "error.type"),
        None,
        "bitnet_inference_requests_total",
    ),
    Spec(
        "bitnet.inference.active_requests",
        Kind.OBSERVABLE_UPDOWNCOUNTER,
        "{request}",
        "Inference requests in progress.",
        _REQ,
        None,
        "bitnet_active_inference_requests",
    ),
    Spec(
        "bitnet.inference.tokens",
        Kind.OBSERVABLE_COUNTER,
        "{token}",
        "Tokens processed, by gen_ai.token.type (input, output); rate() gives tokens/s.",
        (*_REQ, "gen_ai.token.type"),
    ),
    Spec(
        "bitnet.inference.throughput",
        Kind.HISTOGRAM,
        "{token}/s",
        "Output tokens per second of each request.",
        _REQ,
        THROUGHPUT_BUCKETS,
        "bitnet_tokens_per_second",
    ),
    Spec(
        "gen_ai.client.token.usage",
        Kind.HISTOGRAM,
        "{token}",
        "Tokens per request by gen_ai.token.type (opt-in: client_token_usage=True).",
        (*_REQ, "gen_ai.token.type"),
        TOKEN_USAGE_BUCKETS,
    ),
    Spec(
        "bitnet.device.fallbacks",
        Kind.OBSERVABLE_COUNTER,
        "{fallback}",
        "Device fallbacks (e.g. GPU to CPU) and why.",
        (
            "bitnet.device.from",
            "bitnet.device.to",
            "bitnet.fallback.reason",
            "gen_ai.request.model",
        ),
        None,
        "bitnet_device_fallback_events_total",
    ),
    # --- quantization accuracy ---
    Spec(
        "bitnet.quant.accuracy",
        Kind.HISTOGRAM,
        "1",
        "Accuracy ratio: clip(cosine, 0, 1) for tensors, top-1 agreement for logits.",
        _QUANT,
        ACCURACY_BUCKETS,
        "bitnet_quantization_accuracy",
    ),
    Spec(
        "bitnet.quant.sqnr",
        Kind.HISTOGRAM,
        "dB",
        "Signal-to-quantization-noise ratio of a quantized tensor against its reference.",
        _QUANT,
        SQNR_BUCKETS,
    ),
    Spec(
        "bitnet.quant.relative_error",
        Kind.HISTOGRAM,
        "1",
        "Relative L2 error ||r - a|| / ||r|| against the reference.",
        _QUANT,
        REL_ERROR_BUCKETS,
        "bitnet_quantization_error",
    ),
    Spec(
        "bitnet.quant.operations",
        Kind.OBSERVABLE_COUNTER,
        "{operation}",
        "Accuracy measurements taken.",
        _QUANT,
        None,
        "bitnet_quantization_operations_total",
    ),
    Spec(
        "bitnet.quant.duration",
        Kind.HISTOGRAM,
        "s",
        "Time spent computing one accuracy measurement.",
        _QUANT,
        QUANT_DURATION_BUCKETS,
    ),
    Spec(
        "bitnet.quant.scale",
        Kind.GAUGE,
        "1",
        "Per-tensor weight scale (absmean) of the ternary quantization.",
        _QUANT,
    ),
    Spec(
        "bitnet.quant.samples_skipped",
        Kind.OBSERVABLE_COUNTER,
        "{sample}",
        "Accuracy samples not taken, by bitnet.quant.skip_reason (budget, bad_input, ...).",
        ("bitnet.quant.kind", "bitnet.quant.skip_reason"),
    ),
    # --- self-telemetry ---
    Spec(
        "bitnet.obs.internal_errors",
        Kind.OBSERVABLE_COUNTER,
        "{error}",
        "Failures inside bitnet-obs that were swallowed to protect inference.",
        ("bitnet.obs.error.kind",),
    ),
    Spec(
        "bitnet.obs.exports",
        Kind.OBSERVABLE_COUNTER,
        "{export}",
        "Export attempts per exporter and outcome; failures mean telemetry is being dropped.",
        ("bitnet.obs.exporter", "bitnet.outcome"),
    ),
    Spec(
        "bitnet.obs.dropped",
        Kind.OBSERVABLE_COUNTER,
        "{item}",
        "Spans, metric points and HTTP connections given up, by bitnet.obs.signal and "
        "bitnet.obs.drop_reason (queue_full, export_failed, shutdown, after_shutdown, ...).",
        ("bitnet.obs.signal", "bitnet.obs.drop_reason"),
    ),
    # --- devices, health, SLA ---
    # System and process (bitnet_obs.devices; psutil, read at collection time only).
    Spec(
        "system.cpu.utilization",
        Kind.OBSERVABLE_GAUGE,
        "1",
        "Fraction of host CPU time (all logical CPUs) spent in each cpu.mode since the last read.",
        ("cpu.mode",),
        None,
        "bitnet_cpu_utilization_ratio",
    ),
    Spec(
        "system.memory.usage",
        Kind.OBSERVABLE_UPDOWNCOUNTER,
        "By",
        "Host memory by system.memory.state (used, free, cached, buffers).",
        ("system.memory.state",),
        None,
        "bitnet_system_memory_usage_bytes",
    ),
    Spec(
        "system.memory.utilization",
        Kind.OBSERVABLE_GAUGE,
        "1",
        "Fraction of host memory in each system.memory.state.",
        ("system.memory.state",),
    ),
    Spec(
        "system.disk.io",
        Kind.OBSERVABLE_COUNTER,
        "By",
        "Bytes read from and written to the host's disks (summed over disks).",
        ("disk.io.direction",),
    ),
    Spec(
        "system.network.io",
        Kind.OBSERVABLE_COUNTER,
        "By",
        "Bytes received and transmitted on the host's interfaces other than loopback.",
        ("network.io.direction",),
    ),
    Spec(
        "process.cpu.utilization",
        Kind.OBSERVABLE_GAUGE,
        "1",
        "CPU used by this process since the last read, as a fraction of the CPUs it may run on.",
        ("cpu.mode",),
    ),
    Spec(
        "process.memory.usage",
        Kind.OBSERVABLE_UPDOWNCOUNTER,
        "By",
        "Resident memory (RSS) of this process.",
    ),
    # GPUs (bitnet_obs.devices; NVML through nvidia-ml-py, extra [gpu]).
    Spec(
        "hw.gpu.utilization",
        Kind.OBSERVABLE_GAUGE,
        "1",
        "Fraction of time the GPU was busy over NVML's last sample period.",
        _GPU,
        None,
        "bitnet_gpu_utilization_ratio",
    ),
    Spec(
        "hw.gpu.memory.usage",
        Kind.OBSERVABLE_UPDOWNCOUNTER,
        "By",
        "GPU memory in use.",
        _GPU,
        None,
        "bitnet_gpu_memory_usage_bytes",
    ),
    Spec("hw.gpu.memory.limit", Kind.OBSERVABLE_UPDOWNCOUNTER, "By", "GPU memory size.", _GPU),
    Spec(
        "hw.gpu.memory.utilization",
        Kind.OBSERVABLE_GAUGE,
        "1",
        "Fraction of GPU memory in use.",
        _GPU,
    ),
    Spec("hw.temperature", Kind.OBSERVABLE_GAUGE, "Cel", "GPU core temperature.", _GPU),
    Spec("hw.power", Kind.OBSERVABLE_GAUGE, "W", "GPU power draw.", _GPU),
    Spec(
        "hw.errors",
        Kind.OBSERVABLE_COUNTER,
        "{error}",
        "GPU ECC memory errors since the driver loaded, by error.type (corrected, uncorrected).",
        (*_GPU, "error.type"),
    ),
    # Health (bitnet_obs.health).
    Spec(
        "bitnet.health.status",
        Kind.OBSERVABLE_GAUGE,
        "1",
        "Last result of each health check: 1 healthy, 0.5 degraded, 0 unhealthy.",
        ("bitnet.health.component",),
        None,
        "bitnet_component_health_status",
    ),
    Spec(
        "bitnet.health.check.duration",
        Kind.HISTOGRAM,
        "s",
        "Time one health check took (recorded when it finishes, even after a timeout).",
        ("bitnet.health.component",),
        HEALTH_CHECK_BUCKETS,
        "bitnet_health_check_duration_seconds",
    ),
    Spec(
        "bitnet.health.check.failures",
        Kind.OBSERVABLE_COUNTER,
        "{failure}",
        "Health check runs that were unhealthy, timed out or raised, by error.type.",
        ("bitnet.health.component", "error.type"),
        None,
        "bitnet_health_check_failures_total",
    ),
    # SLA (bitnet_obs.sla).
    Spec(
        "bitnet.sla.compliance",
        Kind.OBSERVABLE_GAUGE,
        "1",
        "Fraction of the window's requests that met each objective (and all of them: overall).",
        ("bitnet.sla.objective",),
        None,
        "bitnet_sla_compliance_ratio",
    ),
    Spec(
        "bitnet.sla.violations",
        Kind.OBSERVABLE_COUNTER,
        "{violation}",
        "Times an objective went from met to missed (warning) or badly missed (critical).",
        ("bitnet.sla.objective", "bitnet.sla.severity"),
        None,
        "bitnet_sla_violations_total",
    ),
    # --- serving lifecycle: model load, queue and batching, caches ---
    Spec(
        "bitnet.model.load.duration",
        Kind.HISTOGRAM,
        "s",
        "Time to load a model (weights read, quantized, placed on the device).",
        (*_MODEL, "error.type"),
        MODEL_LOAD_BUCKETS,
        "bitnet_model_load_duration_seconds",
    ),
    Spec(
        "bitnet.model.loads",
        Kind.OBSERVABLE_COUNTER,
        "{load}",
        "Model loads by outcome (ok, error) and error.type.",
        (*_MODEL, "bitnet.outcome", "error.type"),
        None,
        "bitnet_model_load_failures_total (outcome=error)",
    ),
    Spec(
        "bitnet.model.loaded",
        Kind.OBSERVABLE_UPDOWNCOUNTER,
        "{model}",
        "Models currently loaded (load ok minus unload).",
        _MODEL,
        None,
        "bitnet_models_loaded",
    ),
    Spec(
        "bitnet.model.size",
        Kind.GAUGE,
        "By",
        "Size of a loaded model's weights in bytes.",
        _MODEL,
        None,
        "bitnet_model_size_bytes",
    ),
    Spec(
        "bitnet.queue.depth",
        Kind.OBSERVABLE_UPDOWNCOUNTER,
        "{request}",
        "Requests waiting in a queue, by queue and priority.",
        _QUEUE,
        None,
        "bitnet_queue_depth",
    ),
    Spec(
        "bitnet.queue.wait.duration",
        Kind.HISTOGRAM,
        "s",
        "Time a request spent queued before it was taken for inference.",
        _QUEUE,
        QUEUE_WAIT_BUCKETS,
        "bitnet_queue_wait_seconds",
    ),
    Spec(
        "bitnet.batch.formation.duration",
        Kind.HISTOGRAM,
        "s",
        "Time spent forming one batch, from its first request to dispatch.",
        ("bitnet.queue.name",),
        BATCH_FORMATION_BUCKETS,
        "bitnet_batch_formation_duration_seconds",
    ),
    Spec(
        "bitnet.batch.size",
        Kind.HISTOGRAM,
        "{request}",
        "Requests per dispatched batch.",
        ("bitnet.queue.name",),
        BATCH_SIZE_BUCKETS,
        "bitnet_batch_size",
    ),
    Spec(
        "bitnet.cache.hits",
        Kind.OBSERVABLE_COUNTER,
        "{hit}",
        "KV/prefix cache hits; hit rate = hits / (hits + misses).",
        _CACHE,
        None,
        "bitnet_cache_hit_rate (as hits / (hits + misses))",
    ),
    Spec(
        "bitnet.cache.misses",
        Kind.OBSERVABLE_COUNTER,
        "{miss}",
        "KV/prefix cache misses.",
        _CACHE,
    ),
    Spec(
        "bitnet.cache.usage",
        Kind.OBSERVABLE_GAUGE,
        "By",
        "Bytes held by a cache (block caches report blocks x block size).",
        ("bitnet.cache.name",),
    ),
    # --- output health, cross-validation, runtime fingerprint (issue 14) ---
    Spec(
        "bitnet.output.degenerate",
        Kind.OBSERVABLE_COUNTER,
        "{output}",
        "Outputs judged degenerate (bitnet_obs.output), by bitnet.degenerate.reason: "
        "repeat_run, cycle, low_diversity.",
        (*_REQ, "bitnet.degenerate.reason"),
    ),
    Spec(
        "bitnet.output.repeat_run",
        Kind.HISTOGRAM,
        "{token}",
        "Longest run of one repeated token id in each output.",
        _REQ,
        (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 1024, 4096),
    ),
    Spec(
        "bitnet.output.distinct_fraction",
        Kind.HISTOGRAM,
        "1",
        "Lowest fraction of distinct token ids in a window of each output.",
        _REQ,
        (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1),
    ),
    Spec(
        "bitnet.output.logits.entropy",
        Kind.HISTOGRAM,
        "{nat}",
        "Next-token entropy of sampled decoding steps: 0 certain, log(vocab) uniform.",
        _REQ,
        (0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12),
    ),
    Spec(
        "bitnet.output.logits.top1_margin",
        Kind.HISTOGRAM,
        "1",
        "p(top-1) - p(top-2) of sampled decoding steps.",
        _REQ,
        (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1),
    ),
    Spec(
        "bitnet.crossval.runs",
        Kind.OBSERVABLE_COUNTER,
        "{run}",
        "Cross-validation runs against golden outputs (crossval.check, canaries), by "
        "bitnet.crossval.outcome (pass, fail).",
        ("gen_ai.request.model", "bitnet.crossval.outcome"),
        None,
        "bitnet_crossval_test_failures_total (outcome=fail)",
    ),
    Spec(
        "bitnet.crossval.passing",
        Kind.GAUGE,
        "1",
        "1 if the last cross-validation run passed, 0 if it failed.",
        ("gen_ai.request.model",),
    ),
    Spec(
        "bitnet.crossval.token_agreement",
        Kind.GAUGE,
        "1",
        "Fraction of golden output tokens the candidate reproduced in the last run.",
        ("gen_ai.request.model",),
        None,
        "bitnet_crossval_accuracy_difference (as 1 - agreement)",
    ),
    Spec(
        "bitnet.crossval.kl",
        Kind.GAUGE,
        "{nat}",
        "Mean KL(golden || candidate) of next-token distributions in the last run.",
        ("gen_ai.request.model",),
    ),
    Spec(
        "bitnet.crossval.throughput",
        Kind.GAUGE,
        "{token}/s",
        "Tokens/s on the golden cases in the last run, by bitnet.crossval.implementation "
        "(candidate, reference).",
        ("gen_ai.request.model", "bitnet.crossval.implementation"),
        None,
        "per-implementation throughput (candidate / reference)",
    ),
    Spec(
        "bitnet.runtime.info",
        Kind.OBSERVABLE_GAUGE,
        "1",
        "1 per process; the attributes say what it runs on: CPU model and BitNet-relevant "
        "ISA features, OS/arch, Python, numpy, torch and transformers versions.",
        (
            "host.arch",
            "os.type",
            "host.cpu.model.name",
            "host.cpu.vendor.id",
            "bitnet.cpu.features",
            "bitnet.cpu.simd",
            "process.runtime.version",
            "bitnet.numpy.version",
            "bitnet.torch.version",
            "bitnet.transformers.version",
        ),
    ),
)

BY_NAME: dict[str, Spec] = {spec.name: spec for spec in CATALOGUE}

# Observable instruments read these tallies at collection time.
TALLIES: dict[str, _tally.Tally] = {
    spec.name: _tally.Tally(spec.name)
    for spec in CATALOGUE
    if spec.kind in (Kind.OBSERVABLE_COUNTER, Kind.OBSERVABLE_UPDOWNCOUNTER)
}
_gauge_callbacks: dict[str, list[Callable[[CallbackOptions], Iterable[Observation]]]] = {}


def register_gauge_callback(
    name: str, callback: Callable[[CallbackOptions], Iterable[Observation]]
) -> None:
    """Feed an observable gauge of the catalogue; the callback runs at collection time."""
    _gauge_callbacks.setdefault(name, []).append(callback)


# --- callback-fed observable counters and updowncounters (devices) ----------------------------
# Most observable counters are fed by a Tally; a few (disk/network bytes, GPU memory, ECC
# errors) already exist as cumulative values elsewhere (psutil, NVML) and are read at
# collection time instead. Their observations are added to the tally's.
_counter_callbacks: dict[str, list[Callable[[CallbackOptions], Iterable[Observation]]]] = {}


def register_counter_callback(
    name: str, callback: Callable[[CallbackOptions], Iterable[Observation]]
) -> None:
    """Feed an observable (up-down) counter of the catalogue with cumulative values."""
    if BY_NAME[name].kind not in (Kind.OBSERVABLE_COUNTER, Kind.OBSERVABLE_UPDOWNCOUNTER):
        raise ValueError(f"{name} is not an observable counter")
    _counter_callbacks.setdefault(name, []).append(callback)


def unregister_callback(
    name: str, callback: Callable[[CallbackOptions], Iterable[Observation]]
) -> None:
    """Stop feeding an instrument from this callback (registered by either function above)."""
    for registry in (_gauge_callbacks, _counter_callbacks):
        callbacks = registry.get(name, [])
        if callback in callbacks:
            callbacks.remove(callback)


def _tally_and_callbacks(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    tally = TALLIES[name]
    callbacks = _counter_callbacks.setdefault(name, [])

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        out = list(tally.observe(options))
        for callback in list(callbacks):
            out.extend(callback(options))
        return out

    return observe


# --- end of callback-fed counters -------------------------------------------------------------


def _make(meter: Meter, spec: Spec) -> Any:
    common: dict[str, Any] = {"name": spec.name, "unit": spec.unit, "description": spec.description}
    if spec.kind is Kind.COUNTER:
        return meter.create_counter(**common)
    if spec.kind is Kind.UPDOWNCOUNTER:
        return meter.create_up_down_counter(**common)
    if spec.kind is Kind.GAUGE:
        return meter.create_gauge(**common)
    if spec.kind is Kind.HISTOGRAM:
        return meter.create_histogram(
            **common, explicit_bucket_boundaries_advisory=list(spec.buckets or ())
        )
    if spec.kind is Kind.OBSERVABLE_GAUGE:
        callbacks = _gauge_callbacks.setdefault(spec.name, [])

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            out: list[Observation] = []
            for callback in list(callbacks):
                out.extend(callback(options))
            return out

        return meter.create_observable_gauge(callbacks=[observe], **common)
    read = _tally_and_callbacks(spec.name)
    if spec.kind is Kind.OBSERVABLE_COUNTER:
        return meter.create_observable_counter(callbacks=[read], **common)
    return meter.create_observable_up_down_counter(callbacks=[read], **common)


class Instruments:
    """The live instruments of one meter, plus the tracer. Swapped whole on rebinding."""

    def __init__(self, meter_provider: MeterProvider, tracer_provider: TracerProvider) -> None:
        meter = meter_provider.get_meter(SCOPE, __version__)
        self.tracer: Tracer = tracer_provider.get_tracer(SCOPE, __version__)
        self.by_name: dict[str, Any] = {spec.name: _make(meter, spec) for spec in CATALOGUE}
        get = self.by_name.__getitem__
        self.duration = get("gen_ai.server.request.duration")
        self.ttft = get("gen_ai.server.time_to_first_token")
        self.tpot = get("gen_ai.server.time_per_output_token")
        self.throughput = get("bitnet.inference.throughput")
        self.token_usage = get("gen_ai.client.token.usage")
        self.quant_accuracy = get("bitnet.quant.accuracy")
        self.quant_sqnr = get("bitnet.quant.sqnr")
        self.quant_rel_error = get("bitnet.quant.relative_error")
        self.quant_duration = get("bitnet.quant.duration")
        self.quant_scale = get("bitnet.quant.scale")


_lock = threading.Lock()
_active: Instruments | None = None


def active() -> Instruments:
    """The instruments in force; created on first use against the global API providers."""
    current = _active
    if current is None:
        with _lock:
            current = _active
            if current is None:
                current = bind(metrics.get_meter_provider(), trace.get_tracer_provider())
    return current


def bind(meter_provider: MeterProvider, tracer_provider: TracerProvider) -> Instruments:
    """Point every instrument at these providers (configure() and the testing helpers)."""
    global _active
    instruments = Instruments(meter_provider, tracer_provider)
    _active = instruments
    return instruments


# --- documentation -------------------------------------------------------------------------

_PROM_UNITS = {
    "s": "seconds",
    "By": "bytes",
    "1": "",
    "%": "percent",
    "Cel": "celsius",
    "W": "watts",
    "J": "joules",
    "Hz": "hertz",
}


def prometheus_name(spec: Spec) -> str:
    """The name the OTel Prometheus exporter gives this instrument (checked by a test)."""
    name = re.sub(r"[^a-zA-Z0-9:]+", "_", spec.name)
    unit = re.sub(r"\{.*?\}", "", spec.unit)
    if "/" in unit:
        top, bottom = unit.split("/", 1)
        per = {"s": "second", "m": "minute", "h": "hour"}.get(bottom, bottom)
        top = _PROM_UNITS.get(top, top)
        unit = f"{top}_per_{per}" if top else f"per_{per}"
    else:
        unit = _PROM_UNITS.get(unit, unit)
    unit = re.sub(r"[^a-zA-Z0-9:]+", "_", unit).strip("_")
    if unit and not name.endswith("_" + unit):
        name = f"{name}_{unit}"
    if spec.kind in (Kind.COUNTER, Kind.OBSERVABLE_COUNTER):
        name += "_total"
    return name


def markdown_table() -> str:
    rows = [
        "| OTel name | Type | Unit | Prometheus name | Replaces (seed design) | Attributes |"
        " Description |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in CATALOGUE:
        attrs = ", ".join(f"`{a}`" for a in spec.attributes)
        seed = f"`{spec.seed}`" if spec.seed else ""
        rows.append(
            f"| `{spec.name}` | {spec.kind.value} | `{spec.unit}` | `{prometheus_name(spec)}` "
            f"| {seed} | {attrs} | {spec.description} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover - used by docs generation
    print(markdown_table(), end="")


def _reinit_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_after_fork)
