"""The llama-server part of the kit against live data: a real llama-server (``--metrics``) on the
fixture's TQ2_0 file, under a little traffic, its canary sidecar (``bitnet-obs canary``), and a
real Prometheus scraping both as prometheus.yml names them (jobs ``llama-server`` and
``bitnet-canary``) with every rule file loaded.

* the series: every ``llamacpp:*`` series the kit reads exists on this llama.cpp, or does not,
  exactly as ``tests/ops/_kit.LLAMA_SERVER_SERIES`` (and docs/operations.md) say;
* the dashboard's llama-server row: every panel's PromQL, with the template variables
  substituted as Grafana would, parses and returns data -- except *KV-cache usage*, whose series
  this llama.cpp no longer exports (the panel is for bitnet.cpp's older server);
* the recording rules against plain queries of the raw counters at one instant;
* the alerts: silent while all is well; BitNetLlamaServerDown fires when the server is killed
  (its ``for`` set to 0s, the test's only change to the rules).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._support.llama_server import LlamaServer, Sidecar
from tests._support.processes import OPENER
from tests._support.prometheus import PrometheusServer, ScrapeJob
from tests.ops._kit import (
    LLAMA_SERVER_ROW,
    LLAMA_SERVER_SERIES,
    MONITORING,
    dashboard,
    load_yaml,
    panels_by_row,
    recording_rules,
    rule_files,
)
from tests.ops._live import RATE_INTERVAL, check_panels, regex_value

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

DOWN_ALERT = "BitNetLlamaServerDown"
NO_DATA_HERE = {
    "KV-cache usage": "llamacpp:kv_cache_usage_ratio left llama.cpp in May 2025 (#13660); "
    "bitnet.cpp's older llama-server exports it",
}
TRAFFIC_S = 600.0  # the traffic thread's bound: it stops by itself


@dataclass
class Stack:
    prom: PrometheusServer
    server: LlamaServer
    sidecar: Sidecar


def _traffic(url: str, stop: threading.Event) -> None:
    """Greedy completions one after another (one slot busy, tokens counted), bounded in time."""
    deadline = time.monotonic() + TRAFFIC_S
    body = json.dumps({"prompt": [1, 2, 3, 4], "n_predict": 16, "temperature": 0}).encode()
    while not stop.is_set() and time.monotonic() < deadline:
        request = urllib.request.Request(
            f"{url}/completion", data=body, headers={"Content-Type": "application/json"}
        )
        with contextlib.suppress(OSError), OPENER.open(request, timeout=30) as response:
            response.read()
        stop.wait(0.05)


def _rules_for_e2e(workdir: Path) -> list[Path]:
    """Every rule file, with BitNetLlamaServerDown's `for` at 0s."""
    out = []
    for path in rule_files():
        rules = load_yaml(path)
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == DOWN_ALERT:
                    rule["for"] = "0s"
        copy = workdir / path.name
        copy.write_text(yaml.safe_dump(rules, sort_keys=False))
        out.append(copy)
    return out


@pytest.fixture(scope="module")
def stack(
    llama_engine: Any,
    tiny_bitnet: Any,
    tmp_path_factory: pytest.TempPathFactory,
    prometheus_bin: str,
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("llama-stack")
    jobs = {
        job["job_name"]: job for job in load_yaml(MONITORING / "prometheus.yml")["scrape_configs"]
    }
    assert {"llama-server", "bitnet-canary"} <= set(jobs)
    with contextlib.ExitStack() as cleanup:
        server = LlamaServer(
            llama_engine, tiny_bitnet.tq2_0, workdir=workdir / "server", parallel=2
        ).start()
        cleanup.callback(server.stop)
        stop = threading.Event()
        traffic = threading.Thread(target=_traffic, args=(server.url, stop), daemon=True)
        traffic.start()
        cleanup.callback(traffic.join, 60)
        cleanup.callback(stop.set)
        sidecar = Sidecar(server.url, tiny_bitnet.golden_llama, workdir, "--interval", "2")
        cleanup.callback(sidecar.stop)
        sidecar.wait_for("/health/ready", lambda code, _: code == 200)
        prom = PrometheusServer(
            jobs=[
                ScrapeJob([server.address], name="llama-server"),
                ScrapeJob([f"127.0.0.1:{sidecar.port}"], name="bitnet-canary"),
            ],
            rule_files=_rules_for_e2e(workdir),
            workdir=workdir / "prometheus",
            binary=prometheus_bin,
        )
        cleanup.callback(prom.stop)
        prom.start()
        yield Stack(prom, server, sidecar)


def test_the_series_this_llama_cpp_exports(stack: Stack) -> None:
    status, body = stack.server.get("/metrics")
    assert status == 200
    exported = {
        line.split()[0].split("{")[0]
        for line in body.decode().splitlines()
        if line.startswith("llamacpp:")
    }
    for name, present in LLAMA_SERVER_SERIES.items():
        assert (name in exported) == present, f"{name}: exported={name in exported}"
    # and what Prometheus stored under the job prometheus.yml gives it
    (processing,) = stack.prom.wait_for("llamacpp:requests_processing", timeout=60)
    assert processing["metric"]["job"] == "llama-server"
    assert processing["metric"]["instance"] == stack.server.address


def test_every_llama_server_panel_returns_data(stack: Stack) -> None:
    prom = stack.prom
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "server"]
    selector, label = re.fullmatch(
        r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"]
    ).groups()  # type: ignore[union-attr]
    prom.wait_for(f'{selector}{{{label}="{stack.server.address}"}}', timeout=60)
    panels = panels_by_row()[LLAMA_SERVER_ROW]
    assert set(NO_DATA_HERE) <= {p["title"] for p in panels}
    server = regex_value(stack.server.address)
    sidecar = regex_value(f"127.0.0.1:{stack.sidecar.port}")

    def substitute(expr: str) -> str:
        return (
            expr.replace("$__rate_interval", RATE_INTERVAL)
            .replace("$server", server)
            .replace("$instance", sidecar)
        )

    found = check_panels(prom, panels, substitute, 120, NO_DATA_HERE)
    assert not found.excused_with_data, f"has data now: {found.excused_with_data}"
    assert not found.without_data, "panels without data:\n" + "\n".join(found.without_data)
    assert found.checked >= 10


def _rule(name: str) -> str:
    (rule,) = [r for r in recording_rules() if r.get("record") == name]
    expr: str = rule["expr"]
    return expr


def _positive(result: list[dict[str, Any]]) -> bool:
    return len(result) == 1 and float(result[0]["value"][1]) > 0


@pytest.mark.parametrize(
    ("name", "plain"),
    [
        (
            "instance:llamacpp_tokens_predicted:rate5m",
            "sum(rate(llamacpp:tokens_predicted_total[5m]))",
        ),
        ("instance:llamacpp_prompt_tokens:rate5m", "sum(rate(llamacpp:prompt_tokens_total[5m]))"),
        (
            "instance:llamacpp_generation_speed:ratio_rate5m",
            "sum(rate(llamacpp:tokens_predicted_total[5m]))"
            " / sum(rate(llamacpp:tokens_predicted_seconds_total[5m]))",
        ),
        (
            "instance:llamacpp_prompt_speed:ratio_rate5m",
            "sum(rate(llamacpp:prompt_tokens_total[5m]))"
            " / sum(rate(llamacpp:prompt_seconds_total[5m]))",
        ),
    ],
)
def test_recording_rules_agree_with_the_raw_counters(stack: Stack, name: str, plain: str) -> None:
    prom = stack.prom
    at, (by_hand,) = prom.query_when(plain, _positive, timeout=90)
    (by_rule,) = prom.query(_rule(name), at)
    assert float(by_rule["value"][1]) == pytest.approx(float(by_hand["value"][1]), rel=1e-12)
    (recorded,) = prom.wait_for(name, timeout=60)
    assert recorded["metric"] == {
        "__name__": name,
        "job": "llama-server",
        "instance": stack.server.address,
    }


def test_alerts_are_silent_while_all_is_well(stack: Stack) -> None:
    prom = stack.prom
    (canary,) = prom.wait_for('bitnet_crossval_passing{job="bitnet-canary"}', timeout=60)
    assert float(canary["value"][1]) == 1
    (deferred,) = prom.wait_for("instance:llamacpp_requests_deferred:min5m", timeout=60)
    assert float(deferred["value"][1]) == 0  # two slots, one client: nothing waits
    firing = {a["labels"]["alertname"] for a in prom.alerts()}
    assert not firing & {
        DOWN_ALERT,
        "BitNetCanarySidecarDown",
        "BitNetLlamaCppRequestsDeferred",
        "BitNetLlamaCppKVCacheSaturated",
        "BitNetCrossValidationFailure",
    }, firing


def test_a_killed_server_fires_its_alert_and_fails_its_canary(stack: Stack) -> None:
    """Last in the module: the server does not come back."""
    stack.server.kill()
    deadline = time.monotonic() + 90
    alert: dict[str, Any] | None = None
    while alert is None and time.monotonic() < deadline:
        alert = next(
            (a for a in stack.prom.alerts()
             if a["labels"]["alertname"] == DOWN_ALERT and a["state"] == "firing"),
            None,
        )  # fmt: skip
        time.sleep(0.5)
    assert alert is not None, stack.prom.alerts()
    assert alert["labels"] == {
        "alertname": DOWN_ALERT,
        "severity": "critical",
        "job": "llama-server",
        "instance": stack.server.address,
    }
    assert alert["annotations"]["runbook_url"] == "docs/operations.md#bitnetllamaserverdown"
    body = stack.sidecar.wait_for(
        "/health/ready", lambda code, text: code == 503 and "refused" in text
    )
    assert json.loads(body)["reasons"] == [
        f"canary: case 0: {stack.server.url}/completion: connection refused"
    ]
    (passing,) = stack.prom.wait_for(
        'bitnet_crossval_passing{job="bitnet-canary"} == 0', timeout=60
    )
    assert passing["metric"]["instance"] == f"127.0.0.1:{stack.sidecar.port}"
