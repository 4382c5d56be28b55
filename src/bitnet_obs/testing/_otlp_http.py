"""OTLP/HTTP (binary protobuf) server side for ``OTLPReceiver``, on the stdlib ``http.server``.

Status codes follow the OTLP/HTTP spec: 200 with an empty ``Export*ServiceResponse``; errors carry
a ``google.rpc.Status`` body; 404 unknown path, 405 not POST, 400 undecodable, 411 no
Content-Length, 413 over the size limit, 415 wrong Content-Type or Content-Encoding. OTLP/JSON is
not supported.
"""

from __future__ import annotations

import contextlib
import socket
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]

from bitnet_obs.testing._otlp_decode import SIGNALS, ExportRequest, Fault, Signal

OnExport = Callable[[Signal, ExportRequest, dict[str, str]], "Fault | None"]
OnMalformed = Callable[[Signal], None]

_PATHS: dict[str, Signal] = {info.http_path: signal for signal, info in SIGNALS.items()}


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class OTLPHTTPServer(ThreadingHTTPServer):
    """Hands each decoded request to ``on_export`` and answers with the fault it returns."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        on_export: OnExport,
        on_malformed: OnMalformed,
        max_body_bytes: int,
    ) -> None:
        self.on_export = on_export
        self.on_malformed = on_malformed
        self.max_body_bytes = max_body_bytes
        self.connections: set[socket.socket] = set()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def close_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections."""
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-request is not the test's business


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server: OTLPHTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        known = self.path.split("?", 1)[0] in _PATHS
        self._reply(405 if known else 404, "use POST" if known else "unknown path")

    def do_POST(self) -> None:
        signal = _PATHS.get(self.path.split("?", 1)[0])
        if signal is None:
            self._discard_body()
            self._reply(404, f"unknown path {self.path}; use /v1/metrics, /v1/traces, /v1/logs")
            return
        status, text, message = self._read_message(signal)
        if message is None:
            self.server.on_malformed(signal)
            self._reply(status, text)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        fault = self.server.on_export(signal, message, headers)
        if fault is None:
            self._reply(200, body=SIGNALS[signal].response_type().SerializeToString())
        else:
            extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            self._reply(fault.http_status, fault.message, extra)

    def _read_message(self, signal: Signal) -> tuple[int, str, ExportRequest | None]:
        limit = self.server.max_body_bytes
        ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/x-protobuf":
            self._discard_body()
            return 415, f"Content-Type {ctype!r} unsupported; send application/x-protobuf", None
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            return 411, "Content-Length required", None
        if int(length) > limit:
            self.close_connection = True
            return 413, f"body over {limit} bytes", None
        body = self.rfile.read(int(length))
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        try:
            body = _decompress(body, encoding, limit)
        except ValueError as exc:
            return 415, str(exc), None
        except zlib.error as exc:
            return 400, f"bad {encoding} body: {exc}", None
        if len(body) > limit:
            return 413, f"decompressed body over {limit} bytes", None
        try:
            return 200, "", SIGNALS[signal].request_type.FromString(body)
        except Exception as exc:  # protobuf's DecodeError, untyped here
            return 400, f"undecodable protobuf: {exc}", None

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= 1 << 20:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def _reply(
        self,
        status: int,
        text: str = "",
        extra: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        if body is None:  # OTLP/HTTP: failures carry a google.rpc.Status
            body = Status(code=2, message=text).SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("identity", ""):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ValueError(f"Content-Encoding {encoding!r} unsupported; use gzip or deflate")
    # 47: zlib or gzip header, auto-detected; "deflate" in the wild is sometimes raw (-15).
    wbits = 47 if encoding == "gzip" or body[:1] == b"\x78" else -15
    return zlib.decompressobj(wbits).decompress(body, limit + 1)
