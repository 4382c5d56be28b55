"""The Correctness row: output health, cross-validation and the runtime fingerprint."""

from __future__ import annotations

from .panel import INST, REQ, Panel, histogram_quantile, sum_increase, sum_rate

CROSSVAL_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "diverged", "color": "red"},
            "1": {"text": "reproduces golden", "color": "green"},
        },
    }
]


def panels() -> list[Panel]:
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
                    sum_rate("bitnet_output_degenerate_total", REQ, by="bitnet_degenerate_reason"),
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
                    histogram_quantile(0.95, "bitnet_output_repeat_run", REQ),
                    "longest run p95 (tokens)",
                ),
                (
                    histogram_quantile(0.05, "bitnet_output_distinct_fraction", REQ),
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
                    histogram_quantile(0.5, "bitnet_output_logits_entropy", REQ),
                    "entropy p50 (nats)",
                ),
                (
                    histogram_quantile(0.5, "bitnet_output_logits_top1_margin", REQ),
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
                    sum_increase("bitnet_crossval_runs_total", REQ, by="bitnet_crossval_outcome"),
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
