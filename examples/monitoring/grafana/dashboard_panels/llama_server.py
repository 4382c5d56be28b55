"""The llama-server row: the server's own --metrics series and its canary sidecars."""

from __future__ import annotations

from .correctness import CROSSVAL_MAPPINGS
from .panel import Panel

SERVER = 'instance=~"$server"'  # llama-server's own series (job "llama-server")
CANARY = 'job="bitnet-canary", instance=~"$instance"'  # its canary sidecars


def panels() -> list[Panel]:
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
