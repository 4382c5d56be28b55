"""Scenario 6, endpoint safety: the ``/metrics`` and health server, and what leaves the process.

- binds 127.0.0.1 unless told otherwise;
- TLS and basic auth (from env or a file, compared in constant time), scraped by a real
  Prometheus over HTTPS; probes stay answerable without credentials, status only;
- a client that trickles its request, or never finishes a TLS handshake, does not block other
  scrapes and is cut at the request deadline; connections are capped and refusals counted;
- oversized or malformed requests get a 4xx;
- no prompt or response text is exported unless ``capture_content`` is on, checked over a real
  OTLP export byte for byte.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bitnet_obs import _server
from bitnet_obs._instruments import DROPPED
from bitnet_obs._server import MetricsServer, Response, tls_context
from bitnet_obs.testing import OTLPReceiver
from tests._support.prometheus import PrometheusFactory, ScrapeJob, free_port
from tests.reliability._harness import FIXTURES, Child, run_child

CERT, KEY = str(FIXTURES / "server.crt"), str(FIXTURES / "server.key")
USER, PASSWORD = "scraper", "correct horse battery staple"
DEADLINE_S = 1.5  # the request deadline, shortened for the test (10 s in production)
_DROPPED = DROPPED


def _render(accept: str) -> Response:
    return 200, "text/plain; version=0.0.4", b"# TYPE x_total counter\nx_total 1\n"


def _client_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=CERT)


def _auth(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def secure() -> Iterator[MetricsServer]:
    server = MetricsServer(
        "127.0.0.1",
        0,
        _render,
        tls=tls_context(CERT, KEY),
        basic_auth=(USER, PASSWORD),
        request_deadline_s=DEADLINE_S,
    )
    yield server
    server.stop()


@pytest.fixture
def plain() -> Iterator[MetricsServer]:
    server = MetricsServer("127.0.0.1", 0, _render, request_deadline_s=DEADLINE_S)
    yield server
    server.stop()


def _get(
    server: MetricsServer, path: str, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if server.scheme == "https":
        conn = http.client.HTTPSConnection(
            "127.0.0.1", server.port, timeout=timeout, context=_client_context()
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_default_bind_is_loopback() -> None:
    result = run_child(
        "tests.reliability.test_endpoint_safety:bound_address",
        {"OTEL_EXPORTER_PROMETHEUS_PORT": "0"},
    ).result
    assert result["host"] == "127.0.0.1"
    assert result["url"].startswith("http://127.0.0.1:")


def bound_address() -> dict[str, Any]:
    """In the child: configure() with nothing set but the port."""
    import bitnet_obs

    telemetry = bitnet_obs.configure()
    assert telemetry.server is not None
    host = telemetry.server._server.server_address[0]
    url = telemetry.metrics_url
    bitnet_obs.shutdown(2)
    return {"host": host, "url": url}


def test_tls_and_basic_auth(secure: MetricsServer, figures: Any) -> None:
    assert secure.url.startswith("https://127.0.0.1:")
    status, _, body = _get(secure, "/metrics", _auth())
    assert status == 200 and b"x_total 1" in body
    for headers in (
        {},
        _auth(password="wrong"),
        _auth(user="nobody"),
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Bearer x"},
    ):
        status, response_headers, _ = _get(secure, "/metrics", headers)
        assert status == 401, headers
        assert response_headers["WWW-Authenticate"].startswith("Basic realm=")
    assert _get(secure, "/health")[0] == 401  # the detailed report needs credentials
    assert _get(secure, "/")[0] == 401
    # Kubernetes probes work without a secret in the pod spec: status code and status only.
    for probe in _server.PROBES:
        status, _, body = _get(secure, probe)
        assert status in (200, 503)
        assert set(json.loads(body)) == {"status"}
    status, _, body = _get(secure, "/health/ready", _auth())
    assert "checks" in json.loads(body) or len(json.loads(body)) > 1
    # Plain HTTP to the TLS port: the handshake fails, the server carries on.
    with socket.create_connection(("127.0.0.1", secure.port), timeout=30) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"x_total" not in _recv_all(sock)
    assert _get(secure, "/metrics", _auth())[0] == 200
    figures("tls", "TLS 1.2+, cert+key files", auth="basic, hmac.compare_digest")


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_slow_clients_do_not_block_scrapes_and_are_cut_at_the_deadline(
    scheme: str, secure: MetricsServer, plain: MetricsServer, figures: Any
) -> None:
    server = secure if scheme == "https" else plain
    # https: a client that connects and never starts the TLS handshake;
    # http: one that trickles its request a byte every 0.2 s, forever.
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    payload = b"" if scheme == "https" else b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 500
    headers = _auth() if scheme == "https" else {}
    started = time.monotonic()
    worst = 0.0
    served_meanwhile = 0  # scrapes answered while the slow client still held its connection
    cut_after: float | None = None
    for i in range(10_000):  # ends at the cut; the bound is only for a server that never cuts
        if i < len(payload):
            with contextlib.suppress(OSError):  # cut: seen just below
                slow.sendall(payload[i : i + 1])
        scrape_started = time.monotonic()
        assert _get(server, "/metrics", headers, timeout=30)[0] == 200
        worst = max(worst, time.monotonic() - scrape_started)
        if _closed(slow):
            cut_after = time.monotonic() - started
            break
        served_meanwhile += 1
        assert time.monotonic() - started < DEADLINE_S + 60, "the slow client was never cut"
        time.sleep(0.2)
    slow.close()
    # not blocked: a scrape was answered while the slow client was connected (a server it
    # blocks would answer only once the slow one is cut)
    assert served_meanwhile >= 1, worst
    assert cut_after is not None and cut_after >= DEADLINE_S - 0.2, cut_after  # not before it
    figures("slow_client_cut_after_s", round(cut_after, 2), scheme=scheme, deadline_s=DEADLINE_S)
    figures("worst_scrape_meanwhile_ms", round(worst * 1000, 1), scheme=scheme)
    figures("scrapes_served_meanwhile", served_meanwhile, scheme=scheme)


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def _status_line(sock: socket.socket) -> bytes:
    """The response's first line (read up to it: a kept-alive connection sends no EOF)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


def test_connections_are_capped_and_refusals_counted(figures: Any) -> None:
    plain = MetricsServer("127.0.0.1", 0, _render, request_deadline_s=60.0)  # held: not cut
    before = _DROPPED.value(**{"bitnet.obs.signal": "http"})
    held = [
        socket.create_connection(("127.0.0.1", plain.port), timeout=30)
        for _ in range(_server.MAX_CONNECTIONS - 1)
    ]
    last = http.client.HTTPConnection("127.0.0.1", plain.port, timeout=30)
    try:
        # The last slot: a keep-alive connection that gets an answer. The accept loop takes
        # connections in the order they were made, so once it answers, every held one is
        # registered too (no sleep that a busy machine could outlast).
        last.request("GET", "/metrics")
        response = last.getresponse()
        assert response.status == 200 and response.read()
        held.append(last.sock)
        with socket.create_connection(("127.0.0.1", plain.port), timeout=30) as extra:
            started = time.monotonic()
            answer = _recv_all(extra)
            refused_in = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 503"), answer  # refused, not queued behind them
        assert _DROPPED.value(**{"bitnet.obs.signal": "http"}) == before + 1
    finally:
        for sock in held:
            sock.close()
        last.close()
    deadline = time.monotonic() + 60
    while _get(plain, "/metrics")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _get(plain, "/metrics")[0] == 200  # slots come back
    figures(
        "max_connections",
        _server.MAX_CONNECTIONS,
        refused_answer="503",
        refused_in_ms=round(refused_in * 1000, 1),
    )
    plain.stop()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/9.9\r\n\r\n", b"505"),
        (b"BREW /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\n" + (b"X-Big: " + b"b" * 8000 + b"\r\n") * 5 + b"\r\n", b"431"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\nxx", b"405"),
        (b"GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n", b"200"),
    ],
    ids=[
        "garbage",
        "version",
        "method",
        "long-line",
        "many-headers",
        "big-headers",
        "post-body",
        "bad-length",
    ],
)
def test_oversized_or_malformed_requests_get_4xx(
    plain: MetricsServer, raw: bytes, status: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", plain.port), timeout=30) as sock:
        sock.sendall(raw)
        line = _status_line(sock)
    assert line.split()[1] == status, line
    assert _get(plain, "/metrics")[0] == 200  # and the server is fine afterwards


@pytest.mark.slow
@pytest.mark.prometheus
def test_prometheus_scrapes_over_tls_with_basic_auth_from_a_file(
    prometheus_factory: PrometheusFactory, tmp_path: Any, figures: Any
) -> None:
    secret = tmp_path / "scrape-credentials"
    secret.write_text(f"{USER}:{PASSWORD}\n")
    port = free_port()
    env = {
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
        "BITNET_OBS_TLS_CERT_FILE": CERT,
        "BITNET_OBS_TLS_KEY_FILE": KEY,
        "BITNET_OBS_BASIC_AUTH_FILE": str(secret),
        "BITNET_OBS_DEVICE_METRICS": "none",
    }
    child = Child("tests.reliability.test_endpoint_safety:serve", env, stdin=True)
    try:
        assert child.readline(60).startswith("READY https://")
        target = [f"127.0.0.1:{port}"]
        good = ScrapeJob(
            target, name="good", scheme="https", ca_file=CERT, basic_auth=(USER, PASSWORD)
        )
        bad = ScrapeJob(
            target, name="bad", scheme="https", ca_file=CERT, basic_auth=(USER, "wrong")
        )
        prom = prometheus_factory(jobs=[good, bad])
        result = prom.wait_for(
            'bitnet_inference_requests_total{job="good",bitnet_outcome="ok"}', timeout=90
        )
        assert float(result[0]["value"][1]) == 3
        health = _settled_targets(prom)
        child.send("")
        child.finish(60)
    finally:
        child.kill()
    assert health["good"]["health"] == "up"
    assert health["bad"]["health"] == "down" and "401" in health["bad"]["lastError"]
    figures("prometheus_over_tls_with_auth", "up", wrong_password=health["bad"]["lastError"])


def _settled_targets(prom: Any, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """The targets by job, once the good one is up and the bad one refused with a 401 at the
    same look (a scrape of the good one that times out on a busy machine is retried)."""
    deadline = time.monotonic() + timeout
    while True:
        health = {t["labels"]["job"]: t for t in prom.targets()}
        good, bad = health.get("good", {}), health.get("bad", {})
        if good.get("health") == "up" and "401" in bad.get("lastError", ""):
            return health
        assert time.monotonic() < deadline, prom.target_summary()
        time.sleep(0.25)


def serve() -> dict[str, Any]:
    """In the child: configure from the environment, make 3 calls, serve until told to stop."""
    import sys

    import bitnet_obs

    telemetry = bitnet_obs.configure()

    @bitnet_obs.monitored_inference(model="tls")
    def call() -> list[int]:
        return [1]

    for _ in range(3):
        call()
    print("READY", telemetry.metrics_url, flush=True)
    sys.stdin.readline()
    bitnet_obs.shutdown(2)
    return {}


def leak(capture: bool, secret: str) -> dict[str, Any]:
    """In the child: prompts and responses, also inside an exception, over OTLP and /metrics."""
    import logging
    import urllib.request

    import bitnet_obs

    logging.basicConfig(level=logging.DEBUG)
    telemetry = bitnet_obs.configure(capture_content=capture)

    @bitnet_obs.monitored_inference(model="leak", operation="chat")
    def generate(prompt: str) -> str:
        return f"RESPONSE-{secret}"

    @bitnet_obs.monitored_inference(model="leak", operation="chat")
    def stream(prompt: str) -> Iterator[str]:
        yield f"TOKEN-{secret}"

    generate(prompt=f"PROMPT-{secret}")
    list(stream(f"STREAMED-PROMPT-{secret}"))
    assert telemetry.metrics_url is not None
    exposition = urllib.request.urlopen(telemetry.metrics_url, timeout=30).read().decode()
    ok = bitnet_obs.shutdown(5)
    return {"in_metrics_text": secret in exposition, "shutdown_ok": ok}


@pytest.mark.parametrize("capture", [False, True], ids=["capture-off", "capture-on"])
def test_no_prompt_or_response_text_leaves_unless_capture_content(
    capture: bool, figures: Any
) -> None:
    secret = uuid.uuid4().hex
    with OTLPReceiver() as rx:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
            "OTEL_METRICS_EXPORTER": "otlp,prometheus",
            "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
            "BITNET_OBS_DEVICE_METRICS": "none",
        }
        child = run_child(
            "tests.reliability.test_endpoint_safety:leak", env, capture=capture, secret=secret
        )
        wire = b"".join(r.message.SerializeToString() for r in rx.raw_requests())
        spans = rx.spans()
    assert child.result["shutdown_ok"] and len(spans) == 2 and wire
    found = secret.encode() in wire
    if capture:
        assert found
        attrs = json.dumps([s.attributes for s in spans])
        for text in ("PROMPT-", "RESPONSE-", "STREAMED-PROMPT-", "TOKEN-"):
            assert f"{text}{secret}" in attrs, text
    else:
        assert not found, "prompt/response text reached the collector with capture off"
        assert secret not in child.stderr and secret not in child.stdout  # nor in logs
    assert not child.result["in_metrics_text"]
    figures("prompt_bytes_on_the_wire", found, capture_content=capture, otlp_bytes=len(wire))


def error_leak(secret: str) -> dict[str, Any]:
    """In the child: the application puts the prompt in its exception message."""
    import bitnet_obs

    bitnet_obs.configure()

    @bitnet_obs.monitored_inference(model="leak")
    def generate(prompt: str) -> str:
        raise ValueError(f"cannot tokenize {prompt!r}")

    with contextlib.suppress(ValueError):
        generate(prompt=f"PROMPT-{secret}")
    return {"shutdown_ok": bitnet_obs.shutdown(5)}


def test_no_prompt_text_leaves_through_an_exception_message() -> None:
    secret = uuid.uuid4().hex
    with OTLPReceiver() as rx:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
            "OTEL_METRICS_EXPORTER": "none",
            "BITNET_OBS_DEVICE_METRICS": "none",
        }
        run_child("tests.reliability.test_endpoint_safety:error_leak", env, secret=secret)
        wire = b"".join(r.message.SerializeToString() for r in rx.raw_requests())
        assert rx.spans()
    assert secret.encode() not in wire
