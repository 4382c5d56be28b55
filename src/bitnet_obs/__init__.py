"""bitnet-obs: OpenTelemetry observability for 1-bit (BitNet b1.58) LLM inference.

Wrap inference, configure export from ``OTEL_*`` variables, and get latency, token,
quantization-accuracy and device telemetry::

    import bitnet_obs

    bitnet_obs.configure()                      # Prometheus /metrics on 127.0.0.1:9464

    @bitnet_obs.monitored_inference(model="bitnet-b1.58-2B-4T")
    def generate(prompt_ids):
        ...
"""

from __future__ import annotations

from bitnet_obs import devices, health, quant, sla
from bitnet_obs._config import ConfigError, Settings
from bitnet_obs._inference import (
    InferenceContext,
    InferenceMonitor,
    current_inference,
    monitor_inference,
    monitored_inference,
    record_fallback,
    with_fallback,
)
from bitnet_obs._pipeline import Telemetry, configure, force_flush, is_configured, shutdown
from bitnet_obs._version import __version__

__all__ = [
    "ConfigError",
    "InferenceContext",
    "InferenceMonitor",
    "Settings",
    "Telemetry",
    "__version__",
    "configure",
    "current_inference",
    "devices",
    "force_flush",
    "health",
    "is_configured",
    "monitor_inference",
    "monitored_inference",
    "quant",
    "record_fallback",
    "shutdown",
    "sla",
    "with_fallback",
]
