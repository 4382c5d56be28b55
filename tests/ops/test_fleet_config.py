"""The fleet part of the kit, read and checked by the real tools: the SLO rules against the
workbook's table, every fleet rule against a unit test, the Kubernetes and federation configs
(examples/monitoring/fleet/), and what the live test may change in its copies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bitnet_obs._instruments import DURATION_BUCKETS
from tests._support.prometheus import promtool_check_config
from tests.ops._kit import (
    FLEET_ALERT_RULES,
    FLEET_RECORDING_RULES,
    MONITORING,
    RULE_TESTS,
    alert_rules,
    load_yaml,
    recording_rules,
    rule_files,
)

pytestmark = pytest.mark.prometheus

FLEET = MONITORING / "fleet"
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d")
# The SRE workbook's table (chapter 5): alert -> {(burn rate, long window, short window)}
BURN_ALERTS = {
    "BitNetErrorBudgetFastBurn": {(14.4, "1h", "5m"), (6.0, "6h", "30m")},
    "BitNetErrorBudgetSlowBurn": {(3.0, "1d", "2h"), (1.0, "3d", "6h")},
}


def test_the_slo_error_ratios_cover_every_window_for_both_slos() -> None:
    ratios: dict[str, set[str]] = {}
    for rule in recording_rules(FLEET_RECORDING_RULES):
        match = re.fullmatch(r"job_model_slo:bitnet_slo_errors:ratio_rate(\w+)", rule["record"])
        if match:
            slo = rule.get("labels", {}).get("bitnet_slo", "both")
            ratios.setdefault(match[1], set()).add(slo)
    assert tuple(ratios) == SLO_WINDOWS
    for window, slos in ratios.items():  # each window: one rule per SLO, or one for both
        assert slos in ({"availability", "latency"}, {"both"}), window
    objectives = {
        r["labels"]["bitnet_slo"]: r["expr"]
        for r in recording_rules(FLEET_RECORDING_RULES)
        if r["record"] == "bitnet:slo_objective:ratio"
    }
    assert set(objectives) == {"availability", "latency"}
    for expr in objectives.values():
        objective = float(re.fullmatch(r"vector\(([\d.]+)\)", expr)[1])  # type: ignore[index]
        assert 0.5 <= objective < 1


def test_the_latency_slo_counts_at_one_bucket_bound_of_request_duration() -> None:
    bounds = {
        le
        for rule in recording_rules(FLEET_RECORDING_RULES)
        for le in re.findall(r'le="([^"]+)"', rule["expr"])
    }
    (bound,) = bounds  # one latency bound, wherever it is written
    assert float(bound) in DURATION_BUCKETS
    assert repr(float(bound)) == bound  # as bitnet-obs and the Collector expose it


def test_the_burn_rate_alerts_follow_the_workbook_table() -> None:
    found: dict[str, set[tuple[float, str, str]]] = {}
    for rule in alert_rules(FLEET_ALERT_RULES):
        if rule["alert"] not in BURN_ALERTS:
            continue
        assert "for" not in rule, rule["alert"]  # the short window is the reset, not a `for`
        pairs = re.findall(
            r"ratio_rate(\w+)\s*/ on \(bitnet_slo\) group_left \(\) "
            r"\(1 - bitnet:slo_objective:ratio\) > ([\d.]+)\s*and\s*"
            r"job_model_slo:bitnet_slo_errors:ratio_rate(\w+)\s*/ on \(bitnet_slo\) "
            r"group_left \(\) \(1 - bitnet:slo_objective:ratio\) > ([\d.]+)",
            rule["expr"],
        )
        assert len(pairs) == 2, rule["expr"]
        found[rule["alert"]] = set()
        for long, factor, short, factor_again in pairs:
            assert factor == factor_again
            found[rule["alert"]].add((float(factor), long, short))
    assert found == BURN_ALERTS
    severities = {r["alert"]: r["labels"]["severity"] for r in alert_rules(FLEET_ALERT_RULES)}
    assert severities["BitNetErrorBudgetFastBurn"] == "critical"  # a page
    assert severities["BitNetErrorBudgetSlowBurn"] == "warning"  # a ticket


def test_every_fleet_rule_and_alert_has_a_unit_test() -> None:
    """Every recording rule of bitnet-fleet-recording.yml is evaluated by a promql_expr_test,
    every alert has a firing and a silent case (the latter checked for all alerts by
    test_monitoring_config)."""
    tested: set[str] = set()
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            for case in test.get("promql_expr_test", []):
                tested |= set(re.findall(r"[a-z_]+:[a-z_0-9]+:[a-z_0-9]+", case["expr"]))
    recorded = {r["record"] for r in recording_rules(FLEET_RECORDING_RULES)}
    assert recorded - tested == set(), "fleet recording rules without a promql_expr_test"


def test_the_shipped_fleet_alerts_wait_as_production_needs() -> None:
    """The live test sets these to 0s in its copy; the shipped files keep them."""
    waits = {r["alert"]: r.get("for") for r in alert_rules(FLEET_ALERT_RULES)}
    assert waits == {
        "BitNetErrorBudgetFastBurn": None,
        "BitNetErrorBudgetSlowBurn": None,
        "BitNetFleetCrossValidationFailure": None,  # an exact kernel does not flake
        "BitNetFleetDegenerateOutput": "10m",
        "BitNetFleetLowTokensPerSecond": "10m",
        "BitNetReplicaOutlier": "10m",
    }


def test_the_outlier_alert_names_the_fingerprint_it_joins() -> None:
    (outlier,) = [r for r in alert_rules(FLEET_ALERT_RULES) if r["alert"] == "BitNetReplicaOutlier"]
    fingerprint = ("host_arch", "host_cpu_model_name", "bitnet_cpu_simd", "bitnet_cpu_features")
    assert f"group_left ({', '.join(fingerprint)})" in outlier["expr"]
    for label in (*fingerprint, "instance", "bitnet_outlier_signal"):
        assert f"$labels.{label}" in outlier["annotations"]["description"], label
    assert set(re.findall(r'"bitnet_outlier_signal", "(\w+)"', outlier["expr"])) == {
        "throughput",
        "crossval",
        "degenerate_output",
    }


# ------------------------------------------------------------- Kubernetes and federation


def test_the_kubernetes_config_loads_the_same_rules_and_names_replicas_by_pod(
    promtool_bin: str, tmp_path: Path
) -> None:
    """Debian's Prometheus is built without Kubernetes discovery, so promtool checks the file
    with static targets in place of its kubernetes_sd_configs block, which is read here."""
    config = load_yaml(FLEET / "prometheus-kubernetes.yml")
    # the rule files of bitnet-obs services; llama-server's go with its own jobs
    # (llama-server/prometheus-kubernetes.yml)
    served = [p for p in rule_files() if not p.name.startswith("bitnet-llamacpp-")]
    assert [str((FLEET / p).resolve()) for p in config["rule_files"]] == [
        str(p.resolve()) for p in served
    ]
    assert config["global"]["external_labels"]["cluster"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "bitnet"  # what BitNetServiceDown and the fleet rules read
    (discovery,) = job.pop("kubernetes_sd_configs")
    assert discovery["role"] == "pod"
    relabel = {r.get("target_label"): r for r in job["relabel_configs"]}
    assert relabel["instance"]["source_labels"] == ["__meta_kubernetes_pod_name"]
    keeps = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert {r["source_labels"][0] for r in keeps} >= {
        "__meta_kubernetes_pod_label_app_kubernetes_io_name",
        "__meta_kubernetes_pod_container_port_name",
    }
    job["static_configs"] = [{"targets": ["10.0.0.11:9464"]}]
    config["rule_files"] = [str((FLEET / p).resolve()) for p in config["rule_files"]]
    path = tmp_path / "prometheus-kubernetes-static.yml"
    path.write_text(yaml.safe_dump(config))
    code, output = promtool_check_config(path, binary=promtool_bin)
    assert code == 0, output
    assert f"{len(served)} rule files found" in output


def test_the_federation_config_pulls_every_job_level_series(promtool_bin: str) -> None:
    code, output = promtool_check_config(FLEET / "prometheus-global.yml", binary=promtool_bin)
    assert code == 0, output
    (job,) = load_yaml(FLEET / "prometheus-global.yml")["scrape_configs"]
    assert job["metrics_path"] == "/federate" and job["honor_labels"] is True
    patterns = [
        re.fullmatch(r'\{__name__=~"(.+)"\}', m)
        for m in job["params"]["match[]"]
        if "__name__" in m
    ]
    regexes = [re.compile(p[1]) for p in patterns if p]
    job_level = {
        r["record"]
        for r in recording_rules(FLEET_RECORDING_RULES)
        if r["record"].startswith(("job_model", "bitnet:"))
    }
    missed = {name for name in job_level if not any(rx.fullmatch(name) for rx in regexes)}
    assert missed == set()
    per_replica = {r["record"] for r in recording_rules() if r["record"].startswith("instance")}
    assert not {name for name in per_replica if any(rx.fullmatch(name) for rx in regexes)}
