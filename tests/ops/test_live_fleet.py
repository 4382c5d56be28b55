"""A fleet against the kit, live: four replicas of the demo, each its own process with its own
``service.instance.id``, scraped by one real Prometheus that loads every rule file of
prometheus.yml, and a real Alertmanager with our routing.

* ``replica-1`` and ``replica-2`` are healthy; ``replica-3`` breaks its I2_S kernel
  (``--inject-fault constant``: every output "!!!!") a second after its canary's first pass;
  ``replica-4`` serves with its kernel 8x slower (``--slow-kernel 8``). All four run on this one
  machine, so they share its runtime fingerprint: one ISA class.
* BitNetReplicaOutlier must fire for exactly replica-3 and replica-4, each named with its
  fingerprint, and reach Alertmanager's ``warning`` receiver; no fleet alert (fleet-wide
  correctness, fleet tokens/s, error-budget burn) may fire or even be pending.
* The fleet's summed bucket rates and quantiles (the rules' expressions, at one settled instant)
  must equal those computed here, in Python, from the raw bucket rates of all four replicas.
* Every panel of the dashboard's Fleet row must show data.

The test's copies of the rule files change only what a short test needs: ``for:`` of the fleet
and outlier alerts set to 0s, and the availability objective set to 95%, because the demo fails
2% of its requests on purpose (empty prompts) -- against the shipped 99% that is a real burn
of 2x, and the ticket (1x over 3 d and 6 h, where a young Prometheus holds minutes) would
rightly fire.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._support.processes import wait_ready
from tests._support.prometheus import PrometheusServer, ScrapeJob
from tests.ops._kit import (
    ALERT_RULES,
    FLEET_ALERT_RULES,
    FLEET_RECORDING_RULES,
    RECORDING_RULES,
    load_yaml,
    panels_by_row,
    recording_rules,
)
from tests.ops._live import (
    Alertmanager,
    Webhook,
    check_panels,
    grafana_substitute,
    regex_value,
    start_demo,
)

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

MODEL = "bitnet-demo-tiny"
OUTLIER = "BitNetReplicaOutlier"
FLEET_ALERTS = {
    "BitNetErrorBudgetFastBurn",
    "BitNetErrorBudgetSlowBurn",
    "BitNetFleetCrossValidationFailure",
    "BitNetFleetDegenerateOutput",
    "BitNetFleetLowTokensPerSecond",
}
REPLICAS = {  # service.instance.id -> the demo's extra arguments
    "replica-1": [],
    "replica-2": [],
    "replica-3": ["--inject-fault", "constant", "--fault-after", "1"],
    "replica-4": ["--slow-kernel", "8"],
}
FAULTY, SLOW = "replica-3", "replica-4"
FINGERPRINT = ("host_arch", "host_cpu_model_name", "bitnet_cpu_simd", "bitnet_cpu_features")
HOLD_S = 20.0  # how long the outlier set must stay exactly right once reached


@dataclass
class Fleet:
    prom: PrometheusServer
    webhook: Webhook
    instances: dict[str, str]  # service.instance.id -> Prometheus instance (host:port)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: str) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("live-fleet")
    with contextlib.ExitStack() as cleanup:
        webhook = Webhook()
        cleanup.callback(webhook.stop)
        alertmanager = Alertmanager(workdir / "alertmanager", webhook)
        cleanup.callback(alertmanager.stop)
        env = {
            "OTEL_SERVICE_NAME": "bitnet-demo",
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_TRACES_EXPORTER": "none",
        }
        started: dict[str, tuple[int, subprocess.Popen[bytes], Path]] = {}
        for replica, args in REPLICAS.items():  # all four start at once, then are waited for
            log_path = workdir / f"{replica}.log"
            port, proc = start_demo(
                cleanup,
                log_path,
                ["--duration", "900", "--workers", "1", *args],
                {**env, "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={replica}"},
            )
            started[replica] = (port, proc, log_path)
        for port, proc, log_path in started.values():
            wait_ready(f"http://127.0.0.1:{port}/metrics", proc, log_path, timeout=180)
        instances = {replica: f"127.0.0.1:{port}" for replica, (port, _, _) in started.items()}
        prom = PrometheusServer(
            jobs=[ScrapeJob(list(instances.values()), name="bitnet")],  # prometheus.yml's job
            rule_files=_rule_files_for_the_test(workdir),
            alertmanagers=[alertmanager.address],
            workdir=workdir / "prometheus",
            binary=prometheus_bin,
        )
        cleanup.callback(prom.stop)
        prom.start()
        yield Fleet(prom, webhook, instances)


def _rule_files_for_the_test(workdir: Path) -> list[Path]:
    """Copies of the shipped rule files with the changes the module docstring gives."""
    recording = load_yaml(FLEET_RECORDING_RULES)
    (objective,) = [
        r
        for g in recording["groups"]
        for r in g["rules"]
        if r.get("record") == "bitnet:slo_objective:ratio"
        and r["labels"]["bitnet_slo"] == "availability"
    ]
    objective["expr"] = "vector(0.95)"
    alerts = load_yaml(FLEET_ALERT_RULES)
    changed = [r for g in alerts["groups"] for r in g["rules"] if "for" in r]
    assert {r["alert"] for r in changed} == {
        OUTLIER,
        "BitNetFleetDegenerateOutput",
        "BitNetFleetLowTokensPerSecond",
    }
    for rule in changed:
        rule["for"] = "0s"
    copies = []
    for path, doc in ((FLEET_RECORDING_RULES, recording), (FLEET_ALERT_RULES, alerts)):
        copy = workdir / f"test-{path.name}"
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        copies.append(copy)
    return [RECORDING_RULES, copies[0], ALERT_RULES, copies[1]]  # prometheus.yml's order


def _outliers(prom: PrometheusServer) -> dict[str, list[dict[str, Any]]]:
    """Firing BitNetReplicaOutlier alerts by instance."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for alert in prom.alerts():
        if alert["labels"]["alertname"] == OUTLIER and alert["state"] == "firing":
            found[alert["labels"]["instance"]].append(alert)
    return found


def _fleet_alerts(prom: PrometheusServer) -> list[dict[str, Any]]:
    """Fleet alerts pending or firing."""
    return [a for a in prom.alerts() if a["labels"]["alertname"] in FLEET_ALERTS]


def test_the_outlier_alert_names_exactly_the_faulty_and_the_slow_replica(fleet: Fleet) -> None:
    prom = fleet.prom
    expected = {fleet.instances[FAULTY], fleet.instances[SLOW]}
    prom.wait_for_targets(timeout=120)
    deadline = time.monotonic() + 300  # the fault shows at the canary's second run (10 s)
    while set(_outliers(prom)) != expected:
        assert not _fleet_alerts(prom), _fleet_alerts(prom)
        assert time.monotonic() < deadline, f"outliers now: {sorted(_outliers(prom))}"
        time.sleep(1.0)
    # ... and it stays exactly so, while no fleet alert so much as starts
    hold = time.monotonic() + HOLD_S
    while time.monotonic() < hold:
        outliers = _outliers(prom)
        assert set(outliers) == expected, f"outliers now: {sorted(outliers)}"
        assert not _fleet_alerts(prom), _fleet_alerts(prom)
        time.sleep(1.0)
    signals = {
        instance: {a["labels"]["bitnet_outlier_signal"] for a in alerts}
        for instance, alerts in outliers.items()
    }
    assert signals[fleet.instances[SLOW]] == {"throughput"}
    # the broken kernel fails its canary; its "!!!!" outputs count as degenerate too
    assert "crossval" in signals[fleet.instances[FAULTY]]
    assert signals[fleet.instances[FAULTY]] <= {"crossval", "degenerate_output"}
    # each named with its own fingerprint, as the replica reports it
    for instance, alerts in outliers.items():
        (info,) = prom.query(f'bitnet_runtime_info{{instance="{instance}"}}')
        for alert in alerts:
            for label in FINGERPRINT:
                assert alert["labels"][label] == info["metric"][label], (label, alert)
    # the alerts went through Alertmanager to the warning receiver
    deadline = time.monotonic() + 60
    while {a["labels"]["instance"] for _, a in fleet.webhook.alerts(OUTLIER)} != expected:
        assert time.monotonic() < deadline, fleet.webhook.received
        time.sleep(0.5)
    for path, alert in fleet.webhook.alerts(OUTLIER):
        assert path == "/warning"
        assert alert["annotations"]["runbook_url"] == "docs/operations.md#bitnetreplicaoutlier"
        assert alert["labels"]["bitnet_cpu_simd"] != "unknown"


def test_fleet_quantiles_equal_those_of_all_replicas_raw_buckets(fleet: Fleet) -> None:
    """The rules' expressions at one settled instant against histogram_quantile done here from
    the raw, per-series bucket rates of the four replicas (summed in Python): first the summed
    rates bucket by bucket, then the quantiles."""
    prom = fleet.prom
    rules = {r["record"]: r["expr"] for r in recording_rules()}
    checks = {  # bucket series (and selector) -> {recording rule: quantile}
        ('gen_ai_server_request_duration_seconds_bucket{error_type=""}'): {
            "job_model:gen_ai_server_request_duration_seconds:p50_5m": 0.50,
            "job_model:gen_ai_server_request_duration_seconds:p95_5m": 0.95,
            "job_model:gen_ai_server_request_duration_seconds:p99_5m": 0.99,
        },
        "gen_ai_server_time_to_first_token_seconds_bucket": {
            "job_model:gen_ai_server_time_to_first_token_seconds:p50_5m": 0.50,
            "job_model:gen_ai_server_time_to_first_token_seconds:p95_5m": 0.95,
        },
        "gen_ai_server_time_per_output_token_seconds_bucket": {
            "job_model:gen_ai_server_time_per_output_token_seconds:p50_5m": 0.50,
            "job_model:gen_ai_server_time_per_output_token_seconds:p95_5m": 0.95,
        },
        "bitnet_inference_throughput_per_second_bucket": {
            "job_model:bitnet_inference_throughput:p50_5m": 0.50,
        },
    }
    first = f"rate({next(iter(checks))}[5m])"
    # a settled instant at which every replica's requests show in the window
    at, _ = prom.query_when(
        f"count(count by (instance) ({first} > 0))",
        lambda r: bool(r) and float(r[0]["value"][1]) == len(fleet.instances),
        timeout=180,
    )
    for series, records in checks.items():
        raw = prom.query(f"rate({series}[5m])", at)
        assert {s["metric"]["instance"] for s in raw} == set(fleet.instances.values()), series
        buckets: dict[float, float] = defaultdict(float)
        for sample in raw:  # every replica, every label set: the fleet's histogram
            buckets[float(sample["metric"]["le"])] += float(sample["value"][1])
        # the fleet's bucket rates, as the rules sum them, bucket by bucket
        summed = f"job_model_le:{series.partition('{')[0]}:rate5m"
        by_le: dict[float, float] = {}
        for sample in prom.query(rules[summed], at):
            labels = dict(sample["metric"])
            le = float(labels.pop("le"))
            assert labels == {"job": "bitnet", "gen_ai_request_model": MODEL}, summed
            by_le[le] = float(sample["value"][1])
        assert by_le.keys() == buckets.keys(), summed
        for le, rate in buckets.items():
            assert by_le[le] == pytest.approx(rate, rel=1e-9), (summed, le)
        # ... and the quantiles of that histogram
        for record, q in records.items():
            assert summed in rules[record], record
            expr = rules[record].replace(summed, f"({rules[summed]})")
            (by_rule,) = prom.query(expr, at)
            assert by_rule["metric"] == {"job": "bitnet", "gen_ai_request_model": MODEL}
            expected = _histogram_quantile(q, buckets)
            assert float(by_rule["value"][1]) == pytest.approx(expected, rel=1e-9), record
    # and the rules themselves are recorded, one series for the fleet
    (recorded,) = prom.wait_for("job_model:gen_ai_server_request_duration_seconds:p95_5m", 60)
    assert recorded["metric"] == {
        "__name__": "job_model:gen_ai_server_request_duration_seconds:p95_5m",
        "job": "bitnet",
        "gen_ai_request_model": MODEL,
    }


def _histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """The q-quantile of a classic histogram given as {upper bound: cumulative rate}, as
    Prometheus' histogram_quantile computes it: first each bucket is raised to the largest rate
    of the buckets below it (the "envelope" Prometheus takes of bucket rates that are not
    monotonic); then linear interpolation inside the bucket that holds rank q x total, from the
    bucket below's bound (0 for the first); the top finite bound when the rank falls in +Inf.

    The envelope is not cosmetic: rates of one histogram's buckets can decrease with ``le``.
    Releases of Prometheus before prometheus/prometheus#13725 (March 2024; Debian 12's 2.42 is
    one) limit the extrapolation of a series that starts inside the window to its zero point
    *before* choosing how far to extrapolate, so a bucket that held few observations at its
    first sample (tokens/s falling below a bound as the machine gets loaded) can be
    extrapolated further than the bucket above it. With promtool 2.42, buckets that enter a
    10-minute window at its middle, le="1000" going 20 -> 120 and le="2000" and "+Inf" 50 -> 151
    in 5 one-minute steps, get increase() 120 and 111.1: the lower bucket is the larger."""
    bounds = sorted(buckets)
    assert bounds[-1] == math.inf
    envelope, highest = {}, -math.inf
    for bound in bounds:
        highest = max(highest, buckets[bound])
        envelope[bound] = highest
    buckets = envelope
    total = buckets[math.inf]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    raise AssertionError("unreachable: +Inf holds every observation")


def test_the_replicas_are_one_isa_class_and_keep_their_instance_ids(fleet: Fleet) -> None:
    prom = fleet.prom
    (info,) = {
        tuple(s["metric"][label] for label in FINGERPRINT)
        for s in prom.wait_for("bitnet_runtime_info", 60, lambda r: len(r) == len(fleet.instances))
    }
    (isa,) = prom.wait_for(
        "job_model_isa:bitnet_replicas_serving:count",
        60,
        lambda r: len(r) == 1 and float(r[0]["value"][1]) == len(fleet.instances),
    )
    assert isa["metric"]["bitnet_cpu_simd"] == info[2]
    assert isa["metric"]["bitnet_cpu_features"] == info[3]
    assert "host_cpu_model_name" not in isa["metric"]  # a class, not a CPU model
    ids = {
        s["metric"]["instance"]: s["metric"]["service_instance_id"]
        for s in prom.wait_for("target_info", 60, lambda r: len(r) == len(fleet.instances))
    }
    assert ids == {instance: replica for replica, instance in fleet.instances.items()}


def test_every_fleet_panel_shows_data(fleet: Fleet) -> None:
    panels = panels_by_row()["Fleet"]
    found = check_panels(
        fleet.prom, panels, lambda expr: grafana_substitute(expr, regex_value(MODEL), ".*"), 180
    )
    assert not found.without_data, "fleet panels without data:\n" + "\n".join(found.without_data)
    assert len(panels) >= 15
