"""Writes dashboards/bitnet-obs.json, the Grafana dashboard for bitnet-obs.

The JSON is generated so that every panel has the same shape and its PromQL sits here, readable
and reviewed in one place; ``tests/ops`` evaluates every query against a live demo. Edit this
file, then run it::

    python examples/monitoring/grafana/build_dashboard.py

Panels read the recording rules of ``../rules/bitnet-recording.yml`` (and the Fleet row those of
``../rules/bitnet-fleet-recording.yml``) where a query is expensive; load them into Prometheus
with the alert rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "bitnet-obs.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
REQ = 'gen_ai_request_model=~"$model", instance=~"$instance"'  # request metrics
INST = 'instance=~"$instance"'  # metrics without a model label
RATE = "$__rate_interval"


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 8
    height: int = 8
    min: float | None = 0
    max: float | None = None
    thresholds: list[tuple[float, str]] = field(default_factory=list)
    mappings: list[dict[str, Any]] = field(default_factory=list)


def overview() -> list[Panel]:
    lat = "instance_model:gen_ai_server_request_duration_seconds"
    ttft = "instance_model:gen_ai_server_time_to_first_token_seconds"
    tpot = "instance_model:gen_ai_server_time_per_output_token_seconds"
    return [
        Panel(
            "Requests by outcome",
            [
                (
                    "sum by (bitnet_outcome) "
                    f"(instance_model_outcome:bitnet_inference_requests:rate5m{{{REQ}}})",
                    "{{bitnet_outcome}}",
                )
            ],
            unit="reqps",
            description="Finished requests per second: ok, error, cancelled (client went away).",
        ),
        Panel(
            "Error ratio",
            [
                (
                    f"instance_model:bitnet_inference_errors:ratio_rate5m{{{REQ}}}",
                    "{{instance}} {{gen_ai_request_model}}",
                )
            ],
            unit="percentunit",
            thresholds=[(0.05, "red")],
            description="Failed / (ok + failed); alert BitNetHighErrorRate above 5%.",
        ),
        Panel(
            "Errors by type",
            [
                (
                    "sum by (error_type) (rate(bitnet_inference_requests_total"
                    f'{{bitnet_outcome="error", {REQ}}}[{RATE}]))',
                    "{{error_type}}",
                )
            ],
            unit="reqps",
            description="Failed requests per second by exception type (error.type).",
        ),
        Panel(
            "Request latency",
            [
                (f"max({lat}:p50_5m{{{REQ}}})", "p50"),
                (f"max({lat}:p95_5m{{{REQ}}})", "p95"),
                (f"max({lat}:p99_5m{{{REQ}}})", "p99"),
            ],
            unit="s",
            thresholds=[(5, "red")],
            description="End-to-end duration of requests that did not fail (worst instance).",
        ),
        Panel(
            "Time to first token",
            [(f"max({ttft}:p50_5m{{{REQ}}})", "p50"), (f"max({ttft}:p95_5m{{{REQ}}})", "p95")],
            unit="s",
            thresholds=[(1, "red")],
            description="Streaming requests: request start to first output token.",
        ),
        Panel(
            "Time per output token",
            [(f"max({tpot}:p50_5m{{{REQ}}})", "p50"), (f"max({tpot}:p95_5m{{{REQ}}})", "p95")],
            unit="s",
            description="Mean time per output token after the first one (inter-token latency).",
        ),
        Panel(
            "Tokens/s (service)",
            [
                (
                    "sum by (bitnet_token_type) "
                    f"(instance_model_type:bitnet_inference_tokens:rate5m{{{REQ}}})",
                    "{{bitnet_token_type}}",
                )
            ],
            unit="short",
            description="Input and output tokens processed per second by all selected instances.",
        ),
        Panel(
            "Tokens/s (median request)",
            [
                (
                    f"instance_model:bitnet_inference_throughput:p50_5m{{{REQ}}}",
                    "{{instance}} {{gen_ai_request_model}}",
                )
            ],
            unit="short",
            thresholds=[(0, "red"), (10, "green")],
            description="Output tokens per second of the median request; alert below 10.",
        ),
        Panel(
            "Active requests",
            [(f"sum by (instance) (bitnet_inference_active_requests{{{REQ}}})", "{{instance}}")],
            description="Requests in progress.",
        ),
    ]


def serving() -> list[Panel]:
    wait = "instance_queue_priority:bitnet_queue_wait_duration_seconds"
    formation = "instance_queue:bitnet_batch_formation_duration_seconds"
    prio = "{{bitnet_queue_name}} {{bitnet_request_priority}}"
    by_prio = "max by (bitnet_queue_name, bitnet_request_priority)"
    # model panels filter on $instance only: a model that never loaded never served a request,
    # so it is not among $model's values
    load = "gen_ai_request_model, bitnet_quant_format, bitnet_device"
    return [
        Panel(
            "Model loads by outcome",
            [
                (
                    "sum by (gen_ai_request_model, bitnet_outcome, error_type) "
                    f"(bitnet_model_loads_total{{{INST}}})",
                    "{{gen_ai_request_model}} {{bitnet_outcome}} {{error_type}}",
                )
            ],
            width=6,
            description="Loads since the process started: ok, and failed ones by error.type "
            "(alert BitNetModelLoadFailure).",
        ),
        Panel(
            "Model load duration",
            [
                (
                    f"sum by ({load}) "
                    f'(bitnet_model_load_duration_seconds_sum{{error_type="", {INST}}}) / '
                    f"sum by ({load}) "
                    f'(bitnet_model_load_duration_seconds_count{{error_type="", {INST}}})',
                    "{{gen_ai_request_model}} {{bitnet_quant_format}} {{bitnet_device}}",
                )
            ],
            unit="s",
            width=6,
            description="Mean time of the successful loads since the process started (a model "
            "is usually loaded once).",
        ),
        Panel(
            "Models loaded",
            [
                (
                    f"sum by ({load}) (bitnet_model_loaded{{{INST}}})",
                    "{{gen_ai_request_model}} {{bitnet_quant_format}} {{bitnet_device}}",
                )
            ],
            width=6,
            description="Models loaded and not unloaded; an instance with none is not ready.",
        ),
        Panel(
            "Model size",
            [
                (
                    f"max by ({load}) (bitnet_model_size_bytes{{{INST}}})",
                    "{{gen_ai_request_model}} {{bitnet_quant_format}} {{bitnet_device}}",
                )
            ],
            unit="bytes",
            width=6,
            description="Bytes of each loaded model's weights.",
        ),
        Panel(
            "Queue depth by priority",
            [
                (
                    "sum by (bitnet_queue_name, bitnet_request_priority) "
                    f"(bitnet_queue_depth{{{INST}}})",
                    prio,
                )
            ],
            thresholds=[(32, "orange")],
            description="Requests waiting to be served; alert BitNetQueueSaturated when a queue "
            "holds more than 32 for 10 minutes.",
        ),
        Panel(
            "Queue wait",
            [
                (
                    f"{by_prio} ({wait}:p50_5m{{{INST}}})",
                    "p50 " + prio,
                ),
                (
                    f"{by_prio} ({wait}:p95_5m{{{INST}}})",
                    "p95 " + prio,
                ),
            ],
            unit="s",
            thresholds=[(2.5, "red")],
            description="Time requests spent queued before inference, by priority (worst "
            "instance); alert BitNetQueueWaitHigh when a queue's p95 exceeds 2.5 s.",
        ),
        Panel(
            "Active requests by priority",
            [
                (
                    f"sum by (bitnet_request_priority) (bitnet_inference_active_requests{{{REQ}}})",
                    "{{bitnet_request_priority}}",
                )
            ],
            description="Requests in progress, by the priority they were monitored with.",
        ),
        Panel(
            "Batch size",
            [
                (
                    f"instance_queue:bitnet_batch_size:mean5m{{{INST}}}",
                    "mean {{bitnet_queue_name}} {{instance}}",
                ),
                (
                    "histogram_quantile(0.95, sum by (bitnet_queue_name, le) "
                    f"(rate(bitnet_batch_size_bucket{{{INST}}}[{RATE}])))",
                    "p95 {{bitnet_queue_name}}",
                ),
            ],
            width=6,
            description="Requests per dispatched batch.",
        ),
        Panel(
            "Batch formation time",
            [
                (
                    f"max by (bitnet_queue_name) ({formation}:p50_5m{{{INST}}})",
                    "p50 {{bitnet_queue_name}}",
                ),
                (
                    f"max by (bitnet_queue_name) ({formation}:p95_5m{{{INST}}})",
                    "p95 {{bitnet_queue_name}}",
                ),
            ],
            unit="s",
            width=6,
            description="From a batch's first request to its dispatch (worst instance).",
        ),
        Panel(
            "Cache hit ratio",
            [
                (
                    f"instance_model_cache:bitnet_cache_hits:ratio_rate5m{{{REQ}}}",
                    "{{bitnet_cache_name}} {{gen_ai_request_model}} {{instance}}",
                )
            ],
            unit="percentunit",
            max=1,
            width=6,
            description="Hits / (hits + misses) over 5 minutes; alert BitNetCacheHitRateCollapsed "
            "when under half of its value an hour earlier.",
        ),
        Panel(
            "Cache usage",
            [(f"bitnet_cache_usage_bytes{{{INST}}}", "{{bitnet_cache_name}} {{instance}}")],
            unit="bytes",
            width=6,
            description="Bytes held by each cache (KV, prefix).",
        ),
    ]


def quantization() -> list[Panel]:
    acc = "instance_format:bitnet_quant_accuracy"
    return [
        Panel(
            "Weight accuracy vs FP32, by format",
            [
                (
                    f'{acc}:mean{{bitnet_quant_kind="weight", '
                    f'bitnet_quant_reference="fp32", {INST}}}',
                    "{{bitnet_quant_format}} {{instance}}",
                ),
                ("bitnet:quant_accuracy_fp32:baseline", "baseline"),
            ],
            unit="none",
            min=None,
            description="Mean cosine of the ternary weights against FP32, measured at load "
            "(~0.887 for Gaussian weights). Alert below the baseline recording rule.",
        ),
        Panel(
            "Runtime accuracy by format and reference",
            [
                (
                    f'{acc}:p50_10m{{bitnet_quant_kind!="weight", {INST}}}',
                    "{{bitnet_quant_format}} {{bitnet_quant_kind}} vs {{bitnet_quant_reference}}",
                )
            ],
            unit="none",
            min=None,
            description="Median of the sampled layer outputs, activations and logits over 10 "
            "minutes: against FP32 (quantization error) and against the quantized reference "
            "(kernel fidelity).",
        ),
        Panel(
            "Kernel fidelity (vs quantized reference)",
            [
                (
                    f'{acc}:p05_10m{{bitnet_quant_reference="quantized", {INST}}}',
                    "p05 {{bitnet_quant_format}} {{bitnet_quant_kind}}",
                )
            ],
            unit="none",
            min=None,
            max=1,
            thresholds=[(0, "red"), (0.999, "green")],
            description="5th percentile of accuracy against the quantized reference: should be "
            "1. Anything at or below 0.999 is a kernel bug (alert BitNetQuantKernelDrift).",
        ),
        Panel(
            "Samples below 0.999 vs quantized reference",
            [
                (
                    "sum by (bitnet_quant_format) (increase(bitnet_quant_accuracy_bucket"
                    f'{{bitnet_quant_reference="quantized", le="0.999", {INST}}}[{RATE}]))',
                    "{{bitnet_quant_format}}",
                )
            ],
            thresholds=[(0, "green"), (1, "red")],
            description="Drifted kernel samples (should stay 0).",
        ),
        Panel(
            "Least accurate weight tensors vs FP32",
            [
                (
                    "bottomk(10, min by (bitnet_tensor) ("
                    f'bitnet_quant_accuracy_sum{{bitnet_quant_kind="weight", {INST}}}'
                    f' / bitnet_quant_accuracy_count{{bitnet_quant_kind="weight", {INST}}}))',
                    "{{bitnet_tensor}}",
                )
            ],
            kind="bargauge",
            unit="none",
            min=0.8,
            max=1,
            description="The ten tensors whose ternary weights are furthest from FP32.",
        ),
        Panel(
            "SQNR by format and reference",
            [
                (
                    "sum by (bitnet_quant_format, bitnet_quant_reference) "
                    f"(bitnet_quant_sqnr_sum{{{INST}}}) / sum by "
                    "(bitnet_quant_format, bitnet_quant_reference) "
                    f"(bitnet_quant_sqnr_count{{{INST}}})",
                    "{{bitnet_quant_format}} vs {{bitnet_quant_reference}}",
                )
            ],
            unit="dB",
            min=None,
            description="Mean signal-to-quantization-noise ratio since start.",
        ),
        Panel(
            "Accuracy measurements and skipped samples",
            [
                (
                    "sum by (bitnet_quant_kind) "
                    f"(rate(bitnet_quant_operations_total{{{INST}}}[{RATE}]))",
                    "measured {{bitnet_quant_kind}}",
                ),
                (
                    "sum by (bitnet_quant_skip_reason) "
                    f"(rate(bitnet_quant_samples_skipped_total{{{INST}}}[{RATE}]))",
                    "skipped: {{bitnet_quant_skip_reason}}",
                ),
            ],
            unit="ops",
            description="Samples measured per second, and those skipped (time budget, shape, "
            "bad input).",
        ),
    ]


def devices() -> list[Panel]:
    gpu = "{{bitnet_gpu_index}} {{hw_name}} {{instance}}"
    return [
        Panel(
            "CPU busy",
            [
                (f"instance:system_cpu_utilization:busy_avg5m{{{INST}}}", "host {{instance}}"),
                (
                    f"sum by (instance) (process_cpu_utilization{{{INST}}})",
                    "process {{instance}}",
                ),
            ],
            unit="percentunit",
            max=1,
            thresholds=[(0.9, "red")],
            description="Host (all CPUs, 5 m average) and the serving process.",
        ),
        Panel(
            "Memory",
            [
                (
                    f'system_memory_utilization{{system_memory_state="used", {INST}}}',
                    "host used {{instance}}",
                ),
            ],
            unit="percentunit",
            max=1,
            thresholds=[(0.9, "red")],
            description="Host memory in use, not counting cache and buffers.",
        ),
        Panel(
            "Process memory (RSS)",
            [(f"process_memory_usage_bytes{{{INST}}}", "{{instance}}")],
            unit="bytes",
        ),
        Panel(
            "GPU utilization",
            [(f"hw_gpu_utilization{{{INST}}}", gpu)],
            unit="percentunit",
            max=1,
            thresholds=[(0.95, "orange")],
        ),
        Panel(
            "GPU memory",
            [
                (f"hw_gpu_memory_utilization{{{INST}}}", gpu),
            ],
            unit="percentunit",
            max=1,
            thresholds=[(0.95, "red")],
            description="Used / total; near 1 means out-of-memory errors and CPU fallbacks.",
        ),
        Panel(
            "GPU temperature and power",
            [
                (f"hw_temperature_celsius{{{INST}}}", "°C " + gpu),
                (f"hw_power_watts{{{INST}}}", "W " + gpu),
            ],
            min=None,
        ),
        Panel(
            "Device fallbacks",
            [
                (
                    "sum by (bitnet_device_from, bitnet_device_to, bitnet_fallback_reason) "
                    f"(rate(bitnet_device_fallbacks_total{{{REQ}}}[{RATE}]))",
                    "{{bitnet_device_from}} → {{bitnet_device_to}} ({{bitnet_fallback_reason}})",
                )
            ],
            unit="ops",
            description="Fallbacks per second, e.g. GPU out of memory → CPU.",
        ),
        Panel(
            "Fallback ratio",
            [
                (
                    f"instance_model:bitnet_device_fallbacks:ratio_rate5m{{{REQ}}}",
                    "{{instance}} {{gen_ai_request_model}}",
                )
            ],
            unit="percentunit",
            thresholds=[(0.01, "orange")],
            description="Fallbacks per finished request; alert BitNetDeviceFallbackRate above 1%.",
        ),
        Panel(
            "Requests by device",
            [
                (
                    "sum by (bitnet_device) "
                    f"(rate(bitnet_inference_requests_total{{{REQ}}}[{RATE}]))",
                    "{{bitnet_device}}",
                )
            ],
            unit="reqps",
            description="Where requests finished (the device after any fallback).",
        ),
    ]


HEALTH_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "unhealthy", "color": "red"},
            "0.5": {"text": "degraded", "color": "orange"},
            "1": {"text": "healthy", "color": "green"},
        },
    }
]


def health_and_sla() -> list[Panel]:
    return [
        Panel(
            "Health checks",
            [(f"bitnet_health_status{{{INST}}}", "{{bitnet_health_component}} {{instance}}")],
            kind="state-timeline",
            unit="none",
            width=12,
            mappings=HEALTH_MAPPINGS,
            description="Last result of each check behind /health: 1 healthy, 0.5 degraded, "
            "0 unhealthy.",
        ),
        Panel(
            "Health check failures",
            [
                (
                    "sum by (bitnet_health_component, error_type) "
                    f"(increase(bitnet_health_check_failures_total{{{INST}}}[{RATE}]))",
                    "{{bitnet_health_component}} {{error_type}}",
                ),
            ],
            width=6,
            description="Checks that were unhealthy, timed out or raised.",
        ),
        Panel(
            "Health check duration p95",
            [
                (
                    "histogram_quantile(0.95, sum by (bitnet_health_component, le) "
                    f"(rate(bitnet_health_check_duration_seconds_bucket{{{INST}}}[{RATE}])))",
                    "{{bitnet_health_component}}",
                )
            ],
            unit="s",
            width=6,
        ),
        Panel(
            "SLA compliance by objective",
            [
                (
                    f"bitnet_sla_compliance{{{INST}}}",
                    "{{bitnet_sla_objective}} {{instance}}",
                ),
                ("bitnet:sla_compliance:target", "target {{bitnet_sla_objective}}"),
            ],
            unit="percentunit",
            min=None,
            max=1,
            width=12,
            description="Fraction of the SLA window's requests that met each objective "
            "(BITNET_OBS_SLA_*), and the target of each (bitnet-recording.yml).",
        ),
        Panel(
            "SLA violations",
            [
                (
                    "sum by (bitnet_sla_objective, bitnet_sla_severity) "
                    f"(increase(bitnet_sla_violations_total{{{INST}}}[{RATE}]))",
                    "{{bitnet_sla_objective}} {{bitnet_sla_severity}}",
                )
            ],
            width=6,
            description="Objectives going from met to missed (warning) or badly missed (critical).",
        ),
        Panel(
            "Overall SLA compliance",
            [(f'min(bitnet_sla_compliance{{bitnet_sla_objective="overall", {INST}}})', "overall")],
            kind="stat",
            unit="percentunit",
            width=6,
            thresholds=[(0, "red"), (0.95, "green")],
        ),
        Panel(
            "Telemetry exports",
            [
                (
                    "sum by (bitnet_obs_exporter, bitnet_outcome) "
                    f"(rate(bitnet_obs_exports_total{{{INST}}}[{RATE}]))",
                    "{{bitnet_obs_exporter}} {{bitnet_outcome}}",
                )
            ],
            unit="ops",
            description="Push exports (OTLP, console) by outcome: errors mean dropped telemetry.",
        ),
        Panel(
            "bitnet-obs internal errors",
            [
                (
                    "sum by (bitnet_obs_error_kind) "
                    f"(increase(bitnet_obs_internal_errors_total{{{INST}}}[{RATE}]))",
                    "{{bitnet_obs_error_kind}}",
                )
            ],
            description="Failures inside bitnet-obs, swallowed to protect inference.",
        ),
        Panel(
            "Firing alerts",
            [(f'sum by (alertname, severity) (ALERTS{{alertstate="firing", {INST}}})', "")],
            kind="table",
            description="bitnet-obs alerts firing now for the selected instances.",
        ),
    ]


CROSSVAL_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "diverged", "color": "red"},
            "1": {"text": "reproduces golden", "color": "green"},
        },
    }
]


def correctness() -> list[Panel]:
    """Output health (bitnet_obs.output), cross-validation (bitnet_obs.crossval), runtime."""
    degenerate = "instance_model:bitnet_output_degenerate:ratio_rate10m"
    return [
        Panel(
            "Degenerate output ratio",
            [(f"{degenerate}{{{REQ}}}", "{{instance}} {{gen_ai_request_model}}")],
            unit="percentunit",
            thresholds=[(0.05, "red")],
            description="Degenerate outputs per finished request (10 minutes); alert "
            "BitNetDegenerateOutput above 5%.",
        ),
        Panel(
            "Degenerate outputs by reason",
            [
                (
                    "sum by (bitnet_degenerate_reason) "
                    f"(rate(bitnet_output_degenerate_total{{{REQ}}}[{RATE}]))",
                    "{{bitnet_degenerate_reason}}",
                )
            ],
            unit="ops",
            description='repeat_run ("!!!!"), cycle (a few tokens over and over), '
            "low_diversity (a handful of ids).",
        ),
        Panel(
            "Repeat run and distinct fraction",
            [
                (
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(bitnet_output_repeat_run_bucket{{{REQ}}}[{RATE}])))",
                    "longest run p95 (tokens)",
                ),
                (
                    "histogram_quantile(0.05, sum by (le) "
                    f"(rate(bitnet_output_distinct_fraction_bucket{{{REQ}}}[{RATE}])))",
                    "distinct fraction p05",
                ),
            ],
            description="Per output: the longest run of one token (p95) and the lowest "
            "distinct-id fraction of a window (p05).",
        ),
        Panel(
            "Next-token entropy and top-1 margin",
            [
                (
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(bitnet_output_logits_entropy_bucket{{{REQ}}}[{RATE}])))",
                    "entropy p50 (nats)",
                ),
                (
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(bitnet_output_logits_top1_margin_bucket{{{REQ}}}[{RATE}])))",
                    "top-1 margin p50",
                ),
            ],
            description="Sampled decoding steps: entropy collapsing to 0 or rising to "
            "log(vocab) is an early sign of a broken model.",
        ),
        Panel(
            "Cross-validation",
            [(f"bitnet_crossval_passing{{{REQ}}}", "{{instance}} {{gen_ai_request_model}}")],
            kind="state-timeline",
            unit="none",
            width=16,
            mappings=CROSSVAL_MAPPINGS,
            description="Whether the last canary / crossval.check run reproduced the golden "
            "outputs; alert BitNetCrossValidationFailure when not.",
        ),
        Panel(
            "Cross-validation runs",
            [
                (
                    "sum by (bitnet_crossval_outcome) "
                    f"(increase(bitnet_crossval_runs_total{{{REQ}}}[{RATE}]))",
                    "{{bitnet_crossval_outcome}}",
                )
            ],
            description="Canary and crossval.check runs by outcome.",
        ),
        Panel(
            "Golden token agreement",
            [
                (
                    f"min(bitnet_crossval_token_agreement{{{REQ}}})",
                    "token agreement",
                )
            ],
            unit="percentunit",
            max=1,
            thresholds=[(0, "red"), (1, "green")],
            description="Share of the golden output the candidate reproduced before its first "
            "divergence (worst instance).",
        ),
        Panel(
            "Golden logits KL",
            [(f"max(bitnet_crossval_kl{{{REQ}}})", "KL (nats)")],
            description="Mean KL(golden || candidate) of next-token distributions up to the "
            "first divergence (worst instance); ~0 for a faithful kernel.",
        ),
        Panel(
            "Golden-case tokens/s",
            [
                (
                    "max by (bitnet_crossval_implementation) "
                    f"(bitnet_crossval_throughput_per_second{{{REQ}}})",
                    "{{bitnet_crossval_implementation}}",
                )
            ],
            description="Tokens/s of the candidate and of the reference on the same golden "
            "cases, in the last run.",
        ),
        Panel(
            "Candidate / reference tokens/s",
            [
                (
                    f"instance_model:bitnet_crossval_throughput:ratio{{{REQ}}}",
                    "{{instance}} {{gen_ai_request_model}}",
                )
            ],
            unit="percentunit",
            thresholds=[(0, "red"), (0.95, "green")],
            description="Alert BitNetCrossValidationPerformanceRegression under 95% for 15 "
            "minutes.",
        ),
        Panel(
            "Runtime",
            [
                (
                    "max by (instance, host_cpu_model_name, bitnet_cpu_simd, bitnet_cpu_features, "
                    "process_runtime_version, bitnet_numpy_version, bitnet_torch_version) "
                    f"(bitnet_runtime_info{{{INST}}})",
                    "",
                )
            ],
            kind="table",
            width=24,
            height=6,
            description="What each instance runs on: CPU model, the widest SIMD family BitNet "
            "kernels can use (avx2 is the x86 minimum), features, versions.",
        ),
    ]


SERVER = 'instance=~"$server"'  # llama-server's own series (job "llama-server")
CANARY = 'job="bitnet-canary", instance=~"$instance"'  # its canary sidecars


def llama_server() -> list[Panel]:
    """llama-server (llama.cpp, bitnet.cpp) from outside: its --metrics series and the canary
    sidecar beside it. Series differ across llama.cpp versions: docs/operations.md."""
    return [
        Panel(
            "llama-server tokens/s",
            [
                (
                    f"sum by (instance) (instance:llamacpp_prompt_tokens:rate5m{{{SERVER}}})",
                    "prompt {{instance}}",
                ),
                (
                    f"sum by (instance) (instance:llamacpp_tokens_predicted:rate5m{{{SERVER}}})",
                    "generated {{instance}}",
                ),
            ],
            description="Prompt tokens evaluated (cached ones are not) and tokens generated, per "
            "second of wall time.",
        ),
        Panel(
            "llama-server speed",
            [
                (
                    f"max by (instance) (instance:llamacpp_prompt_speed:ratio_rate5m{{{SERVER}}})",
                    "prompt {{instance}}",
                ),
                (
                    f"max by (instance) (instance:llamacpp_generation_speed:ratio_rate5m"
                    f"{{{SERVER}}})",
                    "generation {{instance}}",
                ),
            ],
            description="Tokens per second of processing time: prompt evaluation, and decoding as "
            "one request sees it. No data while idle.",
        ),
        Panel(
            "Requests processing and deferred",
            [
                (
                    f"sum by (instance) (llamacpp:requests_processing{{{SERVER}}})",
                    "processing {{instance}}",
                ),
                (
                    f"sum by (instance) (llamacpp:requests_deferred{{{SERVER}}})",
                    "deferred {{instance}}",
                ),
            ],
            description="Requests in a slot, and requests waiting for one; alert "
            "BitNetLlamaCppRequestsDeferred when the wait never drains for 10 minutes.",
        ),
        Panel(
            "KV-cache usage",
            [(f"instance:llamacpp_kv_cache_usage:ratio{{{SERVER}}}", "{{instance}}")],
            unit="percentunit",
            max=1,
            thresholds=[(0.9, "red")],
            description="Where the server exports it (bitnet.cpp's llama-server, llama.cpp before "
            "May 2025); alert BitNetLlamaCppKVCacheSaturated above 90%. Current llama.cpp: see "
            "Longest sequence held.",
        ),
        Panel(
            "Longest sequence held",
            [(f"max by (instance) (llamacpp:n_tokens_max{{{SERVER}}})", "{{instance}}")],
            description="The most tokens (prompt and generated) a slot has held since the server "
            "started (current llama.cpp): compare with the context per slot, -c / --parallel.",
        ),
        Panel(
            "Busy slots per decode",
            [(f"max by (instance) (llamacpp:n_busy_slots_per_decode{{{SERVER}}})", "{{instance}}")],
            description="Average slots decoding together in one llama_decode() call: near "
            "--parallel means the server runs full.",
        ),
        Panel(
            "Canary (sidecar)",
            [(f"bitnet_crossval_passing{{{CANARY}}}", "{{instance}} {{gen_ai_request_model}}")],
            kind="state-timeline",
            unit="none",
            width=12,
            mappings=CROSSVAL_MAPPINGS,
            description="Whether the sidecar's last run against the server reproduced the golden "
            "outputs; while it does not, the sidecar's /health/ready answers 503 and "
            "BitNetCrossValidationFailure fires.",
        ),
        Panel(
            "Canary agreement and KL bound",
            [
                (f"min(bitnet_crossval_token_agreement{{{CANARY}}})", "token agreement"),
                (f"max(bitnet_crossval_kl{{{CANARY}}})", "KL bound (nats)"),
            ],
            width=6,
            description="Golden tokens reproduced before the first divergence (worst sidecar), "
            "and the KL over the server's top-k log-probabilities, a lower bound on the full KL.",
        ),
        Panel(
            "Canary tokens/s",
            [
                (
                    f"max by (instance) (bitnet_crossval_throughput_per_second{{{CANARY}, "
                    'bitnet_crossval_implementation="candidate"})',
                    "{{instance}}",
                )
            ],
            width=6,
            description="Tokens/s of the server on the golden cases, over HTTP, one request at a "
            "time.",
        ),
    ]


MODEL = 'gen_ai_request_model=~"$model"'  # fleet panels: every replica of the selected models
ISA = "{{host_arch}} {{bitnet_cpu_simd}} ({{bitnet_cpu_features}})"
OUTPUT = f'bitnet_token_type="output", {MODEL}'
SLO_OBJECTIVE = "on (bitnet_slo) group_left () (1 - bitnet:slo_objective:ratio)"


def fleet() -> list[Panel]:
    """All replicas of a job together, the error budgets, each replica against its fleet, and
    the fleet by ISA class (bitnet-fleet-recording.yml, bitnet-fleet-alerts.yml)."""
    lat = "job_model:gen_ai_server_request_duration_seconds"
    ttft = "job_model:gen_ai_server_time_to_first_token_seconds"
    tpot = "job_model:gen_ai_server_time_per_output_token_seconds"
    slo = "job_model_slo:bitnet_slo_errors"
    isa = "job_model_isa"
    fleet_of = "{{job}} {{gen_ai_request_model}}"
    return [
        Panel(
            "Fleet requests by outcome",
            [
                (
                    f"job_model_outcome:bitnet_inference_requests:rate5m{{{MODEL}}}",
                    "{{job}} {{bitnet_outcome}}",
                )
            ],
            unit="reqps",
            width=6,
            description="Finished requests per second of all replicas together, by outcome.",
        ),
        Panel(
            "Fleet error ratio",
            [(f"job_model:bitnet_inference_errors:ratio_rate5m{{{MODEL}}}", fleet_of)],
            unit="percentunit",
            width=6,
            description="Failed / (ok + failed) over all replicas' requests (5 minutes).",
        ),
        Panel(
            "Fleet tokens/s",
            [
                (
                    f"job_model_type:bitnet_inference_tokens:rate5m{{{MODEL}}}",
                    "{{job}} {{bitnet_token_type}}",
                )
            ],
            width=6,
            description="Input and output tokens per second processed by the whole fleet.",
        ),
        Panel(
            "Replicas serving",
            [(f"job_model:bitnet_replicas_serving:count{{{MODEL}}}", fleet_of)],
            kind="stat",
            width=6,
            description="Replicas that finished at least one request in the last 5 minutes.",
        ),
        Panel(
            "Fleet request latency",
            [
                (f"{lat}:p50_5m{{{MODEL}}}", "p50 " + fleet_of),
                (f"{lat}:p95_5m{{{MODEL}}}", "p95 " + fleet_of),
                (f"{lat}:p99_5m{{{MODEL}}}", "p99 " + fleet_of),
            ],
            unit="s",
            description="Quantiles of all replicas' successful requests, from bucket rates summed "
            "across replicas (not a mean of per-replica quantiles).",
        ),
        Panel(
            "Fleet time to first token",
            [
                (f"{ttft}:p50_5m{{{MODEL}}}", "p50 " + fleet_of),
                (f"{ttft}:p95_5m{{{MODEL}}}", "p95 " + fleet_of),
            ],
            unit="s",
            description="Time to first token over all replicas' requests.",
        ),
        Panel(
            "Fleet time per output token",
            [
                (f"{tpot}:p50_5m{{{MODEL}}}", "p50 " + fleet_of),
                (f"{tpot}:p95_5m{{{MODEL}}}", "p95 " + fleet_of),
            ],
            unit="s",
            description="Time per output token over all replicas' requests.",
        ),
        Panel(
            "Error budget left (30 days)",
            [
                (
                    f"job_model_slo:bitnet_slo_error_budget:remaining_ratio30d{{{MODEL}}}",
                    "{{bitnet_slo}} {{job}} {{gen_ai_request_model}}",
                )
            ],
            kind="bargauge",
            unit="percentunit",
            min=None,
            max=1,
            thresholds=[(0, "red"), (0.25, "orange"), (0.5, "green")],
            description="Share of each SLO's 30-day error budget not yet spent (below 0: "
            "overspent). Objectives: bitnet:slo_objective:ratio in bitnet-fleet-recording.yml.",
        ),
        Panel(
            "Error budget burn rate",
            [
                (f"{slo}:ratio_rate{w}{{{MODEL}}} / {SLO_OBJECTIVE}", f"{w} {{{{bitnet_slo}}}}")
                for w in ("5m", "1h", "6h", "1d", "3d")
            ],
            width=16,
            thresholds=[(1, "yellow"), (6, "orange"), (14.4, "red")],
            description="Bad events over the window / the error budget: 1 spends the budget in "
            "exactly 30 days. Pages at 14.4 (1 h and 5 min) or 6 (6 h and 30 min); tickets at 3 "
            "(1 d and 2 h) or 1 (3 d and 6 h).",
        ),
        Panel(
            "Tokens/s per request, by replica",
            [
                (
                    "instance_model:bitnet_inference_throughput:p50_5m"
                    f'{{{MODEL}, instance=~"$instance"}}',
                    "{{instance}}",
                ),
                (
                    f"job_model:bitnet_inference_throughput:median_of_instance_p50_5m{{{MODEL}}}",
                    "median replica " + fleet_of,
                ),
                (
                    f"job_model:bitnet_inference_throughput:p50_5m{{{MODEL}}}",
                    "fleet p50 " + fleet_of,
                ),
            ],
            width=12,
            description="Each replica's median request against the fleet's median replica and "
            "the fleet's median request.",
        ),
        Panel(
            "Replica speed vs fleet median",
            [
                (
                    "instance_model:bitnet_inference_throughput:p50_5m_over_fleet_median"
                    f'{{{MODEL}, instance=~"$instance"}}',
                    "{{instance}}",
                )
            ],
            kind="bargauge",
            unit="percentunit",
            thresholds=[(0, "red"), (0.5, "green")],
            width=12,
            description="Each replica's median-request tokens/s over its fleet's median replica: "
            "red under 50% (BitNetReplicaOutlier, signal throughput).",
        ),
        Panel(
            "Outlier replicas",
            [
                (
                    "max by (job, instance, gen_ai_request_model, bitnet_outlier_signal, "
                    "host_cpu_model_name, bitnet_cpu_simd, bitnet_cpu_features) "
                    f'(ALERTS{{alertname="BitNetReplicaOutlier", {MODEL}}})',
                    "",
                )
            ],
            kind="table",
            width=24,
            height=6,
            description="Replicas BitNetReplicaOutlier names (pending or firing), with the signal "
            "they stand out on and their runtime fingerprint.",
        ),
        Panel(
            "Canary pass share",
            [
                (f"job_model:bitnet_crossval_passing:avg{{{MODEL}}}", fleet_of),
                (f"{isa}:bitnet_crossval_passing:avg{{{MODEL}}}", ISA),
            ],
            unit="percentunit",
            min=0,
            max=1,
            thresholds=[(0, "red"), (0.5, "orange"), (1, "green")],
            description="Share of replicas whose last cross-validation run passed, all and by ISA "
            "class; at 50% or less BitNetFleetCrossValidationFailure fires.",
        ),
        Panel(
            "Cross-validation failures (10 min)",
            [
                (f"job_model:bitnet_crossval_failed_runs:increase10m{{{MODEL}}}", fleet_of),
                (f"{isa}:bitnet_crossval_failed_runs:increase10m{{{MODEL}}}", ISA),
            ],
            description="Failed cross-validation runs of all replicas, and by ISA class.",
        ),
        Panel(
            "Fleet degenerate outputs",
            [
                (
                    f"job_model:bitnet_output_degenerate:ratio_rate10m{{{MODEL}}}",
                    "ratio " + fleet_of,
                ),
                (
                    f"job_model:bitnet_output_degenerate:share_of_replicas_over_5pct{{{MODEL}}}",
                    "replicas over 5% " + fleet_of,
                ),
                (f"{isa}:bitnet_output_degenerate:ratio_rate10m{{{MODEL}}}", "ratio " + ISA),
            ],
            unit="percentunit",
            description="Degenerate outputs per request with an output, all replicas and by ISA "
            "class, and the share of replicas over 5% (at half or more: "
            "BitNetFleetDegenerateOutput).",
        ),
        Panel(
            "Replicas by ISA class",
            [(f"{isa}:bitnet_replicas_serving:count{{{MODEL}}}", ISA)],
            kind="bargauge",
            width=6,
            description="Replicas serving, by the ISA part of their runtime fingerprint "
            "(unknown: no bitnet_runtime_info).",
        ),
        Panel(
            "Tokens/s per request by ISA class",
            [(f"{isa}:bitnet_inference_throughput:p50_5m{{{MODEL}}}", ISA)],
            width=6,
            description="Output tokens/s of the median request of each hardware class.",
        ),
        Panel(
            "Latency by ISA class",
            [
                (f"{isa}:gen_ai_server_request_duration_seconds:p50_5m{{{MODEL}}}", "p50 " + ISA),
                (f"{isa}:gen_ai_server_request_duration_seconds:p95_5m{{{MODEL}}}", "p95 " + ISA),
                (
                    f"{isa}:gen_ai_server_time_to_first_token_seconds:p95_5m{{{MODEL}}}",
                    "TTFT p95 " + ISA,
                ),
                (
                    f"{isa}:gen_ai_server_time_per_output_token_seconds:p95_5m{{{MODEL}}}",
                    "TPOT p95 " + ISA,
                ),
            ],
            unit="s",
            width=6,
            description="Request duration, time to first token and time per output token of "
            "each hardware class.",
        ),
        Panel(
            "Errors and tokens by ISA class",
            [
                (f"{isa}:bitnet_inference_errors:ratio_rate5m{{{MODEL}}}", "error ratio " + ISA),
                (
                    f"{isa}_type:bitnet_inference_tokens:rate5m{{{OUTPUT}}}"
                    " / on (job, gen_ai_request_model) group_left () "
                    f"job_model_type:bitnet_inference_tokens:rate5m{{{OUTPUT}}}",
                    "share of output tokens " + ISA,
                ),
            ],
            unit="percentunit",
            width=6,
            description="Error ratio of each hardware class, and its share of the fleet's output "
            "tokens.",
        ),
    ]


ROWS = [
    ("Overview", overview),
    ("Fleet", fleet),
    ("Serving lifecycle", serving),
    ("Quantization", quantization),
    ("Devices", devices),
    ("Health and SLA", health_and_sla),
    ("Correctness", correctness),
    ("llama-server", llama_server),
]


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for value, color in p.thresholds]
    defaults["thresholds"] = {"mode": "absolute", "steps": steps}
    if p.mappings:
        defaults["mappings"] = p.mappings
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}
        if p.thresholds:
            defaults["custom"]["thresholdsStyle"] = {"mode": "dashed"}
    options: dict[str, Any] = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    if p.kind in ("stat", "bargauge"):
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    if p.kind == "table":
        options = {"showHeader": True}
    targets = []
    for ref, (expr, legend) in enumerate(p.targets):
        target: dict[str, Any] = {"refId": chr(ord("A") + ref), "datasource": DS, "expr": expr}
        target["legendFormat"] = legend or "__auto"
        if p.kind in ("table", "bargauge", "stat"):
            target["instant"] = True
            target["range"] = p.kind != "table"
            if p.kind == "table":
                target["format"] = "table"
        targets.append(target)
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
    }


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
        "options": [],
        "regex": "",
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for title, build in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for p in build():
            if x + p.width > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(_panel_json(p, pid, x, y))
            pid, x, row_h = pid + 1, x + p.width, max(row_h, p.height)
        y += row_h
    return {
        "uid": "bitnet-obs",
        "title": "BitNet inference (bitnet-obs)",
        "description": "Requests, latency, tokens/s, model loads, queues, batches and caches, "
        "quantization accuracy, devices, health and SLA, output health and cross-validation of "
        "services instrumented with bitnet-obs, their fleets of replicas, and llama-server "
        "watched from outside. Needs the recording rules of "
        "examples/monitoring/rules/bitnet-recording.yml, bitnet-fleet-recording.yml and "
        "bitnet-llamacpp-recording.yml.",
        "tags": ["bitnet", "llm", "opentelemetry"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                _variable(
                    "model",
                    "Model",
                    "label_values(bitnet_inference_requests_total, gen_ai_request_model)",
                ),
                _variable("instance", "Instance", "label_values(target_info, instance)"),
                _variable(
                    "server",
                    "llama-server",
                    "label_values(llamacpp:requests_processing, instance)",
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
