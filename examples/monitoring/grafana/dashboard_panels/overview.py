"""The Overview row: requests, errors, latency, tokens/s of the selected instances."""

from __future__ import annotations

from .panel import REQ, Panel, quantiles, sum_rate


def panels() -> list[Panel]:
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
                    sum_rate(
                        "bitnet_inference_requests_total",
                        f'bitnet_outcome="error", {REQ}',
                        by="error_type",
                    ),
                    "{{error_type}}",
                )
            ],
            unit="reqps",
            description="Failed requests per second by exception type (error.type).",
        ),
        Panel(
            "Request latency",
            quantiles(lat, REQ, "p50", "p95", "p99", wrap="max({})"),
            unit="s",
            thresholds=[(5, "red")],
            description="End-to-end duration of requests that did not fail (worst instance).",
        ),
        Panel(
            "Time to first token",
            quantiles(ttft, REQ, "p50", "p95", wrap="max({})"),
            unit="s",
            thresholds=[(1, "red")],
            description="Streaming requests: request start to first output token.",
        ),
        Panel(
            "Time per output token",
            quantiles(tpot, REQ, "p50", "p95", wrap="max({})"),
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
