"""The one HTTP server (bitnet_obs._server): routes, methods, loopback, slow clients, auth.

TLS, deadlines and the connection cap are exercised in tests/reliability/test_endpoint_safety.py.
"""

from __future__ import annotations

import base64
import http.client
import json
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


def test_basic_auth_guards_everything_but_the_probe_status() -> None:
    srv = MetricsServer(
        "127.0.0.1",
        0,
        _render,
        basic_auth=("u", "p:w"),
        render_health=lambda path: (503, "application/json", DETAILED),
    )
    try:
        good = {"Authorization": "Basic " + base64.b64encode(b"u:p:w").decode()}
        bad = {"Authorization": "Basic " + base64.b64encode(b"u:nope").decode()}
        assert _get_with(srv, "/metrics", good)[0] == 200
        assert _get_with(srv, "/metrics", bad)[0] == 401
        assert _get_with(srv, "/health", {})[0] == 401
        status, body = _get_with(srv, "/health/ready", {})
        assert (status, json.loads(body)) == (503, {"status": "unhealthy"})  # no details
        assert _get_with(srv, "/health/ready", good)[1] == DETAILED
    finally:
        srv.stop()


DETAILED = b'{"status": "unhealthy", "checks": {"model": {"message": "loading"}}}'


def _get_with(server: MetricsServer, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body
