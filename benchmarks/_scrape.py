"""The server side of the scrape benchmark: ``python -m benchmarks._scrape MODELS PORT PLAIN``.

``bitnet_obs.configure()`` serves our ``/metrics`` on PORT. The same MeterProvider also feeds a
plain OpenTelemetry ``PrometheusMetricReader`` (an extra reader passed to ``configure``),
served by prometheus_client's own ``start_http_server`` on PLAIN: both render the very same
data. MODELS distinct models go through the public API so that every instrument carrying
``gen_ai.request.model`` has a series per model (two for those split by outcome or token type).

A probe thread makes one monitored call every millisecond and records how long each waited
beyond its sleep: during a render, that is how long a request of the served process stalls
(GIL held by the render, or locks shared with it). The parent arms and reads it around each GET,
with the process's CPU time in between (the render's, plus the probe's few percent).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import opentelemetry.sdk.metrics as sdk_metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, start_http_server

import bitnet_obs
from benchmarks._worker import Handler, serve

INSTRUMENT_CLASSES = ("Counter", "UpDownCounter", "Histogram", "ObservableCounter",
                      "ObservableUpDownCounter", "ObservableGauge", "Gauge", "_Gauge")  # fmt: skip


def cardinality_limit(models: int) -> int:
    """Room for every series: two per model where the token type splits them."""
    return 2 * models + 100


def populate(models: int) -> None:
    """Every request-path, model-load, fallback and cache instrument, once per model.

    One successful streamed request per model: one series per model in every metric, two in
    those split by ``bitnet.token.type`` (tokens, token usage).
    """

    def stream(n_tokens: int) -> Iterator[int]:
        bitnet_obs.current_inference().add_input_tokens(12)
        yield from range(n_tokens)

    for i in range(models):
        model = f"bitnet-b1.58-bench-{i:05d}"
        with bitnet_obs.monitor_model_load(model=model, size_bytes=1_200_000_000):
            pass
        monitored = bitnet_obs.monitored_inference(model=model, client_token_usage=True)
        for _ in monitored(stream)(8):
            pass
        bitnet_obs.record_fallback("gpu", "cpu", "oom", model=model)
        bitnet_obs.record_cache(hits=3, misses=1, model=model)


class Probe(threading.Thread):
    """A request every millisecond; the longest wait beyond the sleep since ``arm()``."""

    def __init__(self) -> None:
        super().__init__(name="bench-probe", daemon=True)
        self.call = bitnet_obs.monitored_inference(model="probe")(lambda: [1, 2, 3, 4])
        self.max_stall = 0.0
        self.calls = 0

    def arm(self) -> None:
        self.max_stall, self.calls = 0.0, 0

    def run(self) -> None:
        while True:
            before = time.perf_counter()
            time.sleep(0.001)
            self.call()
            stall = time.perf_counter() - before - 0.001
            self.calls += 1
            if stall > self.max_stall:
                self.max_stall = stall


def _setup(models: int, port: int, plain_port: int) -> Mapping[str, Handler]:
    limit = cardinality_limit(models)
    classes = (getattr(sdk_metrics, name, None) for name in INSTRUMENT_CLASSES)
    limits = {cls: limit for cls in classes if isinstance(cls, type)}
    registry = CollectorRegistry(auto_describe=True)
    plain = PrometheusMetricReader(
        scope_info_enabled=False, registry=registry, cardinality_limits=limits
    )
    bitnet_obs.configure(
        environ={
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
            "BITNET_OBS_CARDINALITY_LIMIT": str(limit),
            "BITNET_OBS_DEVICE_METRICS": "none",
        },
        metric_readers=[plain],
    )
    started = time.perf_counter()
    populate(models)
    populate_s = time.perf_counter() - started
    start_http_server(plain_port, addr="127.0.0.1", registry=registry)
    probe = Probe()
    probe.start()

    cpu = [0.0]

    def arm(_request: dict[str, Any]) -> dict[str, Any]:
        probe.arm()
        cpu[0] = time.process_time()
        return {}

    def read(_request: dict[str, Any]) -> dict[str, Any]:
        spent = time.process_time() - cpu[0]
        return {"max_stall": probe.max_stall, "calls": probe.calls, "cpu": spent}

    return {
        "info": lambda _request: {"populate_s": populate_s, "limit": limit},
        "arm": arm,
        "read": read,
    }


if __name__ == "__main__":
    models, port, plain_port = (int(arg) for arg in sys.argv[1:4])
    serve(lambda: _setup(models, port, plain_port))
