"""The one HTTP server (bitnet_obs._server): routes, methods, loopback, slow clients, auth.

TLS, deadlines and the connection cap are exercised in tests/reliability/test_endpoint_safety.py.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest

from bitnet_obs._server import MetricsServer, Response, accepts_gzip
from tests._support.prometheus import MetricsEndpoint, PrometheusFactory, ScrapeJob


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
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
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
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(raw)
            status_line = sock.recv(64).split(b"\r\n")[0]
            assert status_line.split()[1].startswith(b"4"), status_line


def test_a_trickling_client_does_not_block_scrapes(server: MetricsServer) -> None:
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    slow.sendall(b"GET /met")  # and never finishes the request
    assert _get(server, "/metrics")[0] == 200
    # answered while the trickling client still holds its connection (it is cut only at the
    # request deadline): the scrape did not wait behind it
    slow.setblocking(False)
    with pytest.raises(BlockingIOError):
        slow.recv(1)
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
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


# --- HEAD and gzip ------------------------------------------------------------------------


def _exchange(
    server: MetricsServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/metrics", "/health", "/health/live", "/health/ready", "/"])
@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_head_answers_with_the_headers_of_a_get_and_no_body(
    path: str, encoding: str | None
) -> None:
    # a fixed health report (a live one carries ages that change between two requests)
    report = json.dumps({"status": "healthy", "checks": {}}).encode()
    server = MetricsServer(
        "127.0.0.1", 0, _render, render_health=lambda p: (200, "application/json", report)
    )
    headers = {"Accept-Encoding": encoding} if encoding else {}
    try:
        got = _exchange(server, "GET", path, headers)
        head = _exchange(server, "HEAD", path, headers)
    finally:
        server.stop()
    assert got[0] == head[0] == 200
    assert head[2] == b""
    assert int(head[1]["content-length"]) == len(got[2]) > 0  # what the GET's body was
    same = {"content-type", "content-length", "content-encoding", "vary", "cache-control"}
    assert {k: v for k, v in head[1].items() if k in same} == {
        k: v for k, v in got[1].items() if k in same
    }


def test_head_keeps_a_keep_alive_connection_in_step(server: MetricsServer) -> None:
    """No stray body after a HEAD: the next response on the connection parses cleanly."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for method in ("HEAD", "GET", "HEAD", "GET"):
            conn.request(method, "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            assert body == (b"" if method == "HEAD" else _render("")[2])
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),  # what browsers and curl --compressed send
        ("x-gzip", True),
        ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),
        ("*", True),
        ("identity", False),
        ("gzip;q=0", False),
        ("*;q=0", False),
        ("br", False),
        ("gzip;q=nonsense", False),
        ("", False),
    ],
)
def test_metrics_are_gzipped_when_the_scraper_accepts_it(
    server: MetricsServer, accept_encoding: str, gzipped: bool
) -> None:
    headers = {"Accept-Encoding": accept_encoding} if accept_encoding else {}
    status, response_headers, body = _exchange(server, "GET", "/metrics", headers)
    assert status == 200
    assert response_headers["vary"] == "Accept, Accept-Encoding"  # caches keep them apart
    if gzipped:
        assert response_headers["content-encoding"] == "gzip"
        assert gzip.decompress(body) == _render("")[2]
    else:
        assert "content-encoding" not in response_headers
        assert body == _render("")[2]


def test_urllib_and_curl_read_the_gzipped_exposition(server: MetricsServer) -> None:
    request = urllib.request.Request(server.url + "/metrics", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(response.read()) == _render("")[2]
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl here")
    out = subprocess.run(
        [curl, "--silent", "--show-error", "--compressed", "--include", server.url + "/metrics"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert body == _render("")[2]  # curl decoded it
    head_only = subprocess.run(
        [curl, "--silent", "--show-error", "--head", server.url + "/metrics"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    assert head_only.startswith(b"HTTP/1.1 200")
    assert f"content-length: {len(_render('')[2])}".encode() in head_only.lower()


def test_other_methods_get_405_with_allow(server: MetricsServer) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "BREW"):
        status, headers, _ = _exchange(server, method, "/metrics")
        assert (status, headers.get("allow")) == (405, "GET, HEAD"), method


def test_head_with_basic_auth() -> None:
    srv = MetricsServer(
        "127.0.0.1",
        0,
        _render,
        basic_auth=("u", "p"),
        render_health=lambda path: (503, "application/json", DETAILED),
    )
    try:
        good = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
        assert _exchange(srv, "HEAD", "/metrics")[0] == 401
        assert _exchange(srv, "HEAD", "/metrics", good)[:3:2] == (200, b"")
        status, headers, body = _exchange(srv, "HEAD", "/health/ready")  # a probe: status only
        got = _exchange(srv, "GET", "/health/ready")
        assert (status, body, headers["content-length"]) == (503, b"", str(len(got[2])))
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.prometheus
def test_a_real_prometheus_scrapes_the_gzipped_exposition(
    server: MetricsServer, prometheus_factory: PrometheusFactory
) -> None:
    """Prometheus asks for gzip (the endpoint beside ours records its request headers), and
    reads our compressed exposition right."""
    with MetricsEndpoint("# TYPE probe_total counter\nprobe_total 1\n") as recorder:
        prom = prometheus_factory(
            jobs=[
                ScrapeJob([f"127.0.0.1:{server.port}"], name="ours"),
                ScrapeJob([recorder.address], name="recorder"),
            ]
        )
        at, (sample,) = prom.query_when('x_total{job="ours"}', timeout=90)
        assert float(sample["value"][1]) == 1
        assert prom.query_value('up{job="ours"}', at) == 1
        prom.wait_for('up{job="recorder"} == 1', timeout=90)  # its first scrape may come later
        assert recorder.requests
        for _, headers in recorder.requests:
            encodings = {k.lower(): v for k, v in headers.items()}["accept-encoding"]
            assert accepts_gzip(encodings), encodings
