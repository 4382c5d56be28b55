"""Our own histogram aggregation exports exactly what the SDK's instruments would
(bitnet_obs._aggregate, merged by bitnet_obs._export)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import Histogram, MetricsData

import bitnet_obs
from bitnet_obs import current_inference, monitored_inference, quant
from bitnet_obs._aggregate import Store
from bitnet_obs._instruments import QUEUE_WAIT_DURATION, REQUEST_DURATION
from bitnet_obs.testing import capture_telemetry, override_settings, reset


def _workload() -> None:
    @monitored_inference(model="a", operation="chat")
    def call(n: int) -> list[int]:
        current_inference().add_input_tokens(n)
        return list(range(n))

    @monitored_inference(model="b", client_token_usage=True)
    def stream(n: int) -> Iterator[int]:
        yield from range(n)

    @monitored_inference(model="a", operation="chat")
    def failing() -> None:
        raise KeyError("x")

    queue = bitnet_obs.RequestQueue("q")
    for i in range(40):
        call(i % 7)
        list(stream(i % 5 + 1))
        with pytest.raises(KeyError):
            failing()
        queue.dequeue(queue.enqueue("high"))
    list(stream(100))  # the inter-token gaps in Python, then vectorised
    list(stream(300))
    with queue.batch() as batch:
        batch.add(3)
    for value in (0.0, 1e-9, 0.01, 0.02, 81.92, 1e6, -1.0):  # edges and beyond the buckets
        REQUEST_DURATION.record(value, {"gen_ai.request.model": "edge"})
    with override_settings(quant_sample_rate=1.0, quant_budget=1.0):
        import numpy as np

        w = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
        quant.record_weight_quantization("w", w)


def _normalised(data: MetricsData | None) -> dict[str, Any]:
    """Histogram points by metric and attributes, without times and trace ids."""
    out: dict[str, Any] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if not isinstance(metric.data, Histogram):
                    continue
                assert metric.name not in out, f"{metric.name} exported twice"
                out[metric.name] = (
                    metric.unit,
                    metric.description,
                    metric.data.aggregation_temporality,
                    {
                        tuple(sorted(p.attributes.items())): (
                            # a stream's gaps are summed as one batch: the last bits may differ
                            p.count, round(p.sum, 9), tuple(p.bucket_counts),
                            tuple(p.explicit_bounds),
                            p.min, p.max,
                            sorted((e.value, bool(e.span_id), dict(e.filtered_attributes or {}))
                                   for e in p.exemplars),
                        )
                        for p in metric.data.data_points
                    },
                )  # fmt: skip
    return out


def test_own_aggregation_exports_what_the_sdk_would(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {}
    for aggregation in ("sdk", "bitnet"):
        ticks = itertools.count()  # a deterministic clock: both runs see the same durations
        monkeypatch.setattr(time, "perf_counter", lambda t=ticks: next(t) * 0.0037)
        reset()
        with capture_telemetry(aggregation=aggregation) as cap:  # type: ignore[arg-type]
            _workload()
            runs[aggregation] = _normalised(cap.reader.get_metrics_data())
            assert (cap.store is not None) == (aggregation == "bitnet")
    reset()  # the workload's last dequeue hands its wait to whichever call comes next
    assert runs["bitnet"] == runs["sdk"]
    assert "bitnet.inference.inter_token_latency" in runs["sdk"]
    assert len(runs["sdk"]) >= 11  # request, prefill, decode, gaps, usage, queue, batch, quant


def test_a_second_collection_reports_an_exemplar_once_and_totals_cumulatively() -> None:
    with capture_telemetry() as cap:
        tracer = bitnet_obs._instruments.tracer()
        with tracer.start_as_current_span("request"):
            QUEUE_WAIT_DURATION.record(0.2, {"bitnet.queue.name": "q"})
        (first,) = cap.points("bitnet.queue.wait.duration")
        assert first.count == 1 and len(first.exemplars) == 1
        QUEUE_WAIT_DURATION.record(0.3, {"bitnet.queue.name": "q"})  # no span: no exemplar
        (second,) = cap.points("bitnet.queue.wait.duration")
        assert second.count == 2 and second.sum == pytest.approx(0.5)
        assert second.exemplars == ()


def test_the_cardinality_limit_folds_into_one_overflow_set() -> None:
    store = Store(limit=3)
    for i in range(10):
        store.record(store.cell("h", (1.0,), {"k": i}), 0.5, None)
    points, _ = store.snapshot(0)
    attributes = [p.attributes for p in points["h"]]
    assert attributes == [{"k": 0}, {"k": 1}, {"k": 2}, {"otel.metric.overflow": True}]
    assert [p.count for p in points["h"]] == [1, 1, 1, 7]


def test_records_from_many_threads_are_exact() -> None:
    with capture_telemetry() as cap:

        def work() -> None:
            for _ in range(2000):
                REQUEST_DURATION.record(0.05, {"gen_ai.request.model": "t"})

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        (point,) = cap.points("gen_ai.server.request.duration")
        assert point.count == 16_000
