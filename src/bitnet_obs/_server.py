"""The one HTTP server: ``/metrics`` plus the health routes, stdlib only, loopback by default.

A threaded server with per-connection timeouts, so a slow or stuck client cannot block a
scrape. Requests are small GETs; anything else gets a 4xx.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bitnet_obs._selfmon import internal_error, logger

# (status, content type, body) for one route
Response = tuple[int, str, bytes]
MetricsRenderer = Callable[[str], Response]
HealthRenderer = Callable[[str], Response]

_MAX_LINE = 8192


def _default_health(path: str) -> Response:
    body = json.dumps({"status": "healthy", "probe": path}).encode()
    return 200, "application/json", body


_health_renderer: HealthRenderer = _default_health


def set_health_renderer(renderer: HealthRenderer) -> None:
    """The health module installs its probe logic here (one-way: server knows no checks)."""
    global _health_renderer
    _health_renderer = renderer


class _Handler(BaseHTTPRequestHandler):
    server_version = "bitnet-obs"
    sys_version = ""
    timeout = 10.0  # per connection: a trickling client is cut off, others are not blocked
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so even a garbled request gets a status line

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # An unknown method is the client's mistake: 405, not the stdlib's 501.
        super().send_error(405 if code == 501 else code, message, explain)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                status, ctype, body = self.server.render_metrics(self.headers.get("Accept", ""))  # type: ignore[attr-defined]
            elif path in ("/health", "/health/live", "/health/ready"):
                status, ctype, body = _health_renderer(path)
            elif path == "/":
                status, ctype = 200, "text/plain; charset=utf-8"
                body = b"bitnet-obs: /metrics /health /health/live /health/ready\n"
            else:
                status, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
        except Exception as exc:
            internal_error("server_route", exc)
            status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        self._send(status, ctype, body)

    def do_HEAD(self) -> None:
        self._send(200 if self.path.split("?", 1)[0] == "/" else 405, "text/plain", b"")

    def _reject(self) -> None:
        self._send(405, "text/plain; charset=utf-8", b"method not allowed\n")

    do_POST = do_PUT = do_DELETE = do_PATCH = _reject

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every second would flood the application's stderr


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets or times out is not our failure; don't print tracebacks.
        logger.debug("HTTP client %s dropped", client_address, exc_info=True)

    def __init__(self, address: tuple[str, int], render_metrics: MetricsRenderer) -> None:
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.render_metrics = render_metrics
        super().__init__(address, _Handler)


class MetricsServer:
    """Serves the routes on a daemon thread; ``port`` is the bound one (0 picks a free port)."""

    def __init__(self, host: str, port: int, render_metrics: MetricsRenderer) -> None:
        self._server = _Server((host, port), render_metrics)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="bitnet-obs-http",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
