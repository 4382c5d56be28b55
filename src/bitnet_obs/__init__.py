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

from bitnet_obs import crossval, devices, health, logs, output, quant, runtime, sla
from bitnet_obs._cache import observe_cache_usage, record_cache
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
from bitnet_obs._model import ModelLoad, ModelLoadMonitor, monitor_model_load, unload_model
from bitnet_obs._pipeline import Telemetry, configure, force_flush, is_configured, shutdown
from bitnet_obs._queue import PRIORITIES, QueueTicket, RequestQueue
from bitnet_obs._version import __version__

__all__ = [
    "ConfigError",
    "InferenceContext",
    "InferenceMonitor",
    "ModelLoad",
    "ModelLoadMonitor",
    "PRIORITIES",
    "QueueTicket",
    "RequestQueue",
    "Settings",
    "Telemetry",
    "__version__",
    "configure",
    "crossval",
    "current_inference",
    "devices",
    "force_flush",
    "health",
    "is_configured",
    "logs",
    "monitor_inference",
    "monitor_model_load",
    "monitored_inference",
    "observe_cache_usage",
    "output",
    "quant",
    "record_cache",
    "record_fallback",
    "runtime",
    "shutdown",
    "sla",
    "unload_model",
    "with_fallback",
]
