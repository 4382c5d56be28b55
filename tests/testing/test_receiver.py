"""OTLPReceiver against the real OTLP exporters, over real sockets."""

from __future__ import annotations

import gzip
import os
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from bitnet_obs.testing import OTLPReceiver, SpanEvent

Transport = Literal["grpc", "http"]
# (transport, compression) pairs the exporters offer
WIRE = [
    pytest.param("grpc", None, id="grpc"),
    pytest.param("grpc", "gzip", id="grpc-gzip"),
    pytest.param("http", None, id="http"),
    pytest.param("http", "gzip", id="http-gzip"),
    pytest.param("http", "deflate", id="http-deflate"),
]
RESOURCE = Resource.create({"service.name": "bitnet-test", "deployment.environment": "ci"})


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("OTEL_EXPORTER_OTLP"):
            monkeypatch.delenv(key)


@pytest.fixture
def rx() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


Closer = list[Callable[[], None]]


@pytest.fixture
def closers() -> Iterator[Closer]:
    todo: Closer = []
    yield todo
    for close in todo:
        close()


def metric_exporter(
    rx: OTLPReceiver,
    transport: Transport,
    closers: Closer | None,
    compression: str | None = None,
    timeout: float = 30.0,
) -> GrpcMetricExporter | HttpMetricExporter:
    exporter: GrpcMetricExporter | HttpMetricExporter
    if transport == "grpc":
        exporter = GrpcMetricExporter(
            endpoint=rx.grpc_endpoint,
            timeout=timeout,
            compression=grpc.Compression.Gzip if compression else grpc.Compression.NoCompression,
        )
    else:
        exporter = HttpMetricExporter(
            endpoint=f"{rx.http_endpoint}/v1/metrics",
            timeout=timeout,
            compression=Compression(compression or "none"),
        )
    if closers is not None:  # None: a provider owns and shuts down the exporter
        closers.append(exporter.shutdown)
    return exporter


def span_exporter(
    rx: OTLPReceiver,
    transport: Transport,
    closers: Closer | None,
    compression: str | None = None,
    timeout: float = 30.0,
) -> SpanExporter:
    exporter: SpanExporter
    if transport == "grpc":
        exporter = GrpcSpanExporter(
            endpoint=rx.grpc_endpoint,
            timeout=timeout,
            compression=grpc.Compression.Gzip if compression else grpc.Compression.NoCompression,
        )
    else:
        exporter = HttpSpanExporter(
            endpoint=f"{rx.http_endpoint}/v1/traces",
            timeout=timeout,
            compression=Compression(compression or "none"),
        )
    if closers is not None:  # None: a provider owns and shuts down the exporter
        closers.append(exporter.shutdown)
    return exporter


@pytest.fixture(scope="module")
def metrics_data() -> MetricsData:
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        resource=RESOURCE,
        views=[View(instrument_name="*.exp", aggregation=ExponentialBucketHistogramAggregation())],
    )
    meter = provider.get_meter("bitnet.test", "1.0")
    tokens = meter.create_counter("bitnet.tokens", unit="{token}", description="tokens out")
    tokens.add(40, {"model": "b1.58-2B", "phase": "decode"})
    tokens.add(2, {"model": "b1.58-2B", "phase": "decode"})
    tokens.add(7, {"model": "b1.58-2B", "phase": "prefill"})
    latency = meter.create_histogram("bitnet.latency", unit="s")
    for seconds in (0.5, 3.0, 12.0):
        latency.record(seconds, {"model": "b1.58-2B"})
    meter.create_gauge("bitnet.temperature").set(61.5, {"device": "cpu0"})
    exp = meter.create_histogram("bitnet.latency.exp")
    for value in (1.0, 2.0, 4.0):
        exp.record(value)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


@pytest.mark.parametrize(("transport", "compression"), WIRE)
def test_metrics_round_trip(
    rx: OTLPReceiver,
    closers: Closer,
    metrics_data: MetricsData,
    transport: Transport,
    compression: str | None,
) -> None:
    exporter = metric_exporter(rx, transport, closers, compression)
    assert exporter.export(metrics_data) is MetricExportResult.SUCCESS

    decode = {tuple(p.attributes.items()): p for p in rx.metric_points("bitnet.tokens")}
    assert set(decode) == {
        (("model", "b1.58-2B"), ("phase", "decode")),
        (("model", "b1.58-2B"), ("phase", "prefill")),
    }
    point = decode[(("model", "b1.58-2B"), ("phase", "decode"))]
    assert (point.kind, point.value, point.is_monotonic) == ("sum", 42, True)
    assert (point.unit, point.description, point.scope) == ("{token}", "tokens out", "bitnet.test")
    assert point.temporality == "cumulative"
    assert point.transport == transport
    assert point.resource["service.name"] == "bitnet-test"
    assert point.resource["deployment.environment"] == "ci"
    assert point.time_unix_nano >= point.start_time_unix_nano > 0

    (hist,) = rx.metric_points("bitnet.latency")
    assert (hist.kind, hist.count, hist.sum, hist.min, hist.max) == ("histogram", 3, 15.5, 0.5, 12)
    assert hist.explicit_bounds[:4] == [0.0, 5.0, 10.0, 25.0]
    assert hist.bucket_counts[:4] == [0, 2, 0, 1]
    assert sum(hist.bucket_counts) == 3
    assert len(hist.bucket_counts) == len(hist.explicit_bounds) + 1
    assert hist.value is None

    (gauge,) = rx.metric_points("bitnet.temperature")
    assert (gauge.kind, gauge.value, gauge.attributes) == ("gauge", 61.5, {"device": "cpu0"})
    assert gauge.temporality is None

    (exp,) = rx.metric_points("bitnet.latency.exp")
    assert (exp.kind, exp.count, exp.sum) == ("exponential_histogram", 3, 7.0)
    assert exp.scale is not None
    assert exp.zero_count == 0
    assert sum(exp.bucket_counts) == 3

    assert rx.latest_value("bitnet.tokens", phase="prefill") == 7
    assert rx.request_count() == rx.request_count("metrics", transport) == 1
    (request,) = rx.raw_requests("metrics")
    assert request.message.resource_metrics[0].scope_metrics[0].scope.name == "bitnet.test"
    assert "otel-otlp-exporter-python" in request.headers["user-agent"].lower()
    if transport == "http":
        assert request.headers["content-type"] == "application/x-protobuf"
        assert request.headers.get("content-encoding") == compression


@pytest.mark.parametrize(("transport", "compression"), WIRE)
def test_spans_round_trip(rx: OTLPReceiver, transport: Transport, compression: str | None) -> None:
    provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider.add_span_processor(
        SimpleSpanProcessor(span_exporter(rx, transport, None, compression))
    )
    tracer = provider.get_tracer("bitnet.test")
    with tracer.start_as_current_span("generate", kind=SpanKind.SERVER) as root:
        root.set_attribute("gen_ai.usage.output_tokens", 16)
        root.set_attribute("bitnet.layers", (0, 1, 2))
        with tracer.start_as_current_span("decode") as child:
            child.add_event("token", {"index": 3})
            child.set_status(Status(StatusCode.ERROR, "kernel fault"))
    provider.shutdown()

    assert rx.wait_for_spans(2, timeout=60)
    (gen,) = rx.spans("generate")
    (dec,) = rx.spans("decode")
    assert (gen.kind, gen.status_code, gen.parent_span_id) == ("server", "unset", None)
    assert gen.attributes == {"gen_ai.usage.output_tokens": 16, "bitnet.layers": [0, 1, 2]}
    assert gen.resource["service.name"] == "bitnet-test"
    assert (len(gen.trace_id), len(gen.span_id)) == (32, 16)
    assert int(gen.trace_id, 16) == root.get_span_context().trace_id
    assert (dec.trace_id, dec.parent_span_id) == (gen.trace_id, gen.span_id)
    assert (dec.kind, dec.status_code, dec.status_message) == ("internal", "error", "kernel fault")
    assert [(e.name, e.attributes) for e in dec.events] == [("token", {"index": 3})]
    assert isinstance(dec.events[0], SpanEvent)
    assert gen.duration_ns >= dec.duration_ns > 0
    assert {s.transport for s in rx.spans()} == {transport}
    assert rx.request_count("traces") == 2  # SimpleSpanProcessor: one request per span


def test_periodic_reader_end_to_end_and_latest_value(rx: OTLPReceiver) -> None:
    reader = PeriodicExportingMetricReader(
        metric_exporter(rx, "grpc", None), export_interval_millis=60_000
    )
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    gauge = provider.get_meter("bitnet.test").create_gauge("bitnet.queue.depth")
    gauge.set(3, {"queue": "a"})
    gauge.set(9, {"queue": "b"})
    assert provider.force_flush()
    assert rx.wait_for_metric("bitnet.queue.depth", timeout=60)
    gauge.set(5, {"queue": "a"})
    assert provider.force_flush()
    provider.shutdown()
    assert rx.latest_value("bitnet.queue.depth", queue="a") == 5
    assert rx.latest_value("bitnet.queue.depth", queue="b") == 9
    assert rx.latest_value("bitnet.queue.depth", queue="zzz") is None
    assert rx.latest_value("no.such.metric") is None


def _post(
    url: str,
    body: bytes,
    *,
    content_type: str = "application/x-protobuf",
    encoding: str | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=90) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def test_any_value_arrays_kvlists_and_logs_over_http(rx: OTLPReceiver) -> None:
    def array(*values: AnyValue) -> AnyValue:
        return AnyValue(array_value=ArrayValue(values=values))

    def kvlist(*values: KeyValue) -> AnyValue:
        return AnyValue(kvlist_value=KeyValueList(values=values))

    log_body = kvlist(
        _kv("layers", array(AnyValue(int_value=1))),
        _kv("quant", kvlist(_kv("bits", AnyValue(double_value=1.58)))),
    )
    record = LogRecord(
        body=log_body,
        severity_text="ERROR",
        severity_number=SeverityNumber.SEVERITY_NUMBER_ERROR,
        trace_id=bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
        span_id=bytes.fromhex("b7ad6b7169203331"),
        attributes=[
            _kv("raw", AnyValue(bytes_value=b"\x00\x01")),
            _kv("ok", AnyValue(bool_value=True)),
            _kv("tags", array(AnyValue(string_value="x"), AnyValue())),
        ],
    )
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=PbResource(attributes=[_kv("host.name", AnyValue(string_value="n1"))]),
                scope_logs=[ScopeLogs(log_records=[record])],
            )
        ]
    )
    status, headers, body = _post(f"{rx.http_endpoint}/v1/logs", request.SerializeToString())
    assert (status, headers["Content-Type"], body) == (200, "application/x-protobuf", b"")

    (log,) = rx.log_records()
    assert log.body == {"layers": [1], "quant": {"bits": 1.58}}
    assert log.attributes == {"raw": b"\x00\x01", "ok": True, "tags": ["x", None]}
    assert (log.severity_text, log.severity_number) == ("ERROR", 17)
    assert (log.trace_id, log.span_id) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert (log.resource, log.transport) == ({"host.name": "n1"}, "http")
    assert rx.raw_requests("logs")[0].message == request


GOOD_BODY = ExportTraceServiceRequest().SerializeToString()


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "counted"),
    [
        pytest.param("/v1/tracez", {}, 404, False, id="unknown-path"),
        pytest.param("/v1/traces", {"method": "GET"}, 405, False, id="get"),
        pytest.param("/v1/traces", {"content_type": "application/json"}, 415, True, id="json"),
        pytest.param("/v1/traces", {"encoding": "br"}, 415, True, id="brotli"),
        pytest.param("/v1/traces", {"body": b"\xff\xff\xff"}, 400, True, id="garbage"),
        pytest.param("/v1/traces", {"body": b"notgzip", "encoding": "gzip"}, 400, True, id="badgz"),
    ],
)
def test_http_rejects_bad_requests(
    rx: OTLPReceiver, path: str, kwargs: dict[str, Any], status: int, counted: bool
) -> None:
    body = kwargs.pop("body", GOOD_BODY)
    got, headers, _ = _post(f"{rx.http_endpoint}{path}", body, **kwargs)
    assert got == status
    assert headers["Content-Type"] == "application/x-protobuf"
    assert rx.rejected_count("traces", "http") == rx.request_count() == int(counted)
    assert rx.raw_requests() == []
    # the connection handling survived: a good request still works
    assert _post(f"{rx.http_endpoint}/v1/traces", GOOD_BODY)[0] == 200


def test_http_body_limits_and_raw_deflate() -> None:
    with OTLPReceiver(max_body_bytes=1000) as rx:
        url = f"{rx.http_endpoint}/v1/traces"
        assert _post(url, b"\x00" * 1001)[0] == 413
        bomb = gzip.compress(b"\x00" * 100_000)  # small on the wire, large decompressed
        assert len(bomb) < 1000
        assert _post(url, bomb, encoding="gzip")[0] == 413
        raw = zlib.compressobj(wbits=-15)
        deflated = raw.compress(GOOD_BODY) + raw.flush()
        assert _post(url, deflated, encoding="deflate")[0] == 200
        assert (rx.request_count(), rx.rejected_count()) == (3, 2)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_fail_next_with_retry_after_then_success(
    rx: OTLPReceiver, closers: Closer, metrics_data: MetricsData, transport: Transport
) -> None:
    exporter = metric_exporter(rx, transport, closers)
    rx.fail_next(2, retry_after=0)
    started = time.monotonic()
    assert exporter.export(metrics_data) is MetricExportResult.SUCCESS
    # retried on our 0 s hint, not after the SDK's own backoff of 1 s then 2 s (each at least
    # 80 % of that, with its jitter): three local requests take far less, even on a busy box
    assert time.monotonic() - started < 0.8 * (1 + 2)
    assert (rx.request_count(), rx.rejected_count()) == (3, 2)
    assert len(rx.raw_requests()) == 1  # failed attempts are not recorded
    assert len(rx.metric_points("bitnet.tokens")) == 2


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_exporter_backoff_without_hint(
    rx: OTLPReceiver, closers: Closer, metrics_data: MetricsData, transport: Transport
) -> None:
    """Plain UNAVAILABLE / 503: the exporter waits ~1 s (±20 %) and retries within its timeout."""
    rx.fail_next(1)
    started = time.monotonic()
    assert metric_exporter(rx, transport, closers).export(metrics_data).name == "SUCCESS"
    assert time.monotonic() - started >= 0.8  # it did back off before the retry
    assert (rx.request_count(), rx.rejected_count()) == (2, 1)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_failures_the_exporter_gives_up_on(
    rx: OTLPReceiver, closers: Closer, transport: Transport
) -> None:
    exporter = span_exporter(rx, transport, closers, timeout=0.5)
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for name in ("a", "b", "c"):
        provider.get_tracer("t").start_span(name).end()
    spans = memory.get_finished_spans()
    # retryable, but the ~1 s backoff does not fit the 0.5 s timeout: one attempt, then FAILURE
    rx.fail_next(1)
    assert exporter.export(spans[:1]) is SpanExportResult.FAILURE
    # not retryable at all
    rx.fail_next(1, grpc_code=grpc.StatusCode.INVALID_ARGUMENT, http_status=400)
    assert exporter.export(spans[1:2]) is SpanExportResult.FAILURE
    # and the receiver is fine afterwards (a patient exporter: 0.5 s is short on a busy box)
    assert span_exporter(rx, transport, closers).export(spans[2:]) is SpanExportResult.SUCCESS
    assert [s.name for s in rx.spans()] == ["c"]
    assert (rx.request_count(), rx.rejected_count()) == (3, 2)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_delay(
    rx: OTLPReceiver, closers: Closer, metrics_data: MetricsData, transport: Transport
) -> None:
    rx.set_delay(0.3)
    started = time.monotonic()
    assert metric_exporter(rx, transport, closers).export(metrics_data).name == "SUCCESS"
    assert time.monotonic() - started >= 0.3
    impatient = metric_exporter(rx, transport, closers, timeout=0.1)
    assert impatient.export(metrics_data) is MetricExportResult.FAILURE
    rx.set_delay(0)


def _grpc_export(endpoint: str, timeout: float) -> grpc.StatusCode:
    with grpc.insecure_channel(endpoint.removeprefix("http://")) as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=ExportTraceServiceRequest.SerializeToString,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        try:
            export(ExportTraceServiceRequest(), timeout=timeout)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK


def test_stop_is_prompt_with_requests_in_flight() -> None:
    rx = OTLPReceiver().start()
    rx.set_delay(60)  # longer than any wait below: the requests are in flight at stop()
    outcomes: dict[str, object] = {}
    url = f"{rx.http_endpoint}/v1/traces"
    clients = [
        threading.Thread(target=lambda: outcomes.update(grpc=_grpc_export(rx.grpc_endpoint, 90))),
        threading.Thread(target=lambda: outcomes.update(http=_post(url, GOOD_BODY)[0])),
    ]
    for client in clients:
        client.start()
    assert rx.wait_for(lambda r: r.request_count() == 2, timeout=60)

    started = time.monotonic()
    rx.stop()
    assert time.monotonic() - started < 60 / 2  # did not wait out the 60 s delay
    for client in clients:
        client.join(timeout=90)
    assert outcomes == {"grpc": grpc.StatusCode.UNAVAILABLE, "http": 503}
    assert rx.rejected_count() == 2
    assert rx.raw_requests() == []


def test_wait_for_wakes_on_arrival_and_times_out(rx: OTLPReceiver, closers: Closer) -> None:
    started = time.monotonic()
    assert not rx.wait_for(lambda r: r.request_count() > 0, timeout=0.2)
    assert time.monotonic() - started >= 0.2  # it waited its timeout (a hang would time out)

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(span_exporter(rx, "http", closers)))
    timer = threading.Timer(0.1, lambda: provider.get_tracer("t").start_span("late").end())
    timer.start()
    started = time.monotonic()
    assert rx.wait_for_spans(1, timeout=120)
    assert time.monotonic() - started < 120 / 2  # woken by the arrival, not by its timeout
    timer.join()
    assert not rx.wait_for_metric("never", timeout=0.05)


def test_clear_and_counts(rx: OTLPReceiver) -> None:
    _post(f"{rx.http_endpoint}/v1/traces", GOOD_BODY)
    assert _grpc_export(rx.grpc_endpoint, timeout=60) == grpc.StatusCode.OK
    assert rx.request_count() == 2
    assert rx.request_count("traces", "grpc") == rx.request_count(transport="http") == 1
    assert rx.request_count("metrics") == 0
    rx.fail_next(3)
    rx.clear()
    assert rx.request_count() == 0
    assert rx.raw_requests() == []
    assert _grpc_export(rx.grpc_endpoint, timeout=60) == grpc.StatusCode.UNAVAILABLE  # fault kept
    rx.fail_next(0)
    assert _grpc_export(rx.grpc_endpoint, timeout=60) == grpc.StatusCode.OK


def test_lifecycle() -> None:
    rx = OTLPReceiver()
    with pytest.raises(RuntimeError, match="not started"):
        _ = rx.grpc_endpoint
    assert rx.start() is rx
    assert rx.start() is rx  # idempotent
    assert rx.grpc_endpoint.startswith("http://127.0.0.1:")
    assert rx.http_endpoint.startswith("http://127.0.0.1:")
    assert rx.grpc_endpoint != rx.http_endpoint
    rx.stop()
    rx.stop()
    with pytest.raises(RuntimeError, match="restarted"):
        rx.start()
