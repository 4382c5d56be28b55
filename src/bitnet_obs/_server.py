"""The one HTTP server: ``/metrics`` plus the health routes, stdlib only, loopback by default.

It must never be the reason a scrape fails or a process runs out of threads:

- one thread per connection, at most :data:`MAX_CONNECTIONS` of them; more are refused at once
  (503) and counted in ``bitnet.obs.dropped{bitnet.obs.signal="http"}``;
- every request (TLS handshake, request line, headers, response) must finish within
  :data:`REQUEST_DEADLINE_S` of its start, else the connection is cut: a client trickling its
  request holds one slot for at most that long and never blocks the other connections;
- the request head is capped (:data:`MAX_LINE`, :data:`MAX_HEAD`): oversized or malformed
  requests get a 4xx;
- optional TLS (handshake on the connection's own thread, never on the accept loop) and basic
  auth compared with :func:`hmac.compare_digest`. With auth on, ``/health/live`` and
  ``/health/ready`` still answer unauthenticated probes, with the status code and
  ``{"status": ...}`` only; the details need credentials.

``HEAD`` answers every route with the status and headers a ``GET`` would get (``Content-Length``
included), without the body; other methods get 405 with ``Allow: GET, HEAD``. ``/metrics`` is
gzip-compressed when the scraper accepts it (``Accept-Encoding: gzip``, as Prometheus sends):
an exposition is repetitive text that shrinks about tenfold, at a small CPU cost per scrape.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import http.client
import json
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bitnet_obs._selfmon import count_dropped, internal_error, logger

#: A body: bytes, or parts written one after another (a large /metrics page)
Body = bytes | tuple[bytes, ...]
# (status, content type, body) for one route
Response = tuple[int, str, Body]
MetricsRenderer = Callable[[str], Response]
HealthRenderer = Callable[[str], Response]

MAX_LINE = 8192  # request line, bytes
MAX_HEAD = 32 * 1024  # all header lines of one request, bytes
MAX_CONNECTIONS = 64  # concurrent connections (threads)
REQUEST_DEADLINE_S = 10.0  # Prometheus' default scrape_timeout
PROBES = ("/health/live", "/health/ready")
ALLOW = "GET, HEAD"
GZIP_LEVEL = 6  # zlib's default: a 10 kB exposition shrinks to ~13 % in ~0.1 ms
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 20\r\nConnection: close\r\n\r\ntoo many connections"
)


def _default_health(path: str) -> Response:
    body = json.dumps({"status": "healthy", "probe": path}).encode()
    return 200, "application/json", body


_health_renderer: HealthRenderer = _default_health


def set_health_renderer(renderer: HealthRenderer) -> None:
    """The health module installs its probe logic here (one-way: server knows no checks)."""
    global _health_renderer
    _health_renderer = renderer


def tls_context(cert_file: str, key_file: str | None) -> ssl.SSLContext:
    """Server-side TLS 1.2+ context (files were validated by the configuration already)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    return context


class _HeadReader:
    """The connection's reader with a byte budget for one request head (else 414/431)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.budget = MAX_HEAD

    def readline(self, limit: int = -1) -> bytes:
        if self.budget <= 0:
            raise http.client.LineTooLong("request head")
        cap = self.budget + 1 if limit < 0 else min(limit, self.budget + 1)
        line: bytes = self._raw.readline(cap)
        self.budget -= len(line)
        if self.budget < 0:
            raise http.client.LineTooLong("request head")
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(BaseHTTPRequestHandler):
    server_version = "bitnet-obs"
    sys_version = ""
    timeout = REQUEST_DEADLINE_S  # see setup()
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so even a garbled request gets a status line
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.deadline_s)  # per operation; the reaper: total
        self.rfile = _HeadReader(self.rfile)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        """The stdlib's, with a per-request deadline and a shorter request line."""
        self.server.arm(self.connection)
        self.rfile.budget = MAX_HEAD  # type: ignore[attr-defined]
        try:
            self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
        except http.client.LineTooLong:
            self.raw_requestline = b"x" * (MAX_LINE + 1)
        except (TimeoutError, OSError):
            self.close_connection = True
            return
        if len(self.raw_requestline) > MAX_LINE:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        try:
            if not self.parse_request():
                self.close_connection = True
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self._reject()
                return
            method()
            self.wfile.flush()
        except (TimeoutError, OSError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # An unknown method is the client's mistake: 405, not the stdlib's 501.
        super().send_error(405 if code == 501 else code, message, explain)

    def do_GET(self) -> None:
        self._respond()

    def do_HEAD(self) -> None:
        self._respond()  # the GET's status and headers; _send writes no body for HEAD

    def _respond(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self._authorized():
            if path in PROBES:
                self._send(*self._probe_status_only(path))
            else:
                self._unauthorized()
            return
        headers: dict[str, str] = {}
        try:
            if path == "/metrics":
                status, ctype, body = self.server.render_metrics(self.headers.get("Accept", ""))
                headers["Vary"] = "Accept, Accept-Encoding"
                if status == 200 and accepts_gzip(self.headers.get("Accept-Encoding", "")):
                    body = gzip_body(body)
                    headers["Content-Encoding"] = "gzip"
            elif path in ("/health", *PROBES):
                status, ctype, body = self.server.health(path)
            elif path == "/":
                status, ctype = 200, "text/plain; charset=utf-8"
                body = b"bitnet-obs: /metrics /health /health/live /health/ready\n"
            else:
                status, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
        except Exception as exc:
            internal_error("server_route", exc)
            status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
            headers = {}
        self._send(status, ctype, body, headers)

    def _reject(self) -> None:
        self.close_connection = True  # we never read a body, so the connection cannot be reused
        self._send(405, "text/plain; charset=utf-8", b"method not allowed\n", {"Allow": ALLOW})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _reject

    def _authorized(self) -> bool:
        expected = self.server.credentials
        if expected is None:
            return True
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        user, sep, password = decoded.partition(b":")
        # Both comparisons always run: the timing says nothing about which part was wrong.
        user_ok = hmac.compare_digest(user, expected[0])
        password_ok = hmac.compare_digest(password, expected[1])
        return scheme.lower() == "basic" and bool(sep) and user_ok and password_ok

    def _unauthorized(self) -> None:
        self.close_connection = True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="bitnet-obs", charset="UTF-8"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", "13")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"unauthorized\n")

    def _probe_status_only(self, path: str) -> Response:
        try:
            status, _, body = self.server.health(path)
            text = body if isinstance(body, bytes) else b"".join(body)
            state = str(json.loads(text).get("status", ""))
        except Exception as exc:
            internal_error("server_route", exc)
            status, state = 503, ""
        state = state or ("healthy" if status < 500 else "unhealthy")
        return status, "application/json", json.dumps({"status": state}).encode()

    def _send(
        self, status: int, ctype: str, body: Body, headers: Mapping[str, str] | None = None
    ) -> None:
        parts = (body,) if isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(sum(len(part) for part in parts)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            for part in parts:  # each write releases the GIL while the socket takes it
                self.wfile.write(part)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every second would flood the application's stderr


def gzip_body(body: Body) -> bytes:
    """One gzip member of the whole body, compressed a part at a time (zlib releases the GIL
    while it works on each)."""
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    parts = (body,) if isinstance(body, bytes) else body
    return b"".join([*(packer.compress(part) for part in parts), packer.flush()])


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value admits gzip (RFC 9110 12.5.3): ``gzip`` (or
    ``x-gzip``) listed with a weight above 0, or ``*`` above 0 with gzip not listed.

    >>> accepts_gzip("gzip"), accepts_gzip("br, gzip;q=0"), accepts_gzip("*;q=0.5")
    (True, False, True)
    """
    wildcard = False
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        acceptable = 0.0 < weight <= 1.0
        if coding.lower() in ("gzip", "x-gzip"):
            return acceptable
        if coding == "*":
            wildcard = acceptable
    return wildcard


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        render_metrics: MetricsRenderer,
        tls: ssl.SSLContext | None,
        credentials: tuple[bytes, bytes] | None,
        deadline_s: float,
        render_health: HealthRenderer | None,
    ) -> None:
        self.deadline_s = deadline_s
        self.render_health = render_health
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.render_metrics = render_metrics
        self.tls = tls
        self.credentials = credentials
        # fd -> (the accepted socket, deadline); a TLS connection shares the accepted fd
        self._deadlines: dict[int, tuple[socket.socket, float]] = {}
        self._deadlines_lock = threading.Lock()
        super().__init__(address, _Handler)

    def health(self, path: str) -> Response:
        """This server's health renderer, else the one the health module registered."""
        return (self.render_health or _health_renderer)(path)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets or times out is not our failure; don't print tracebacks.
        logger.debug("HTTP client %s dropped", client_address, exc_info=True)

    # -- connection cap and deadlines (the accept loop's thread) ---------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._deadlines_lock:
            busy = len(self._deadlines) >= MAX_CONNECTIONS
            if not busy:
                deadline = time.monotonic() + self.deadline_s
                self._deadlines[request.fileno()] = (request, deadline)
        if busy:
            count_dropped("http", "connection_limit")
            try:
                if self.tls is None:
                    request.setblocking(False)
                    request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def arm(self, connection: socket.socket) -> None:
        """Start the deadline of the next request on this connection."""
        fd = connection.fileno()
        with self._deadlines_lock:
            entry = self._deadlines.get(fd)
            if entry is not None:
                self._deadlines[fd] = (entry[0], time.monotonic() + self.deadline_s)

    def service_actions(self) -> None:
        """Cut connections past their deadline (runs every poll interval of serve_forever)."""
        now = time.monotonic()
        with self._deadlines_lock:
            late = [
                (fd, sock) for fd, (sock, deadline) in self._deadlines.items() if deadline <= now
            ]
            for fd, sock in late:
                self._deadlines[fd] = (sock, float("inf"))  # cut once; its thread forgets it
        for _, sock in late:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it

    # -- per-connection thread -------------------------------------------------------------------

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        fd = request.fileno()
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._deadlines_lock:
                entry = self._deadlines.get(fd)
                if entry is not None and entry[0] is request:  # the fd may be reused already
                    del self._deadlines[fd]

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # A second socket object on the same fd: the accepted one keeps owning (and closing)
        # the fd, and the handshake runs here, on the connection's thread, under its deadline.
        raw = socket.socket(fileno=request.fileno())
        raw.settimeout(self.deadline_s)
        try:
            conn = self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            raw.detach()
            return
        try:
            conn.do_handshake()
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        except OSError:
            pass  # failed or cut handshake, or a reset: nothing to answer
        finally:
            conn.detach()


class MetricsServer:
    """Serves the routes on a daemon thread; ``port`` is the bound one (0 picks a free port)."""

    def __init__(
        self,
        host: str,
        port: int,
        render_metrics: MetricsRenderer,
        *,
        tls: ssl.SSLContext | None = None,
        basic_auth: tuple[str, str] | None = None,
        request_deadline_s: float = REQUEST_DEADLINE_S,
        render_health: HealthRenderer | None = None,
    ) -> None:
        credentials = None
        if basic_auth is not None:
            credentials = (basic_auth[0].encode(), basic_auth[1].encode())
        server = _Server(
            (host, port), render_metrics, tls, credentials, request_deadline_s, render_health
        )
        self._server = server
        self.host = host
        self.port: int = self._server.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="bitnet-obs-http",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
