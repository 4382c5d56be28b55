"""A real OTLP receiver (gRPC and HTTP/protobuf at once) for tests.

In-memory exporters prove what the SDK produced; only a peer on the wire proves what a collector
gets: endpoints, compression, retries, timeouts. ``OTLPReceiver`` listens on loopback, decodes
what the real exporters send and can fail or stall on demand.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, overload

import grpc
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from bitnet_obs.testing import _otlp_decode as dec
from bitnet_obs.testing._otlp_decode import (
    SIGNALS,
    ExportRequest,
    Fault,
    MetricPoint,
    ReceivedLogRecord,
    ReceivedSpan,
    Signal,
    Transport,
)
from bitnet_obs.testing._otlp_http import OTLPHTTPServer, hostport

M = TypeVar("M", bound=ExportRequest)

_STOPPING = "OTLPReceiver is stopping"


@dataclass(frozen=True)
class ReceivedRequest(Generic[M]):
    """A decoded export request as it arrived, with lowercased headers (str values only)."""

    signal: Signal
    transport: Transport
    message: M
    headers: dict[str, str] = field(default_factory=dict)


class OTLPReceiver:
    """An OTLP collector stand-in: gRPC and HTTP/protobuf on loopback, ports chosen by the OS.

    Everything received is kept in memory, unbounded (it is for tests), until ``clear()``.
    HTTP bodies over ``max_body_bytes`` (compressed or not) get 413.

        with OTLPReceiver() as rx:
            OTLPSpanExporter(endpoint=rx.grpc_endpoint).export(finished_spans)
            assert rx.spans("generate")[0].attributes["model"] == "b1.58-2B"
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int = 0,
        *,
        max_body_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self._host = host
        self._ports = (grpc_port, http_port)
        self._max_body_bytes = max_body_bytes
        self._cond = threading.Condition(threading.RLock())
        self._stopping = threading.Event()
        self._requests: list[ReceivedRequest[Any]] = []
        self._points: list[MetricPoint] = []
        self._spans: list[ReceivedSpan] = []
        self._logs: list[ReceivedLogRecord] = []
        self._arrived: Counter[tuple[Signal, Transport]] = Counter()
        self._rejected: Counter[tuple[Signal, Transport]] = Counter()
        self._fail_left = 0
        self._fault: Fault | None = None
        self._delay = 0.0
        self._grpc: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._http: OTLPHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc_port = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> OTLPReceiver:
        """Bind both listeners and serve in background threads; returns ``self``."""
        if self._stopping.is_set():
            raise RuntimeError("an OTLPReceiver cannot be restarted; create a new one")
        if self._http is not None:
            return self
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="otlp-receiver-grpc")
        self._grpc = grpc.server(
            self._pool,
            handlers=[self._grpc_handler(signal) for signal in SIGNALS],
            options=[("grpc.max_receive_message_length", self._max_body_bytes)],
        )
        self._grpc_port = self._grpc.add_insecure_port(hostport(self._host, self._ports[0]))
        self._grpc.start()
        self._http = OTLPHTTPServer(
            (self._host, self._ports[1]),
            on_export=lambda signal, message, headers: self._handle(
                signal, "http", message, headers
            ),
            on_malformed=lambda signal: self._malformed(signal, "http"),
            max_body_bytes=self._max_body_bytes,
        )
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-receiver-http",
            daemon=True,
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        """Stop promptly: pending delays end, in-flight requests get UNAVAILABLE / 503."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._http is not None:
            self._http.shutdown()
            self._http.close_connections()
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(timeout=2)
        if self._grpc is not None:
            self._grpc.stop(grace=0.2).wait(timeout=2)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def grpc_endpoint(self) -> str:
        """``http://host:port``, as gRPC exporters and ``OTEL_EXPORTER_OTLP_ENDPOINT`` take it."""
        if self._grpc is None:
            raise RuntimeError("OTLPReceiver not started")
        return f"http://{hostport(self._host, self._grpc_port)}"

    @property
    def http_endpoint(self) -> str:
        """Base URL; HTTP exporters want ``f"{rx.http_endpoint}/v1/metrics"`` (traces, logs)."""
        if self._http is None:
            raise RuntimeError("OTLPReceiver not started")
        return f"http://{hostport(self._host, self._http.server_address[1])}"

    # -- fault injection -------------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        *,
        grpc_code: Any = grpc.StatusCode.UNAVAILABLE,
        http_status: int = 503,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``n`` requests (any signal, any transport) with an error; replaces any
        pending failures. Their data is not recorded, only counted in ``rejected_count()``.

        ``retry_after`` (seconds) is sent as ``Retry-After`` (HTTP) and as a ``RetryInfo`` trailer
        (gRPC); the OTLP exporters then wait that long instead of their 1 s, 2 s, 4 s… backoff.
        """
        with self._cond:
            self._fail_left = n
            self._fault = Fault(grpc_code, http_status, retry_after, "injected failure")

    def set_delay(self, seconds: float) -> None:
        """Make every request wait ``seconds`` before it is answered (a slow collector)."""
        self._delay = seconds

    # -- queries ---------------------------------------------------------------------------------

    @overload
    def raw_requests(
        self, signal: Literal["metrics"], transport: Transport | None = None
    ) -> list[ReceivedRequest[metrics_pb.ExportMetricsServiceRequest]]: ...
    @overload
    def raw_requests(
        self, signal: Literal["traces"], transport: Transport | None = None
    ) -> list[ReceivedRequest[trace_pb.ExportTraceServiceRequest]]: ...
    @overload
    def raw_requests(
        self, signal: Literal["logs"], transport: Transport | None = None
    ) -> list[ReceivedRequest[logs_pb.ExportLogsServiceRequest]]: ...
    @overload
    def raw_requests(
        self, signal: None = None, transport: Transport | None = None
    ) -> list[ReceivedRequest[ExportRequest]]: ...
    def raw_requests(
        self, signal: Signal | None = None, transport: Transport | None = None
    ) -> list[ReceivedRequest[Any]]:
        """The accepted requests, decoded, in arrival order."""
        with self._cond:
            return [
                r
                for r in self._requests
                if signal in (None, r.signal) and transport in (None, r.transport)
            ]

    def metric_points(self, name: str | None = None) -> list[MetricPoint]:
        """All received data points (of metric ``name``), in arrival order."""
        with self._cond:
            return [p for p in self._points if name in (None, p.name)]

    def spans(self, name: str | None = None) -> list[ReceivedSpan]:
        """All received spans (named ``name``), in arrival order."""
        with self._cond:
            return [s for s in self._spans if name in (None, s.name)]

    def log_records(self) -> list[ReceivedLogRecord]:
        """All received log records, in arrival order."""
        with self._cond:
            return list(self._logs)

    def latest_value(self, name: str, /, **attributes: Any) -> int | float | None:
        """Value of the newest sum/gauge point of ``name`` whose attributes include ``attributes``.

        Dotted keys go through a dict: ``rx.latest_value("m", **{"model.name": "2B"})``.
        """
        points = [
            (p.time_unix_nano, i, p.value)
            for i, p in enumerate(self.metric_points(name))
            if p.kind in ("sum", "gauge")
            and all(k in p.attributes and p.attributes[k] == v for k, v in attributes.items())
        ]
        return max(points, key=lambda t: (t[0], t[1]))[2] if points else None

    def request_count(
        self, signal: Signal | None = None, transport: Transport | None = None
    ) -> int:
        """Requests that reached the receiver, including rejected and still-delayed ones."""
        return self._count(self._arrived, signal, transport)

    def rejected_count(
        self, signal: Signal | None = None, transport: Transport | None = None
    ) -> int:
        """Requests answered with an error (injected, malformed, or cut short by ``stop()``)."""
        return self._count(self._rejected, signal, transport)

    def clear(self) -> None:
        """Forget received data and counts; pending ``fail_next`` and ``set_delay`` stay."""
        with self._cond:
            for store in (self._requests, self._points, self._spans, self._logs):
                store.clear()
            self._arrived.clear()
            self._rejected.clear()

    def wait_for(self, predicate: Callable[[OTLPReceiver], bool], timeout: float = 30.0) -> bool:
        """Block until ``predicate(self)`` holds (re-checked on every request); False on timeout.

        It returns as soon as the condition holds, so the timeout only bounds a failure: keep
        it generous (the default, 30 s), as a busy CI machine can delay an export by seconds.

        ``assert rx.wait_for(lambda r: len(r.spans("decode")) >= 16)``
        """
        with self._cond:
            self._cond.wait_for(lambda: predicate(self) or self._stopping.is_set(), timeout)
            return predicate(self)

    def wait_for_metric(self, name: str, timeout: float = 30.0) -> bool:
        """Block until a point of metric ``name`` has arrived; False on timeout."""
        return self.wait_for(lambda r: bool(r.metric_points(name)), timeout)

    def wait_for_spans(self, n: int, timeout: float = 30.0) -> bool:
        """Block until at least ``n`` spans have arrived in total; False on timeout."""
        return self.wait_for(lambda r: len(r.spans()) >= n, timeout)

    # -- request path ----------------------------------------------------------------------------

    def _count(
        self,
        counter: Counter[tuple[Signal, Transport]],
        signal: Signal | None,
        transport: Transport | None,
    ) -> int:
        with self._cond:
            return sum(
                n for (s, t), n in counter.items() if signal in (None, s) and transport in (None, t)
            )

    def _arrive(self, signal: Signal, transport: Transport) -> Fault | None:
        with self._cond:
            self._arrived[(signal, transport)] += 1
            fault = None
            if self._fail_left > 0:
                self._fail_left -= 1
                self._rejected[(signal, transport)] += 1
                fault = self._fault
            self._cond.notify_all()
            return fault

    def _malformed(self, signal: Signal, transport: Transport) -> None:
        with self._cond:
            self._arrived[(signal, transport)] += 1
            self._rejected[(signal, transport)] += 1
            self._cond.notify_all()

    def _handle(
        self, signal: Signal, transport: Transport, message: ExportRequest, headers: dict[str, str]
    ) -> Fault | None:
        """Count, maybe fail, delay, then record; the returned fault (if any) is the answer."""
        fault = self._arrive(signal, transport)
        delay = self._delay
        if delay > 0:
            self._stopping.wait(delay)
        if fault is not None:
            return fault
        points, spans, logs = _flatten(message, transport)
        with self._cond:
            if self._stopping.is_set():
                self._rejected[(signal, transport)] += 1
                return Fault(grpc.StatusCode.UNAVAILABLE, 503, None, _STOPPING)
            self._requests.append(ReceivedRequest(signal, transport, message, headers))
            self._points.extend(points)
            self._spans.extend(spans)
            self._logs.extend(logs)
            self._cond.notify_all()
        return None

    def _grpc_handler(self, signal: Signal) -> Any:
        service, request_type, response_type, _ = SIGNALS[signal]

        def export(request: ExportRequest, context: Any) -> Any:
            metadata = context.invocation_metadata() or ()
            headers = {k.lower(): v for k, v in metadata if isinstance(v, str)}
            fault = self._handle(signal, "grpc", request, headers)
            if fault is not None:
                if fault.retry_after is not None:
                    retry = RetryInfo()
                    retry.retry_delay.FromNanoseconds(int(fault.retry_after * 1e9))
                    info = retry.SerializeToString()
                    context.set_trailing_metadata((("google.rpc.retryinfo-bin", info),))
                context.abort(fault.grpc_code, fault.message)
            return response_type()

        handler = grpc.unary_unary_rpc_method_handler(
            export,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(service, {"Export": handler})


def _flatten(
    message: ExportRequest, transport: Transport
) -> tuple[list[MetricPoint], list[ReceivedSpan], list[ReceivedLogRecord]]:
    if isinstance(message, metrics_pb.ExportMetricsServiceRequest):
        return dec.metric_points(message, transport), [], []
    if isinstance(message, trace_pb.ExportTraceServiceRequest):
        return [], dec.spans(message, transport), []
    return [], [], dec.log_records(message, transport)
