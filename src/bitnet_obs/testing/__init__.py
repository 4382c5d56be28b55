"""Test helpers for code instrumented with bitnet-obs (and any OpenTelemetry code).

Assert on what really leaves the process, over the OTLP wire:

    with OTLPReceiver() as rx:
        OTLPMetricExporter(endpoint=rx.grpc_endpoint).export(reader.get_metrics_data())
        assert rx.latest_value("bitnet.tokens", model="b1.58-2B") == 42
"""

from __future__ import annotations

from bitnet_obs.testing._hf import tiny_bitnet_model, tiny_llama_model, tiny_tokenizer
from bitnet_obs.testing._memory import CapturedPoint, TelemetryCapture, capture_telemetry
from bitnet_obs.testing._otlp_decode import (
    MetricPoint,
    ReceivedLogRecord,
    ReceivedSpan,
    SpanEvent,
)
from bitnet_obs.testing._receiver import OTLPReceiver, ReceivedRequest
from bitnet_obs.testing._reset import override_settings, reset

__all__ = [
    "CapturedPoint",
    "TelemetryCapture",
    "capture_telemetry",
    "MetricPoint",
    "OTLPReceiver",
    "ReceivedLogRecord",
    "ReceivedRequest",
    "ReceivedSpan",
    "SpanEvent",
    "override_settings",
    "reset",
    "tiny_bitnet_model",
    "tiny_llama_model",
    "tiny_tokenizer",
]
