"""configure()/shutdown() and the three exporters end to end, in separate processes configured
only by environment variables (bitnet_obs._pipeline)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import bitnet_obs
from bitnet_obs import ConfigError
from bitnet_obs.testing import OTLPReceiver
from tests._support.prometheus import PrometheusFactory, free_port, promtool_check_metrics

ROOT = Path(__file__).resolve().parent.parent


class Workload:
    """tests/_support/workload.py in a child process."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
        full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests._support.workload", *args],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            raise AssertionError(f"workload failed: {line}{self.proc.communicate()[1]}")
        self.metrics_url = line.split()[1]

    def finish(self, timeout: float = 30) -> tuple[str, str]:
        out, err = self.proc.communicate("\n", timeout=timeout)
        assert self.proc.returncode == 0, err
        return out, err


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rx:
        yield rx


@pytest.mark.prometheus
@pytest.mark.slow
def test_prometheus_scrapes_our_metrics_and_promtool_accepts_them(
    prometheus_factory: PrometheusFactory,
) -> None:
    port = free_port()
    work = Workload(
        {"OTEL_EXPORTER_PROMETHEUS_PORT": str(port), "OTEL_SERVICE_NAME": "wl"}, "--calls", "10"
    )
    try:
        assert work.metrics_url == f"http://127.0.0.1:{port}/metrics"
        text = urllib.request.urlopen(work.metrics_url, timeout=30).read().decode()
        code, output = promtool_check_metrics(text)
        assert code == 0, output
        prom = prometheus_factory([f"127.0.0.1:{port}"])
        # every later query at the settled instant of this scrape: a scrape that times out
        # on a busy machine would leave "now" empty for a moment
        at, result = prom.query_when(
            'bitnet_inference_requests_total{bitnet_outcome="ok"}', timeout=90
        )
        assert sum(float(s["value"][1]) for s in result) == 10
        output = 'sum(bitnet_inference_tokens_total{bitnet_token_type="output"})'
        assert prom.query_value(output, at) == 30
        assert prom.query_value("sum(gen_ai_server_request_duration_seconds_count)", at) == 10
        assert prom.query_value("sum(gen_ai_server_time_to_first_token_seconds_count)", at) == 5
        assert prom.query_value("sum(bitnet_device_fallbacks_total)", at) == 1
    finally:
        work.finish()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_otlp_from_env_only(receiver: OTLPReceiver, protocol: str) -> None:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    work = Workload(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
            "OTEL_SERVICE_NAME": "otlp-workload",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,team=a%2Cb",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cret",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "5000",
        },
        "--calls",
        "6",
    )
    assert work.metrics_url == "-"  # OTLP only: no HTTP server
    assert receiver.wait_for_metric("bitnet.inference.requests", timeout=60)
    out, _ = work.finish()
    assert "SHUTDOWN ok=True" in out
    transport = "grpc" if protocol == "grpc" else "http"
    assert receiver.latest_value("bitnet.inference.requests", **{"bitnet.outcome": "ok"}) == 6
    points = receiver.metric_points("gen_ai.server.request.duration")
    assert points and points[-1].count == 6 and points[-1].transport == transport
    assert points[-1].resource["service.name"] == "otlp-workload"
    assert points[-1].resource["service.instance.id"]
    assert points[-1].resource["deployment.environment"] == "test"
    assert points[-1].resource["team"] == "a,b"
    requests = receiver.raw_requests("metrics")
    assert requests[-1].headers.get("authorization") == "Bearer s3cret"
    spans = receiver.spans("chat workload-model")
    assert len(spans) == 6
    assert spans[0].attributes["gen_ai.request.model"] == "workload-model"


def test_console_exporters() -> None:
    work = Workload(
        {
            "OTEL_METRICS_EXPORTER": "console",
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRIC_EXPORT_INTERVAL": "100000",
        },
        "--calls",
        "2",
    )
    out, _ = work.finish()
    assert '"name": "chat workload-model"' in out
    assert '"name": "bitnet.inference.requests"' in out


@pytest.mark.parametrize(
    ("sampler", "arg", "spans"),
    [
        ("always_off", None, 0),
        ("traceidratio", "0", 0),
        ("parentbased_traceidratio", "1", 2),
        ("always_on", None, 2),
    ],
)
def test_traces_sampler_is_honoured(sampler: str, arg: str | None, spans: int) -> None:
    env = {
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_TRACES_SAMPLER": sampler,
    }
    if arg is not None:
        env["OTEL_TRACES_SAMPLER_ARG"] = arg
    out, _ = Workload(env, "--calls", "2").finish()
    assert out.count('"name": "chat workload-model"') == spans


def test_sdk_disabled_installs_nothing() -> None:
    work = Workload({"OTEL_SDK_DISABLED": "true"}, "--calls", "2")
    assert work.metrics_url == "-"
    out, _ = work.finish()
    assert "SHUTDOWN ok=True" in out


def _run(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_an_installed_provider_is_kept_and_used() -> None:
    out = _run(
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import bitnet_obs

        reader = InMemoryMetricReader()
        mine = MeterProvider(metric_readers=[reader])
        metrics.set_meter_provider(mine)

        @bitnet_obs.monitored_inference(model="m")
        def f():
            return 3

        t = bitnet_obs.configure(prometheus_port=0)
        assert metrics.get_meter_provider() is mine
        assert t.meter_provider is None
        f()
        names = [m.name for rm in reader.get_metrics_data().resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics]
        assert "bitnet.inference.requests" in names, names
        print("KEPT")
        """
    )
    assert "KEPT" in out
    assert "a MeterProvider is already installed" in out


def test_configure_is_idempotent_and_thread_safe() -> None:
    out = _run(
        """
        import threading
        import bitnet_obs
        results = []
        def go():
            results.append(bitnet_obs.configure(prometheus_port=0))
        threads = [threading.Thread(target=go) for _ in range(8)]
        [t.start() for t in threads]; [t.join() for t in threads]
        assert len({id(r) for r in results}) == 1
        assert bitnet_obs.configure() is results[0]
        assert bitnet_obs.is_configured()
        print("ONE", results[0].meter_provider is not None)
        """
    )
    assert "ONE True" in out


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_shutdown_is_bounded_with_a_dead_collector(protocol: str) -> None:
    port = _dead_port()
    work = Workload(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_METRIC_EXPORT_INTERVAL": "100000",
            # an unbounded shutdown would retry for this long: far beyond the bounds below
            "OTEL_EXPORTER_OTLP_TIMEOUT": "60000",
        },
        "--calls",
        "4",
        "--shutdown-timeout",
        "1.0",
    )
    started = time.monotonic()
    out, err = work.finish(timeout=120)
    elapsed = time.monotonic() - started
    line = next(x for x in out.splitlines() if x.startswith("SHUTDOWN"))
    seconds = float(line.split("seconds=")[1])
    # bounded by its 1 s timeout, not by the exporter's 60 s of retries; the slack is for a
    # busy machine's scheduling, nowhere near what an unbounded shutdown takes
    assert seconds < 1.0 + 4, line
    assert elapsed < 30, f"process took {elapsed:.1f}s to exit"
    assert "ok=False" in line
    assert "shutdown_timeout" in err


def test_configure_raises_config_error_on_malformed_env() -> None:
    with pytest.raises(ConfigError, match="OTEL_METRICS_EXPORTER"):
        bitnet_obs.configure(environ={"OTEL_METRICS_EXPORTER": "jaeger"})
    assert not bitnet_obs.is_configured()


def test_under_an_installed_provider_metrics_says_where_metrics_go() -> None:
    out = _run(
        """
        import logging, urllib.error, urllib.request
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        import bitnet_obs

        logging.basicConfig(level=logging.WARNING)
        metrics.set_meter_provider(MeterProvider())
        t = bitnet_obs.configure(prometheus_port=0)
        for _ in range(3):
            try:
                urllib.request.urlopen(t.metrics_url, timeout=5)
            except urllib.error.HTTPError as e:
                print("STATUS", e.code, e.read().decode().strip())
        assert urllib.request.urlopen(t.health_url, timeout=5).status == 200  # probes still
        bitnet_obs.shutdown(2)
        """
    )
    assert out.count("STATUS 404 bitnet-obs reports through the application's MeterProvider") == 3
    assert "Cannot call collect" not in out


def test_configure_after_shutdown_sets_up_anew() -> None:
    out = _run(
        """
        import urllib.request
        import bitnet_obs

        @bitnet_obs.monitored_inference(model="m")
        def f():
            return [1, 2]

        first = bitnet_obs.configure(prometheus_port=0)
        f()
        assert bitnet_obs.shutdown(2) and not bitnet_obs.is_configured()
        second = bitnet_obs.configure(prometheus_port=0)
        assert second is not first and bitnet_obs.is_configured()
        f()
        text = urllib.request.urlopen(second.metrics_url, timeout=5).read().decode()
        line = next(x for x in text.splitlines()
                    if x.startswith("bitnet_inference_requests_total") and '"ok"' in x)
        print("REQUESTS", line.rsplit(" ", 1)[1])
        bitnet_obs.shutdown(2)
        """
    )
    assert "REQUESTS 2.0" in out  # the running totals go on; the new pipeline reports them


def test_setup_errors_are_config_errors_and_change_nothing() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"OTEL_EXPORTER_PROMETHEUS_PORT={port} is in use"):
            bitnet_obs.configure(prometheus_port=port)
    assert not bitnet_obs.is_configured()
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_PROMETHEUS_HOST='no-such-host\.invalid'"):
        bitnet_obs.configure(prometheus_host="no-such-host.invalid", prometheus_port=0)
    assert not bitnet_obs.is_configured()
    with pytest.raises(ConfigError, match="timeout"):
        bitnet_obs.shutdown(timeout=float("inf"))


def test_a_forked_worker_of_a_prometheus_parent_can_configure_its_own(
    receiver: OTLPReceiver,
) -> None:
    out = _run(
        f"""
        import os, sys
        import bitnet_obs

        @bitnet_obs.monitored_inference(model="m")
        def f():
            return [1]

        bitnet_obs.configure(prometheus_port=0)
        pid = os.fork()
        if pid == 0:
            t = bitnet_obs.configure(
                metrics_exporters="otlp", traces_exporters="none",
                environ={{"OTEL_EXPORTER_OTLP_ENDPOINT": "{receiver.http_endpoint}"}},
            )
            assert t.readers and t.meter_provider is not None, t
            f()
            ok = bitnet_obs.shutdown(5)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("CHILD", os.waitstatus_to_exitcode(status))
        bitnet_obs.shutdown(2)
        """
    )
    assert "CHILD 0" in out
    assert receiver.latest_value("bitnet.inference.requests", **{"bitnet.outcome": "ok"}) == 1
