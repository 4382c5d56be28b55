"""The monitoring kit's files, checked by the real tools (promtool, amtool) and by reading them:
rules and their unit tests, Alertmanager routing, the collector pipeline, the compose file, the
Grafana dashboard and its provisioning."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from typing import Any

import pytest

from tests._support.prometheus import (
    promtool_check_config,
    promtool_check_rules,
    promtool_test_rules,
)
from tests._support.tools import find_tool
from tests.ops._kit import (
    DASHBOARD,
    LLAMA_SERVER_ROW,
    LLAMA_SERVER_SERIES,
    LLAMACPP_ALERT_RULES,
    LLAMACPP_RECORDING_RULES,
    MONITORING,
    OPERATIONS_DOC,
    RULE_TESTS,
    SEVERITIES,
    alert_rules,
    dashboard,
    exposed_labels,
    exposed_names,
    label_names,
    load_yaml,
    metric_names,
    panel_queries,
    panels_by_row,
    recording_rules,
    rule_files,
)

pytestmark = pytest.mark.prometheus

# ---------------------------------------------------------------------- Prometheus and rules


def test_promtool_check_config(promtool_bin: str) -> None:
    code, output = promtool_check_config(MONITORING / "prometheus.yml", binary=promtool_bin)
    assert code == 0, output
    assert f"{len(rule_files())} rule files found" in output
    assert set(rule_files()) == set((MONITORING / "rules").glob("*.yml")), "a rule file not loaded"


def test_promtool_check_rules(promtool_bin: str) -> None:
    code, output = promtool_check_rules(*rule_files(), binary=promtool_bin)
    assert code == 0, output


def test_promtool_test_rules(promtool_bin: str) -> None:
    assert len(RULE_TESTS) >= 5
    code, output = promtool_test_rules(*RULE_TESTS, binary=promtool_bin)
    assert code == 0, output
    assert output.count("SUCCESS") == len(RULE_TESTS), output


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    loaded = [f"../rules/{path.name}" for path in rule_files()]
    for path in RULE_TESTS:
        doc = load_yaml(path)
        # shipped rule files only, in the order Prometheus loads them
        assert doc["rule_files"] == [f for f in loaded if f in doc["rule_files"]], path.name
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    assert (firing | silent) - names == set(), "tests for alerts that do not exist"


def test_every_alert_has_severity_summary_and_a_runbook_section() -> None:
    lines = OPERATIONS_DOC.read_text(encoding="utf-8").splitlines()
    anchors = {_anchor(line) for line in lines if line.startswith("### ")}
    names = set()
    for rule in alert_rules():
        name = rule["alert"]
        assert name not in names, f"duplicate alert {name}"
        names.add(name)
        assert re.fullmatch(r"BitNet[A-Za-z0-9]+", name)
        assert rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert notes["runbook_url"] == f"docs/operations.md#{name.lower()}"
        assert name.lower() in anchors, f"docs/operations.md has no '### {name}' section"
    assert {r["labels"]["severity"] for r in alert_rules()} == set(SEVERITIES)


def test_the_alerts_the_issue_asks_for_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= {
        "BitNetServiceDown",
        "BitNetHighErrorRate",
        "BitNetHighLatencyP95",
        "BitNetLowTokensPerSecond",
        "BitNetTTFTObjectiveMissed",
        "BitNetDeviceFallbackRate",
        "BitNetQuantKernelDrift",
        "BitNetQuantAccuracyBelowBaseline",
        "BitNetGPUSaturated",
        "BitNetGPUMemorySaturated",
        "BitNetHostCPUSaturated",
        "BitNetHostMemorySaturated",
        "BitNetTelemetryExportFailing",
        "BitNetSLAObjectiveMissed",
        # serving lifecycle (issue 8)
        "BitNetModelLoadFailure",
        "BitNetQueueSaturated",
        "BitNetQueueWaitHigh",
        "BitNetCacheHitRateCollapsed",
        # correctness (issue 14)
        "BitNetCrossValidationFailure",
        "BitNetCrossValidationPerformanceRegression",
        "BitNetDegenerateOutput",
        # llama-server watched from outside (issue 20)
        "BitNetLlamaServerDown",
        "BitNetCanarySidecarDown",
        "BitNetLlamaCppKVCacheSaturated",
        "BitNetLlamaCppRequestsDeferred",
    }


def test_rules_and_dashboard_use_only_real_metric_and_label_names() -> None:
    """Every name is in the catalogue (docs/metrics.md), a recording rule, or Prometheus' own."""
    recorded = {r["record"] for r in recording_rules()}
    known = exposed_names() | recorded | {"up", "ALERTS", "target_info"} | set(LLAMA_SERVER_SERIES)
    labels = exposed_labels() | {"alertname", "alertstate", "severity"}
    labels |= {k for r in recording_rules() for k in r.get("labels", {})}
    exprs = [(r.get("record") or r["alert"], r["expr"]) for r in recording_rules() + alert_rules()]
    labels |= {made for _, expr in exprs for made in _LABEL_REPLACE_TARGET.findall(expr)}
    exprs += panel_queries()
    for where, expr in exprs:
        assert metric_names(expr) or expr.startswith("vector("), f"{where}: reads no metric"
        assert metric_names(expr) <= known, f"{where}: unknown {metric_names(expr) - known}"
        assert label_names(expr) <= labels, f"{where}: unknown label {label_names(expr) - labels}"
    used = {m for _, expr in exprs for m in metric_names(expr)}
    assert recorded <= used, f"recording rules nobody reads: {recorded - used}"
    assert set(LLAMA_SERVER_SERIES) <= used, "llama-server series listed but never read"


def test_llama_server_rules_and_row_read_only_llama_server_and_its_canary() -> None:
    """The llama-server files and row read llama-server (llamacpp:* series, their own recording
    rules, `up` of its job) and its canary sidecar (job "bitnet-canary") only; the other files
    read no llamacpp:* series, so they work without a llama-server."""
    own = {r["record"] for r in recording_rules(LLAMACPP_RECORDING_RULES)}

    def about_llama_server(expr: str) -> bool:
        names = metric_names(expr)
        jobs = re.findall(r'job="([^"]*)"', expr)
        return (bool(jobs) and set(jobs) <= {"llama-server", "bitnet-canary"}) or (
            bool(names) and all(n.startswith("llamacpp:") or n in own for n in names)
        )

    mine = recording_rules(LLAMACPP_RECORDING_RULES) + alert_rules(LLAMACPP_ALERT_RULES)
    for rule in mine:
        assert about_llama_server(rule["expr"]), rule
    for rule in recording_rules() + alert_rules():
        if rule not in mine:
            assert not any(
                n.startswith("llamacpp:") or n in own for n in metric_names(rule["expr"])
            )
    for panel in panels_by_row()[LLAMA_SERVER_ROW]:
        for target in panel["targets"]:
            assert about_llama_server(target["expr"]), panel["title"]


def test_prometheus_config_scrapes_the_demo_and_the_collector() -> None:
    config = load_yaml(MONITORING / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["bitnet"]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    assert 'up{job="bitnet"}' in next(
        r["expr"] for r in alert_rules() if r["alert"] == "BitNetServiceDown"
    )
    # llama-server's own --metrics (its default port) and the canary sidecar beside it
    assert jobs["llama-server"]["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
    assert jobs["bitnet-canary"]["static_configs"][0]["targets"] == ["127.0.0.1:9465"]
    for alert, job in (("BitNetLlamaServerDown", "llama-server"),
                       ("BitNetCanarySidecarDown", "bitnet-canary")):  # fmt: skip
        assert f'up{{job="{job}"}}' in next(r["expr"] for r in alert_rules() if r["alert"] == alert)
    assert jobs["otel-collector"]["honor_labels"] is True
    collector = load_yaml(MONITORING / "otel-collector.yml")
    assert jobs["otel-collector"]["static_configs"][0]["targets"] == [
        collector["exporters"]["prometheus"]["endpoint"]
    ]
    for path in config["rule_files"]:
        assert (MONITORING / path).is_file(), path


# ------------------------------------------------------------------------------ Alertmanager


@pytest.fixture(scope="module")
def amtool() -> str:
    return find_tool("amtool")


def test_amtool_check_config(amtool: str) -> None:
    proc = _run(amtool, "check-config", str(MONITORING / "alertmanager.yml"))
    assert proc.returncode == 0, proc.stdout
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=BitNetServiceDown"], "critical"),
        (["severity=warning", "alertname=BitNetHighErrorRate"], "warning"),
        (["severity=info", "alertname=BitNetGPUSaturated"], "info"),
        (["alertname=SomethingElse"], "default"),
    ],
)
def test_alertmanager_routes_by_severity(amtool: str, labels: list[str], receiver: str) -> None:
    config = str(MONITORING / "alertmanager.yml")
    proc = _run(amtool, "config", "routes", "test", f"--config.file={config}", *labels)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == receiver  # after a warning about flags


def test_every_alert_severity_has_a_route() -> None:
    config = load_yaml(MONITORING / "alertmanager.yml")
    receivers = {r["name"] for r in config["receivers"]}
    routed = {route["matchers"][0]: route["receiver"] for route in config["route"]["routes"]}
    for severity in SEVERITIES:
        assert routed[f'severity="{severity}"'] in receivers
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook["url"].startswith("http://127.0.0.1:"), hook


# ---------------------------------------------------------------------------- the collector


def test_collector_pipelines_reference_defined_components() -> None:
    config = load_yaml(MONITORING / "otel-collector.yml")
    service = config["service"]
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in service["pipelines"].items():
        assert name.split("/")[0] in ("metrics", "traces", "logs"), name
        assert pipeline["receivers"] and pipeline["exporters"], name
        for kind in used:
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{name} uses undefined {kind[:-1]} {component}"
                used[kind].add(component)
    for kind, names in used.items():
        assert set(config[kind]) == names, f"{kind} defined but in no pipeline"
    assert set(service.get("extensions", [])) == set(config.get("extensions", {}))
    metrics = service["pipelines"]["metrics"]
    assert "otlp" in metrics["receivers"]
    assert {"prometheus", "otlp"} <= set(metrics["exporters"])
    assert metrics["processors"][0] == "memory_limiter"  # the collector's own advice
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}


def test_collector_listens_on_loopback_only() -> None:
    config = load_yaml(MONITORING / "otel-collector.yml")
    endpoints = [p["endpoint"] for p in config["receivers"]["otlp"]["protocols"].values()]
    endpoints += [config["exporters"]["prometheus"]["endpoint"]]
    endpoints += [e["endpoint"] for e in config["extensions"].values()]
    assert endpoints and all(e.startswith("127.0.0.1:") for e in endpoints), endpoints
    ports = {e.rsplit(":", 1)[1] for e in endpoints[:2]}
    assert ports == {"4317", "4318"}  # the OTLP defaults bitnet-obs' exporters use


# ---------------------------------------------------------------------------- docker compose


def test_compose_file_wires_the_stack_and_mounts_only_existing_files() -> None:
    compose = load_yaml(MONITORING / "docker-compose.yml")
    services: dict[str, Any] = compose["services"]
    assert {"prometheus", "alertmanager", "grafana", "otel-collector"} <= set(services)
    named_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image"
        assert service.get("network_mode") == "host", name
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source in named_volumes:
                continue
            assert (MONITORING / source).exists(), f"{name} mounts missing {source}"
            assert target.startswith("/"), volume
    mounts = {
        name: {v.split(":")[1]: v.split(":")[0] for v in s.get("volumes", [])}
        for name, s in services.items()
    }
    # each program reads the config file that is mounted where its command says
    for name, flag in [
        ("prometheus", "--config.file="),
        ("alertmanager", "--config.file="),
        ("otel-collector", "--config="),
    ]:
        path = next(a for a in services[name]["command"] if a.startswith(flag))[len(flag) :]
        source = _mounted_source(mounts[name], path)
        assert source is not None, f"{name}: {path} is not mounted"
        assert (MONITORING / source).is_file(), source
    assert mounts["prometheus"]["/etc/prometheus/rules"] == "./rules"
    assert "--cluster.listen-address=" in services["alertmanager"]["command"]
    grafana = mounts["grafana"]
    provisioning = MONITORING / grafana["/etc/grafana/provisioning"]
    dashboards_dir = grafana["/var/lib/grafana/dashboards"]
    provider = load_yaml(provisioning / "dashboards" / "bitnet-obs.yml")["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert (MONITORING / dashboards_dir / DASHBOARD.name).is_file()
    datasource = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://127.0.0.1:9090"
    assert "--web.listen-address=127.0.0.1:9090" in services["prometheus"]["command"]


def _mounted_source(mounts: dict[str, str], path: str) -> str | None:
    for target, source in mounts.items():
        if path == target:
            return source
        if path.startswith(target.rstrip("/") + "/"):
            return source + path[len(target) :]
    return None


# ---------------------------------------------------------------------------------- Grafana


def test_dashboard_json_is_generated_from_build_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    # imported as `python build_dashboard.py` runs it: its directory first on the path, for
    # the dashboard_panels package beside it
    monkeypatch.syspath_prepend(str(MONITORING / "grafana"))
    try:
        rendered = importlib.import_module("build_dashboard").render()
    finally:  # a later import reads the files again
        for name in [m for m in sys.modules if m.partition(".")[0] in _GENERATOR]:
            del sys.modules[name]
    assert rendered == DASHBOARD.read_text(encoding="utf-8"), (
        "run: python examples/monitoring/grafana/build_dashboard.py"
    )


_GENERATOR = ("build_dashboard", "dashboard_panels")


def test_dashboard_layout_rows_and_variables() -> None:
    board = dashboard()
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == [
        "Overview",
        "Fleet",
        "Serving lifecycle",
        "Quantization",
        "Devices",
        "Health and SLA",
        "Correctness",
        LLAMA_SERVER_ROW,
    ]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "model", "instance", "server"}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            leftover = re.findall(r"\$\{?(\w+)", target["expr"])
            assert set(leftover) <= {"model", "instance", "server", "__rate_interval"}, target[
                "expr"
            ]
    titles = {p["title"] for p in board["panels"]}
    assert {
        "Requests by outcome",
        "Error ratio",
        "Request latency",
        "Time to first token",
        "Time per output token",
        "Tokens/s (service)",
        "Weight accuracy vs FP32, by format",
        "Runtime accuracy by format and reference",
        "Kernel fidelity (vs quantized reference)",
        "CPU busy",
        "Memory",
        "GPU utilization",
        "Device fallbacks",
        "Health checks",
        "SLA compliance by objective",
        "Model loads by outcome",
        "Model load duration",
        "Models loaded",
        "Model size",
        "Queue depth by priority",
        "Queue wait",
        "Batch size",
        "Batch formation time",
        "Cache hit ratio",
        "Cache usage",
        "Degenerate output ratio",
        "Degenerate outputs by reason",
        "Cross-validation",
        "Golden token agreement",
        "Golden-case tokens/s",
        "Candidate / reference tokens/s",
        "Runtime",
        "llama-server tokens/s",
        "llama-server speed",
        "Requests processing and deferred",
        "KV-cache usage",
        "Canary (sidecar)",
    } <= titles


# label_replace(v, "dst", "replacement", "src", "regex"): the label a rule makes
_LABEL_REPLACE_TARGET = re.compile(r'"(\w+)",\s*"[^"]*",\s*"[^"]*",\s*"[^"]*"\s*\)')


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False
    )
