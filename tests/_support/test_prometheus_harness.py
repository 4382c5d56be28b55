"""Self-tests of the real-Prometheus harness (tests/_support/prometheus.py)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests._support.prometheus import (
    MetricsEndpoint,
    PrometheusAPIError,
    PrometheusError,
    PrometheusFactory,
    PrometheusServer,
    PrometheusTimeout,
    ScrapeJob,
    promtool_check_config,
    promtool_check_metrics,
)
from tests._support.tools import find_tool

GOOD_EXPOSITION = """\
# HELP demo_requests_total Demo requests served.
# TYPE demo_requests_total counter
demo_requests_total{model="m"} 3
"""


@pytest.mark.slow
@pytest.mark.prometheus
def test_real_prometheus_scrapes_static_endpoint(prometheus_factory: PrometheusFactory) -> None:
    with MetricsEndpoint(GOOD_EXPOSITION) as endpoint:
        t0 = time.monotonic()
        prom = prometheus_factory([endpoint.address])
        ready_after = time.monotonic() - t0

        result = prom.wait_for('demo_requests_total{model="m"}', timeout=20)
        seen_after = time.monotonic() - t0

        assert len(result) == 1
        labels = result[0]["metric"]
        assert labels["__name__"] == "demo_requests_total"
        assert labels["model"] == "m"
        assert labels["job"] == "test"
        assert labels["instance"] == endpoint.address
        assert float(result[0]["value"][1]) == 3.0
        at, _ = prom.query_when('demo_requests_total{model="m"}')
        assert prom.query_value('sum(demo_requests_total{model="m"})', at) == 3.0
        assert endpoint.scrape_count >= 1

        targets = prom.wait_for_targets(health="up")  # a scrape may time out on a busy box
        assert [t["health"] for t in targets] == ["up"]
        assert targets[0]["lastError"] == ""
        assert prom.metadata("demo_requests_total")["demo_requests_total"][0]["type"] == "counter"
        assert prom.alerts() == []

        now = time.time()
        ranged = prom.query_range("demo_requests_total", now - 30, now, "1s")
        assert ranged
        assert ranged[0]["values"]
        print(f"prometheus ready after {ready_after:.2f}s, first sample after {seen_after:.2f}s")

    prom.stop()
    assert not prom.running
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", prom.port or 0)) != 0


@pytest.mark.prometheus
def test_bad_promql_raises_clear_error(prometheus_factory: PrometheusFactory) -> None:
    prom = prometheus_factory()
    with pytest.raises(PrometheusAPIError, match="parse error") as excinfo:
        prom.query("sum(demo_requests_total")
    assert excinfo.value.error_type == "bad_data"
    assert excinfo.value.http_status == 400
    assert "sum(demo_requests_total" in str(excinfo.value)
    # wait_for must not spin until its timeout on an error that cannot go away
    t0 = time.monotonic()
    with pytest.raises(PrometheusAPIError, match="parse error"):
        prom.wait_for("rate(x[5m]", timeout=20)
    with pytest.raises(PrometheusAPIError, match="parse error"):
        prom.query_when("rate(x[5m]", timeout=20)
    assert time.monotonic() - t0 < 20  # not one of the two waited its timeout out


@pytest.mark.slow
@pytest.mark.prometheus
def test_query_when_answers_at_a_settled_instant(prometheus_factory: PrometheusFactory) -> None:
    """The instant is one Prometheus has stored everything up to: what a query says there does
    not change as later scrapes come in, and it is never in the future."""
    with MetricsEndpoint(GOOD_EXPOSITION) as endpoint:
        prom = prometheus_factory([endpoint.address])
        at, result = prom.query_when(
            'demo_requests_total{model="m"}', lambda r: bool(r) and r[0]["value"][1] == "3"
        )
        assert at <= time.time()
        assert float(result[0]["value"][0]) == at  # evaluated at that instant
        endpoint.text = GOOD_EXPOSITION.replace("} 3", "} 5")  # the counter moves on
        later, _ = prom.query_when(
            'demo_requests_total{model="m"}', lambda r: bool(r) and r[0]["value"][1] == "5"
        )
        assert at < later <= prom.settled_instant()  # instants move forward
        assert prom.query_value('demo_requests_total{model="m"}', at) == 3  # the past stays
        with pytest.raises(PrometheusTimeout, match="not met at a settled instant"):
            prom.query_when('demo_requests_total{model="never"}', timeout=3)


@pytest.mark.prometheus
def test_startup_failure_surfaces_prometheus_log(prometheus_bin: str, tmp_path: Path) -> None:
    server = PrometheusServer(
        binary=prometheus_bin,
        workdir=tmp_path,
        extra_config={"scrape_configs": [{"job_name": "x", "scrape_interval": "soon"}]},
    )
    with pytest.raises(PrometheusError, match="exited with code") as excinfo:
        server.start(timeout=20)
    assert "soon" in str(excinfo.value)  # the config error text comes from Prometheus' log
    server.stop()
    assert not server.running


@pytest.mark.prometheus
def test_generated_config_is_valid(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n- name: g\n  rules:\n  - alert: Always\n    expr: vector(1)\n",
        encoding="utf-8",
    )
    server = PrometheusServer(
        ["127.0.0.1:9"],
        jobs=[
            ScrapeJob(
                ["127.0.0.1:10"],
                name="secured",
                metrics_path="/m",
                basic_auth=("u", "p"),
                params={"format": ["prometheus"]},
                labels={"team": "obs"},
            )
        ],
        rule_files=[rules],
        alertmanagers=["127.0.0.1:11"],
        binary=find_tool("prometheus"),
        workdir=tmp_path / "prom",
    )
    cfg = server.config()
    assert cfg["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["test", "secured"]
    server.config_path.parent.mkdir(parents=True)
    server.config_path.write_text(json.dumps(cfg), encoding="utf-8")
    code, output = promtool_check_config(server.config_path)
    assert code == 0, output


@pytest.mark.prometheus
def test_promtool_check_metrics_accepts_good_exposition() -> None:
    code, output = promtool_check_metrics(GOOD_EXPOSITION)
    assert code == 0, output


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "# HELP demo_requests Requests.\n# TYPE demo_requests counter\ndemo_requests 3\n",
            '"_total" suffix',
            id="counter-without-total",
        ),
        pytest.param(
            "# TYPE demo_requests_total counter\ndemo_requests_total 3\n",
            "no help text",
            id="missing-help",
        ),
        pytest.param("demo_requests_total{model= 3\n", "parsing error", id="unparsable"),
    ],
)
def test_promtool_check_metrics_reports_problems(text: str, expected: str) -> None:
    code, output = promtool_check_metrics(text)
    assert code != 0
    assert expected in output


def test_find_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found"):
        find_tool("bitnet-obs-no-such-tool", "bitnet-obs-no-such-alternative")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install"):
        find_tool("bitnet-obs-no-such-tool")
