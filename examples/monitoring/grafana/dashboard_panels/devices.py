"""The Devices row: CPU, memory, GPUs, device fallbacks."""

from __future__ import annotations

from .panel import INST, REQ, Panel, sum_rate


def panels() -> list[Panel]:
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
                    sum_rate(
                        "bitnet_device_fallbacks_total",
                        REQ,
                        by="bitnet_device_from, bitnet_device_to, bitnet_fallback_reason",
                    ),
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
                    sum_rate("bitnet_inference_requests_total", REQ, by="bitnet_device"),
                    "{{bitnet_device}}",
                )
            ],
            unit="reqps",
            description="Where requests finished (the device after any fallback).",
        ),
    ]
