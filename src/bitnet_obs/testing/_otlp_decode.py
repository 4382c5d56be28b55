"""OTLP plumbing shared by both transports: the signal table, and flattening of requests.

The protobuf messages nest resource → scope → metric → data point; a test wants "the points of
metric X with attributes Y". These records carry the resource and scope attributes along, decode
``AnyValue`` to plain Python (arrays → ``list``, kvlists → ``dict``) and ids to lowercase hex.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Exemplar

Signal = Literal["metrics", "traces", "logs"]
Transport = Literal["grpc", "http"]
MetricKind = Literal["sum", "gauge", "histogram", "exponential_histogram", "summary"]
Temporality = Literal["unspecified", "delta", "cumulative"]
SpanKindName = Literal["unspecified", "internal", "server", "client", "producer", "consumer"]
StatusCodeName = Literal["unset", "ok", "error"]

ExportRequest = ExportMetricsServiceRequest | ExportTraceServiceRequest | ExportLogsServiceRequest


class SignalInfo(NamedTuple):
    grpc_service: str
    request_type: type[ExportRequest]
    response_type: type[Any]
    http_path: str


SIGNALS: dict[Signal, SignalInfo] = {
    "metrics": SignalInfo(
        metrics_pb.DESCRIPTOR.services_by_name["MetricsService"].full_name,
        ExportMetricsServiceRequest,
        metrics_pb.ExportMetricsServiceResponse,
        "/v1/metrics",
    ),
    "traces": SignalInfo(
        trace_pb.DESCRIPTOR.services_by_name["TraceService"].full_name,
        ExportTraceServiceRequest,
        trace_pb.ExportTraceServiceResponse,
        "/v1/traces",
    ),
    "logs": SignalInfo(
        logs_pb.DESCRIPTOR.services_by_name["LogsService"].full_name,
        ExportLogsServiceRequest,
        logs_pb.ExportLogsServiceResponse,
        "/v1/logs",
    ),
}


@dataclass(frozen=True)
class Fault:
    """How to refuse a request, on either transport (``grpc_code`` is a ``grpc.StatusCode``)."""

    grpc_code: Any
    http_status: int
    retry_after: float | None
    message: str


_TEMPORALITY: tuple[Temporality, ...] = ("unspecified", "delta", "cumulative")
_SPAN_KIND: tuple[SpanKindName, ...] = (
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
)
_STATUS: tuple[StatusCodeName, ...] = ("unset", "ok", "error")


@dataclass(frozen=True, kw_only=True)
class MetricPoint:
    """One data point of one metric, with its metric, scope and resource context.

    Fields that do not apply to ``kind`` are ``None`` (or empty). Exponential histograms put
    the positive buckets in ``bucket_counts``/``bucket_offset``.

        p = receiver.metric_points("bitnet.tokens")[-1]
        assert p.kind == "sum" and p.is_monotonic
        assert p.attributes == {"model": "b1.58-2B"} and p.value == 42
    """

    name: str
    kind: MetricKind
    unit: str = ""
    description: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""
    value: int | float | None = None
    is_monotonic: bool | None = None
    temporality: Temporality | None = None
    start_time_unix_nano: int = 0
    time_unix_nano: int = 0
    count: int | None = None
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    bucket_counts: list[int] = field(default_factory=list)
    explicit_bounds: list[float] = field(default_factory=list)
    scale: int | None = None
    zero_count: int | None = None
    bucket_offset: int | None = None
    negative_offset: int | None = None
    negative_bucket_counts: list[int] = field(default_factory=list)
    exemplars: list[dict[str, Any]] = field(default_factory=list)
    transport: Transport


@dataclass(frozen=True)
class SpanEvent:
    """A span event: ``ReceivedSpan.events[0] == SpanEvent("retry", {"attempt": 2}, t)``."""

    name: str
    attributes: dict[str, Any] = field(default_factory=dict)
    time_unix_nano: int = 0


@dataclass(frozen=True, kw_only=True)
class ReceivedSpan:
    """One received span, flattened with its resource and scope.

    Ids are lowercase hex; ``parent_span_id`` is ``None`` for a root span.

        (span,) = receiver.spans("generate")
        assert span.kind == "server" and span.status_code == "ok"
        assert span.attributes["gen_ai.usage.output_tokens"] == 16
    """

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    kind: SpanKindName = "unspecified"
    status_code: StatusCodeName = "unset"
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""
    start_time_unix_nano: int = 0
    end_time_unix_nano: int = 0
    transport: Transport

    @property
    def duration_ns(self) -> int:
        return self.end_time_unix_nano - self.start_time_unix_nano


@dataclass(frozen=True, kw_only=True)
class ReceivedLogRecord:
    """One received log record, flattened with its resource and scope.

    ``body`` is decoded like an attribute value (a kvlist body becomes a ``dict``).

        (rec,) = receiver.log_records()
        assert rec.severity_text == "ERROR" and rec.body == "boom"
        assert rec.trace_id == span.trace_id
    """

    body: Any = None
    severity_text: str = ""
    severity_number: int = 0
    event_name: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""
    trace_id: str | None = None
    span_id: str | None = None
    time_unix_nano: int = 0
    observed_time_unix_nano: int = 0
    transport: Transport


def any_value(value: AnyValue) -> Any:
    """Decode an OTLP ``AnyValue`` to ``str/bool/int/float/bytes/list/dict`` (unset → ``None``)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, which)


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _hex(raw: bytes) -> str | None:
    return raw.hex() if raw else None


def _exemplars(exemplars: Iterable[Exemplar]) -> list[dict[str, Any]]:
    return [
        {
            "trace_id": _hex(e.trace_id),
            "span_id": _hex(e.span_id),
            "value": getattr(e, e.WhichOneof("value") or "as_double"),
            "time_unix_nano": e.time_unix_nano,
            "filtered_attributes": attributes(e.filtered_attributes),
        }
        for e in exemplars
    ]


def metric_points(request: ExportMetricsServiceRequest, transport: Transport) -> list[MetricPoint]:
    out: list[MetricPoint] = []
    replace = dataclasses.replace
    for rm in request.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind is None:
                    continue
                base = MetricPoint(
                    name=m.name,
                    kind=kind,
                    unit=m.unit,
                    description=m.description,
                    resource=resource,
                    scope=sm.scope.name,
                    transport=transport,
                )
                if kind in ("sum", "gauge"):
                    numbers = m.sum if kind == "sum" else m.gauge
                    sum_info: dict[str, Any] = {}
                    if kind == "sum":
                        sum_info = {
                            "is_monotonic": m.sum.is_monotonic,
                            "temporality": _TEMPORALITY[m.sum.aggregation_temporality],
                        }
                    out.extend(
                        replace(
                            base,
                            attributes=attributes(p.attributes),
                            value=getattr(p, p.WhichOneof("value") or "as_int"),
                            start_time_unix_nano=p.start_time_unix_nano,
                            time_unix_nano=p.time_unix_nano,
                            exemplars=_exemplars(p.exemplars),
                            **sum_info,
                        )
                        for p in numbers.data_points
                    )
                elif kind == "histogram":
                    out.extend(
                        replace(
                            base,
                            attributes=attributes(h.attributes),
                            temporality=_TEMPORALITY[m.histogram.aggregation_temporality],
                            start_time_unix_nano=h.start_time_unix_nano,
                            time_unix_nano=h.time_unix_nano,
                            count=h.count,
                            sum=h.sum if h.HasField("sum") else None,
                            min=h.min if h.HasField("min") else None,
                            max=h.max if h.HasField("max") else None,
                            bucket_counts=list(h.bucket_counts),
                            explicit_bounds=list(h.explicit_bounds),
                            exemplars=_exemplars(h.exemplars),
                        )
                        for h in m.histogram.data_points
                    )
                elif kind == "exponential_histogram":
                    out.extend(
                        replace(
                            base,
                            attributes=attributes(e.attributes),
                            temporality=_TEMPORALITY[
                                m.exponential_histogram.aggregation_temporality
                            ],
                            start_time_unix_nano=e.start_time_unix_nano,
                            time_unix_nano=e.time_unix_nano,
                            count=e.count,
                            sum=e.sum if e.HasField("sum") else None,
                            min=e.min if e.HasField("min") else None,
                            max=e.max if e.HasField("max") else None,
                            scale=e.scale,
                            zero_count=e.zero_count,
                            bucket_offset=e.positive.offset,
                            bucket_counts=list(e.positive.bucket_counts),
                            negative_offset=e.negative.offset,
                            negative_bucket_counts=list(e.negative.bucket_counts),
                            exemplars=_exemplars(e.exemplars),
                        )
                        for e in m.exponential_histogram.data_points
                    )
                else:  # summary: legacy, only count and sum
                    out.extend(
                        replace(
                            base,
                            attributes=attributes(s.attributes),
                            start_time_unix_nano=s.start_time_unix_nano,
                            time_unix_nano=s.time_unix_nano,
                            count=s.count,
                            sum=s.sum,
                        )
                        for s in m.summary.data_points
                    )
    return out


def spans(request: ExportTraceServiceRequest, transport: Transport) -> list[ReceivedSpan]:
    return [
        ReceivedSpan(
            name=s.name,
            trace_id=s.trace_id.hex(),
            span_id=s.span_id.hex(),
            parent_span_id=_hex(s.parent_span_id),
            kind=_SPAN_KIND[s.kind] if s.kind < len(_SPAN_KIND) else "unspecified",
            status_code=_STATUS[s.status.code] if s.status.code < len(_STATUS) else "unset",
            status_message=s.status.message,
            attributes=attributes(s.attributes),
            events=[
                SpanEvent(e.name, attributes(e.attributes), e.time_unix_nano) for e in s.events
            ],
            links=[
                {
                    "trace_id": link.trace_id.hex(),
                    "span_id": link.span_id.hex(),
                    "attributes": attributes(link.attributes),
                }
                for link in s.links
            ],
            resource=resource,
            scope=ss.scope.name,
            start_time_unix_nano=s.start_time_unix_nano,
            end_time_unix_nano=s.end_time_unix_nano,
            transport=transport,
        )
        for rs in request.resource_spans
        for resource in (attributes(rs.resource.attributes),)
        for ss in rs.scope_spans
        for s in ss.spans
    ]


def log_records(request: ExportLogsServiceRequest, transport: Transport) -> list[ReceivedLogRecord]:
    return [
        ReceivedLogRecord(
            body=any_value(r.body),
            severity_text=r.severity_text,
            severity_number=r.severity_number,
            event_name=r.event_name,
            attributes=attributes(r.attributes),
            resource=resource,
            scope=sl.scope.name,
            trace_id=_hex(r.trace_id),
            span_id=_hex(r.span_id),
            time_unix_nano=r.time_unix_nano,
            observed_time_unix_nano=r.observed_time_unix_nano,
            transport=transport,
        )
        for rl in request.resource_logs
        for resource in (attributes(rl.resource.attributes),)
        for sl in rl.scope_logs
        for r in sl.log_records
    ]
