"""The metric catalogue: one typed handle per instrument, defined once, here.

Every instrument bitnet-obs reports is a module-level object below (as prometheus_client's
metric objects are): its name, kind, unit, description, attribute keys and buckets. The kinds
and how each records are in :mod:`bitnet_obs._kinds`. ``docs/metrics.md`` is generated from
:data:`CATALOGUE` (``tools/gen_docs.py``), with the Prometheus name each instrument gets.

Handles are bound to providers by :func:`bind` (``configure()``, the testing helpers), which
also chooses the request path's recorder (:mod:`bitnet_obs._recorder`) once; until then the
first use binds them to the global API providers, so bitnet-obs reports through whatever
``MeterProvider`` the application installed.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import SpanContext, Tracer, TracerProvider

from bitnet_obs import _kinds, _state
from bitnet_obs import _semconv as sc
from bitnet_obs._aggregate import Store
from bitnet_obs._kinds import (
    Gauge,
    Histogram,
    Instrument,
    Kind,
    ObservedCounter,
    ObservedGauge,
    ObservedUpDownCounter,
)
from bitnet_obs._recorder import OwnRecorder, Recorder, RequestTallies, SdkRecorder
from bitnet_obs._semconv import ERROR_TYPE, SCHEMA_URL
from bitnet_obs._tally import AttrValue
from bitnet_obs._version import __version__

__all__ = [
    "BY_NAME",
    "CATALOGUE",
    "Gauge",
    "Histogram",
    "Instrument",
    "Kind",
    "ObservedCounter",
    "ObservedGauge",
    "ObservedUpDownCounter",
    "bind",
    "binding",
    "prometheus_name",
    "recorder",
    "restore",
    "set_dup_reader",
    "tracer",
]

SCOPE = "bitnet_obs"

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
# fine buckets in both regions, plus the round 0.9 / 0.95 / 0.99 / 0.995 / 0.999 / 1.0.
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
REQUESTS = ObservedCounter(
    "bitnet.inference.requests",
    "{request}",
    "Finished inference requests by outcome (ok, error, cancelled), error.type and, when the "
    "code reports one, bitnet.response.finish_reason (stop, length, ...).",
    (*_REQ, "bitnet.outcome", ERROR_TYPE, sc.FINISH_REASON),
    shared=True,
)
ACTIVE_REQUESTS = ObservedUpDownCounter(
    "bitnet.inference.active_requests",
    "{request}",
    "Inference requests in progress.",
    _REQ,
    shared=True,
)
TOKENS = ObservedCounter(
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
    if _kinds.dup_names():
        for kind, n in (("input", n_in), ("output", n_out)):
            if n:
                TOKEN_USAGE.record(n, {**attributes, sc.LEGACY_TOKEN_TYPE: kind}, span)


FALLBACKS = ObservedCounter(
    "bitnet.device.fallbacks",
    "{fallback}",
    "Device fallbacks (e.g. GPU to CPU) and why.",
    ("bitnet.device.from", "bitnet.device.to", "bitnet.fallback.reason", sc.REQUEST_MODEL),
)
KERNEL_FALLBACKS = ObservedCounter(
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
)
QUANT_OPERATIONS = ObservedCounter(
    "bitnet.quant.operations",
    "{operation}",
    "Accuracy measurements taken.",
    _QUANT,
)
QUANT_KERNEL_OVERFLOWS = ObservedCounter(
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
QUANT_SAMPLES_SKIPPED = ObservedCounter(
    "bitnet.quant.samples_skipped",
    "{sample}",
    "Accuracy samples not taken, by bitnet.quant.skip_reason (budget, bad_input, ...).",
    ("bitnet.quant.kind", "bitnet.quant.skip_reason"),
)
INTERNAL_ERRORS = ObservedCounter(
    "bitnet.obs.internal_errors",
    "{error}",
    "Failures inside bitnet-obs that were swallowed to protect inference.",
    ("bitnet.obs.error.kind",),
)
EXPORTS = ObservedCounter(
    "bitnet.obs.exports",
    "{export}",
    "Export attempts per exporter and outcome; failures mean telemetry is being dropped.",
    ("bitnet.obs.exporter", "bitnet.outcome"),
)
DROPPED = ObservedCounter(
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
)
SYSTEM_MEMORY_USAGE = ObservedUpDownCounter(
    sc.SYSTEM_MEMORY_USAGE,
    "By",
    "Host memory by system.memory.state (used, free, cached, buffers).",
    (sc.SYSTEM_MEMORY_STATE,),
)
SYSTEM_MEMORY_UTILIZATION = ObservedGauge(
    sc.SYSTEM_MEMORY_UTILIZATION,
    "1",
    "Fraction of host memory in each system.memory.state.",
    (sc.SYSTEM_MEMORY_STATE,),
)
SYSTEM_DISK_IO = ObservedCounter(
    sc.SYSTEM_DISK_IO,
    "By",
    "Bytes read from and written to the host's disks (summed over disks).",
    (sc.DISK_IO_DIRECTION,),
)
SYSTEM_NETWORK_IO = ObservedCounter(
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
PROCESS_MEMORY_USAGE = ObservedUpDownCounter(
    sc.PROCESS_MEMORY_USAGE,
    "By",
    "Resident memory (RSS) of this process.",
)
GPU_UTILIZATION = ObservedGauge(
    sc.HW_GPU_UTILIZATION,
    "1",
    "Fraction of time the GPU was busy over NVML's last sample period.",
    _GPU,
)
GPU_MEMORY_USAGE = ObservedUpDownCounter(
    sc.HW_GPU_MEMORY_USAGE,
    "By",
    "GPU memory in use.",
    _GPU,
)
GPU_MEMORY_LIMIT = ObservedUpDownCounter(
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
GPU_ERRORS = ObservedCounter(
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
)
HEALTH_CHECK_DURATION = Histogram(
    "bitnet.health.check.duration",
    "s",
    "Time one health check took (recorded when it finishes, even after a timeout).",
    ("bitnet.health.component",),
    buckets=HEALTH_CHECK_BUCKETS,
)
HEALTH_CHECK_FAILURES = ObservedCounter(
    "bitnet.health.check.failures",
    "{failure}",
    "Health check runs that were unhealthy, timed out or raised, by error.type.",
    ("bitnet.health.component", ERROR_TYPE),
)
SLA_COMPLIANCE = ObservedGauge(
    "bitnet.sla.compliance",
    "1",
    "Fraction of the window's requests that met each objective (and all of them: overall).",
    ("bitnet.sla.objective",),
)
SLA_VIOLATIONS = ObservedCounter(
    "bitnet.sla.violations",
    "{violation}",
    "Times an objective went from met to missed (warning) or badly missed (critical).",
    ("bitnet.sla.objective", "bitnet.sla.severity"),
)
MODEL_LOAD_DURATION = Histogram(
    "bitnet.model.load.duration",
    "s",
    "Time to load a model (weights read, quantized, placed on the device).",
    (*_MODEL, ERROR_TYPE),
    buckets=MODEL_LOAD_BUCKETS,
)
MODEL_LOADS = ObservedCounter(
    "bitnet.model.loads",
    "{load}",
    "Model loads by outcome (ok, error) and error.type.",
    (*_MODEL, "bitnet.outcome", ERROR_TYPE),
)
MODEL_LOADED = ObservedUpDownCounter(
    "bitnet.model.loaded",
    "{model}",
    "Models currently loaded (load ok minus unload).",
    _MODEL,
)
MODEL_SIZE = Gauge(
    "bitnet.model.size",
    "By",
    "Size of a loaded model's weights in bytes.",
    _MODEL,
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
DEGENERATE_OUTPUTS = ObservedCounter(
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
CROSSVAL_RUNS = ObservedCounter(
    "bitnet.crossval.runs",
    "{run}",
    "Cross-validation runs against golden outputs (crossval.check, canaries), by "
    "bitnet.crossval.outcome (pass, fail).",
    (sc.REQUEST_MODEL, "bitnet.crossval.outcome"),
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
QUEUE_DEPTH = ObservedUpDownCounter(
    "bitnet.queue.depth",
    "{request}",
    "Requests waiting in a queue, by queue and priority.",
    _QUEUE,
)
QUEUE_WAIT_DURATION = Histogram(
    "bitnet.queue.wait.duration",
    "s",
    "Time a request spent queued before it was taken for inference.",
    _QUEUE,
    buckets=QUEUE_WAIT_BUCKETS,
)
BATCH_FORMATION_DURATION = Histogram(
    "bitnet.batch.formation.duration",
    "s",
    "Time spent forming one batch, from its first request to dispatch.",
    ("bitnet.queue.name",),
    buckets=BATCH_FORMATION_BUCKETS,
)
BATCH_SIZE = Histogram(
    "bitnet.batch.size",
    "{request}",
    "Requests per dispatched batch.",
    ("bitnet.queue.name",),
    buckets=BATCH_SIZE_BUCKETS,
)
CACHE_HITS = ObservedCounter(
    "bitnet.cache.hits",
    "{hit}",
    "KV/prefix cache hits; hit rate = hits / (hits + misses).",
    _CACHE,
)
CACHE_MISSES = ObservedCounter(
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

CATALOGUE: tuple[Instrument, ...] = tuple(_kinds.CREATED)
BY_NAME: dict[str, Instrument] = {instrument.name: instrument for instrument in CATALOGUE}
COUNTERS: tuple[ObservedCounter, ...] = tuple(
    i for i in CATALOGUE if isinstance(i, ObservedCounter)
)
#: The request path's histograms, in the order of RequestHandles' fields.
REQUEST_HISTOGRAMS: tuple[Histogram, ...] = (
    REQUEST_DURATION,
    THROUGHPUT,
    TIME_TO_FIRST_TOKEN,
    TIME_PER_OUTPUT_TOKEN,
    PREFILL_DURATION,
    DECODE_DURATION,
    INTER_TOKEN_LATENCY,
)


# --- binding -----------------------------------------------------------------------------------


class _Binding(NamedTuple):
    """The meter, tracer and recorder in force; swapped whole by :func:`bind`."""

    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    store: Store | None
    tracer: Tracer
    recorder: Recorder
    instruments: tuple[Any, ...]  # each catalogue instrument's SDK instrument, in order


_lock = threading.Lock()
_binding: _Binding | None = None
#: The binding's recorder, read by every monitored call (None: not bound yet, see recorder()).
RECORDER: Recorder | None = None
_TALLIES = RequestTallies(REQUESTS.tally, TOKENS.tally, ACTIVE_REQUESTS.tally,
                          DEGENERATE_OUTPUTS.tally)  # fmt: skip


def bind(
    meter_provider: MeterProvider, tracer_provider: TracerProvider, store: Store | None = None
) -> None:
    """Point every instrument at these providers (``configure()`` and the testing helpers).

    With a ``store``, histograms are aggregated by us into it (the caller merges it into what
    the providers' readers collect); without, they are recorded through the SDK instruments.
    The recorder is chosen here, once.
    """
    meter = meter_provider.get_meter(SCOPE, __version__, schema_url=SCHEMA_URL)
    made = tuple(instrument.create(meter) for instrument in CATALOGUE)
    _install(meter_provider, tracer_provider, store, made)


def _install(
    meter_provider: MeterProvider,
    tracer_provider: TracerProvider,
    store: Store | None,
    made: tuple[Any, ...],
    previous: _Binding | None = None,
) -> None:
    global _binding, RECORDER
    if previous is not None:  # restored whole: its recorder (and call sites' variants) too
        tracer, chosen = previous.tracer, previous.recorder
    else:
        tracer = tracer_provider.get_tracer(SCOPE, __version__, schema_url=SCHEMA_URL)
        spans = None if isinstance(tracer_provider, trace.NoOpTracerProvider) else tracer
        chosen = (
            SdkRecorder(_TALLIES, record_token_usage, spans)
            if store is None
            else OwnRecorder(store, _TALLIES, record_token_usage, spans)
        )
    with _lock:
        for instrument, sdk in zip(CATALOGUE, made, strict=True):
            instrument.bind(sdk, chosen)
        _binding = _Binding(meter_provider, tracer_provider, store, tracer, chosen, made)
        RECORDER = chosen


def binding() -> _Binding:
    """The binding in force (to the global API providers on first use); pass it to
    :func:`restore` later."""
    return _binding or _bind_global()


def recorder() -> Recorder:
    """The request path's recorder, chosen by the binding in force."""
    current = _binding
    return (current or _bind_global()).recorder


def restore(previous: _Binding | None) -> None:
    """Put back a binding :func:`binding` returned (None: the global API providers)."""
    if previous is None:
        _bind_global(force=True)
    else:
        _install(previous.meter_provider, previous.tracer_provider, previous.store,
                 previous.instruments, previous)  # fmt: skip


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


def _bind_default() -> None:
    _bind_global()


_kinds.bind_default = _bind_default
set_dup_reader = _kinds.set_dup_reader  # the naming mode: _config registers its reader here


@_state.on_fork
def _reinit_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


@_state.on_reset(phase=_state.CLEAR)
def _unbind() -> None:
    global _binding, RECORDER
    with _lock:
        _binding, RECORDER = None, None
        for instrument in CATALOGUE:
            instrument.bind(None, None)
    set_cardinality_limit(DEFAULT_CARDINALITY_LIMIT)


DEFAULT_CARDINALITY_LIMIT = 2000


def set_cardinality_limit(limit: int) -> None:
    """Most distinct attribute sets per tally-backed instrument."""
    for counter in COUNTERS:
        counter.tally.limit = limit


def prometheus_name(instrument: Instrument) -> str:
    """The name Prometheus shows for this instrument's samples (a test checks it against the
    OTel exporter)."""
    return instrument.prometheus_name
