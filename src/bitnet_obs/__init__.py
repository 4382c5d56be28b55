"""bitnet-obs: OpenTelemetry observability for 1-bit (BitNet b1.58) LLM inference.

Wrap inference, configure export from ``OTEL_*`` variables, and get latency, token,
quantization-accuracy and device telemetry::

    import bitnet_obs

    bitnet_obs.configure()                      # Prometheus /metrics on 127.0.0.1:9464

    @bitnet_obs.monitored_inference(model="bitnet-b1.58-2B-4T")
    def generate(prompt_ids):
        ...

Names are loaded on first use, so ``import bitnet_obs.quant`` (numpy only) does not pull in the
OpenTelemetry SDK, psutil or the HTTP server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bitnet_obs._version import __version__

if TYPE_CHECKING:
    from bitnet_obs import crossval, devices, health, logs, output, quant, runtime, sla, testing
    from bitnet_obs._cache import observe_cache_usage, record_cache
    from bitnet_obs._config import Settings
    from bitnet_obs._context import InferenceContext
    from bitnet_obs._errors import ConfigError
    from bitnet_obs._inference import (
        InferenceMonitor,
        MonitorOptions,
        bind_context,
        current_inference,
        monitor_inference,
        monitored_inference,
        record_fallback,
        with_fallback,
    )
    from bitnet_obs._model import ModelLoad, ModelLoadMonitor, monitor_model_load, unload_model
    from bitnet_obs._pipeline import Telemetry, configure, force_flush, is_configured, shutdown
    from bitnet_obs._queue import PRIORITIES, QueueTicket, RequestQueue

__all__ = [
    "ConfigError",
    "InferenceContext",
    "InferenceMonitor",
    "ModelLoad",
    "ModelLoadMonitor",
    "MonitorOptions",
    "PRIORITIES",
    "QueueTicket",
    "RequestQueue",
    "Settings",
    "Telemetry",
    "__version__",
    "bind_context",
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
    "testing",
    "unload_model",
    "with_fallback",
]

# public name -> the module that defines it (a submodule when the name is one)
_WHERE = {
    "ConfigError": "_errors",
    "Settings": "_config",
    "InferenceContext": "_context",
    "InferenceMonitor": "_inference",
    "MonitorOptions": "_inference",
    "bind_context": "_inference",
    "current_inference": "_inference",
    "monitor_inference": "_inference",
    "monitored_inference": "_inference",
    "record_fallback": "_inference",
    "with_fallback": "_inference",
    "ModelLoad": "_model",
    "ModelLoadMonitor": "_model",
    "monitor_model_load": "_model",
    "unload_model": "_model",
    "Telemetry": "_pipeline",
    "configure": "_pipeline",
    "force_flush": "_pipeline",
    "is_configured": "_pipeline",
    "shutdown": "_pipeline",
    "PRIORITIES": "_queue",
    "QueueTicket": "_queue",
    "RequestQueue": "_queue",
    "observe_cache_usage": "_cache",
    "record_cache": "_cache",
}
_SUBMODULES = (
    "crossval",
    "devices",
    "health",
    "logs",
    "output",
    "quant",
    "runtime",
    "sla",
    "testing",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f"{__name__}.{name}")
    elif name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
