"""In-memory capture of bitnet-obs telemetry for your own tests.

It binds bitnet-obs to private in-memory SDK providers (never the global ones, which
OpenTelemetry lets you set only once), zeroes the running event counts (requests, tokens,
errors; not what is in progress now, such as active requests or queue depth) and restores the
previous binding on exit::

    from bitnet_obs.testing import capture_telemetry

    with capture_telemetry() as cap:
        generate("hello")
    assert cap.value("bitnet.inference.requests", **{"bitnet.outcome": "ok"}) == 1
    assert cap.spans()[0].name == "text_completion my-model"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bitnet_obs import _instruments
from bitnet_obs._aggregate import Store
from bitnet_obs._errors import ConfigError
from bitnet_obs._export import INSTRUMENT_TYPES, aggregate_into
from bitnet_obs._instruments import DEFAULT_CARDINALITY_LIMIT


@dataclass(frozen=True)
class CapturedPoint:
    """One metric data point, flattened for asserting."""

    name: str
    attributes: dict[str, Any]
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    bucket_counts: tuple[int, ...] = ()
    explicit_bounds: tuple[float, ...] = ()
    exemplars: tuple[Any, ...] = field(default=())
    min: float | None = None
    max: float | None = None


class TelemetryCapture:
    """Collects metric points and finished spans in memory; see :func:`capture_telemetry`."""

    def __init__(
        self,
        cardinality_limit: int | None = None,
        aggregation: Literal["bitnet", "sdk"] = "bitnet",
    ) -> None:
        if aggregation not in ("bitnet", "sdk"):
            raise ConfigError(f"aggregation={aggregation!r}; accepted: 'bitnet', 'sdk'")
        limit = cardinality_limit or DEFAULT_CARDINALITY_LIMIT
        self.reader = InMemoryMetricReader(
            cardinality_limits=dict.fromkeys(INSTRUMENT_TYPES, limit)
        )
        self.span_exporter = InMemorySpanExporter()
        resource = Resource.create({})
        self.meter_provider = MeterProvider(
            metric_readers=[self.reader], resource=resource, shutdown_on_exit=False
        )
        self.store = Store(limit) if aggregation == "bitnet" else None
        if self.store is not None:
            aggregate_into([self.reader], self.store, resource)
        self.tracer_provider = TracerProvider(shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        self._previous: Any = None
        self._limit = cardinality_limit
        self._previous_limit = DEFAULT_CARDINALITY_LIMIT

    def __enter__(self) -> TelemetryCapture:
        self._previous = _instruments.binding()
        for counter in _instruments.COUNTERS:
            if type(counter) is _instruments.ObservedCounter:  # events, not what is in flight now
                counter.tally.reset()
        if self._limit is not None:
            self._previous_limit = _instruments.COUNTERS[0].tally.limit
            _instruments.set_cardinality_limit(self._limit)
        _instruments.bind(self.meter_provider, self.tracer_provider, self.store)
        return self

    def __exit__(self, *exc: object) -> None:
        _instruments.restore(self._previous)
        if self._limit is not None:
            _instruments.set_cardinality_limit(self._previous_limit)
        self.meter_provider.shutdown(timeout_millis=1000)
        self.tracer_provider.shutdown()

    def points(self, name: str, **attributes: Any) -> list[CapturedPoint]:
        """Points of one metric whose attributes include the given ones (dots: ``**{"a.b": 1}``)."""
        data = self.reader.get_metrics_data()
        found: list[CapturedPoint] = []
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name != name:
                        continue
                    for dp in metric.data.data_points:
                        attrs = dict(dp.attributes or {})
                        if all(attrs.get(k) == v for k, v in attributes.items()):
                            found.append(_point(name, metric.data, dp, attrs))
        return found

    def value(self, name: str, **attributes: Any) -> float:
        """Sum of matching counter/gauge values, or of histogram counts."""
        total = 0.0
        for point in self.points(name, **attributes):
            total += point.value if point.value is not None else (point.count or 0)
        return total

    def spans(self, name: str | None = None) -> Sequence[ReadableSpan]:
        spans = self.span_exporter.get_finished_spans()
        return [s for s in spans if name is None or s.name == name]


def _point(name: str, data: Any, dp: Any, attrs: dict[str, Any]) -> CapturedPoint:
    exemplars = tuple(getattr(dp, "exemplars", ()) or ())
    if isinstance(data, Histogram):
        return CapturedPoint(name, attrs, None, dp.count, dp.sum, tuple(dp.bucket_counts),
                     tuple(dp.explicit_bounds), exemplars, dp.min, dp.max)  # fmt: skip
    if isinstance(data, (Sum, Gauge)):
        return CapturedPoint(name, attrs, dp.value, exemplars=exemplars)
    return CapturedPoint(name, attrs, getattr(dp, "value", None), exemplars=exemplars)


def capture_telemetry(
    cardinality_limit: int | None = None, *, aggregation: Literal["bitnet", "sdk"] = "bitnet"
) -> TelemetryCapture:
    """Capture bitnet-obs metrics and spans in memory for the duration of a ``with`` block.

    ``aggregation="sdk"`` records histograms through the SDK's instruments, as bitnet-obs does
    under a MeterProvider the application installed; the default is bitnet-obs's own
    aggregation, as under ``configure()``. Both give the same data.
    """
    return TelemetryCapture(cardinality_limit, aggregation)
