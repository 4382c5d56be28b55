"""The Serving lifecycle row: model loads, queues, batches, caches."""

from __future__ import annotations

from .panel import INST, REQ, Panel, histogram_quantile, mean_since_start, quantiles


def panels() -> list[Panel]:
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
                    mean_since_start(
                        "bitnet_model_load_duration_seconds", f'error_type="", {INST}', by=load
                    ),
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
            quantiles(wait, INST, "p50", "p95", legend=prio, wrap=by_prio + " ({})"),
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
                    histogram_quantile(0.95, "bitnet_batch_size", INST, by="bitnet_queue_name"),
                    "p95 {{bitnet_queue_name}}",
                ),
            ],
            width=6,
            description="Requests per dispatched batch.",
        ),
        Panel(
            "Batch formation time",
            quantiles(
                formation,
                INST,
                "p50",
                "p95",
                legend="{{bitnet_queue_name}}",
                wrap="max by (bitnet_queue_name) ({})",
            ),
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
