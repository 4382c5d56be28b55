"""The one HTTP server (bitnet_obs._server): routes, methods, loopback, slow clients."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator

import pytest

from bitnet_obs._server import MetricsServer, Response


def _render(accept: str) -> Response:
    return (
        200,
        "text/plain; version=0.0.4",
        b"# HELP x_total X.\n# TYPE x_total counter\nx_total 1\n",
    )


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1", 0, _render)
    yield srv
    srv.stop()


def _get(server: MetricsServer, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(method, path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def test_routes(server: MetricsServer) -> None:
    assert _get(server, "/metrics")[1].startswith(b"# HELP x_total")
    assert _get(server, "/metrics?name[]=x")[0] == 200
    assert _get(server, "/health")[0] == 200
    assert _get(server, "/health/live")[0] == 200
    assert _get(server, "/health/ready")[0] == 200
    assert _get(server, "/nope")[0] == 404
    assert _get(server, "/metrics", "POST")[0] == 405
    assert _get(server, "/metrics", "DELETE")[0] == 405


def test_binds_loopback_only(server: MetricsServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server._server.server_address[0] == "127.0.0.1"


def test_malformed_and_oversized_requests_get_4xx(server: MetricsServer) -> None:
    requests = (
        b"GARBAGE\r\n\r\n",
        b"BREW /metrics HTTP/1.1\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    )
    for raw in requests:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(raw)
            status_line = sock.recv(64).split(b"\r\n")[0]
            assert status_line.split()[1].startswith(b"4"), status_line


def test_a_trickling_client_does_not_block_scrapes(server: MetricsServer) -> None:
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    slow.sendall(b"GET /met")  # and never finishes the request
    started = time.monotonic()
    assert _get(server, "/metrics")[0] == 200
    assert time.monotonic() - started < 1.0
    slow.close()
