"""The Fleet row: all replicas of a job together, error budgets, outliers, ISA classes."""

from __future__ import annotations

from .panel import Panel, quantiles

MODEL = 'gen_ai_request_model=~"$model"'  # fleet panels: every replica of the selected models
ISA = "{{host_arch}} {{bitnet_cpu_simd}} ({{bitnet_cpu_features}})"
OUTPUT = f'bitnet_token_type="output", {MODEL}'
SLO_OBJECTIVE = "on (bitnet_slo) group_left () (1 - bitnet:slo_objective:ratio)"


def panels() -> list[Panel]:
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
            quantiles(lat, MODEL, "p50", "p95", "p99", legend=fleet_of),
            unit="s",
            description="Quantiles of all replicas' successful requests, from bucket rates summed "
            "across replicas (not a mean of per-replica quantiles).",
        ),
        Panel(
            "Fleet time to first token",
            quantiles(ttft, MODEL, "p50", "p95", legend=fleet_of),
            unit="s",
            description="Time to first token over all replicas' requests.",
        ),
        Panel(
            "Fleet time per output token",
            quantiles(tpot, MODEL, "p50", "p95", legend=fleet_of),
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
                *quantiles(
                    f"{isa}:gen_ai_server_request_duration_seconds", MODEL, "p50", "p95", legend=ISA
                ),
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
