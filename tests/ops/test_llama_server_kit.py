"""The llama-server files of the kit, read and checked by the real tools: the Kubernetes pod
(llama-server with the canary sidecar) and its Prometheus jobs (examples/monitoring/llama-server/).
The live checks are in test_llama_server_stack.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bitnet_obs.cli import main
from tests._support.prometheus import promtool_check_config
from tests.ops._kit import MONITORING, alert_rules, load_yaml

pytestmark = pytest.mark.prometheus
KIT = MONITORING / "llama-server"


def _pod() -> tuple[dict[str, Any], dict[str, Any]]:
    deployment, _service = yaml.safe_load_all((KIT / "kubernetes.yml").read_text())
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    return containers["llama-server"], containers["canary"]


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def test_the_pod_wires_the_sidecar_to_its_server_and_readiness_to_the_sidecar() -> None:
    server, canary = _pod()
    assert "--metrics" in server["args"]
    assert int(_flag(server["args"], "--port")) == _port(server, "http")
    args = canary["args"]
    assert args[:2] == ["bitnet-obs", "canary"]
    assert _flag(args, "--server") == f"http://127.0.0.1:{_port(server, 'http')}"
    assert int(_flag(args, "--port")) == _port(canary, "canary-metrics")
    assert _flag(args, "--host") == "0.0.0.0"  # a probe reaches the pod's address
    probe = canary["readinessProbe"]["httpGet"]
    assert probe == {"path": "/health/ready", "port": "canary-metrics"}
    assert canary["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert "readinessProbe" not in server  # readiness is the canary's verdict


def test_the_sidecars_arguments_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    """Every option parses: with a golden file that is not there, the command stops at it."""
    _, canary = _pod()
    args = canary["args"][1:]
    args[args.index("--golden") + 1] = "/nonexistent/golden.npz"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("bitnet-obs canary: ") and "/nonexistent/golden.npz" in err, err


def test_the_kubernetes_jobs_are_the_ones_the_alerts_watch(
    promtool_bin: str, tmp_path: Path
) -> None:
    """Debian's Prometheus has no Kubernetes discovery: promtool checks the file with static
    targets in place of its kubernetes_sd_configs blocks, which are read here."""
    config = load_yaml(KIT / "prometheus-kubernetes.yml")
    server, canary = _pod()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"llama-server", "bitnet-canary"}
    for job, port in (("llama-server", "http"), ("bitnet-canary", "canary-metrics")):
        watched = [r for r in alert_rules() if f'up{{job="{job}"}}' in r["expr"]]
        assert watched, f"no alert watches job {job}"
        (discovery,) = jobs[job].pop("kubernetes_sd_configs")
        assert discovery["role"] == "pod"
        relabel = jobs[job]["relabel_configs"]
        keeps = {r["source_labels"][0]: r["regex"] for r in relabel if r.get("action") == "keep"}
        assert keeps["__meta_kubernetes_pod_container_port_name"] == port
        assert keeps["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == "bitnet-llama-server"
        (instance,) = [r for r in relabel if r.get("target_label") == "instance"]
        assert instance["source_labels"] == ["__meta_kubernetes_pod_name"]
        jobs[job]["static_configs"] = [{"targets": ["10.0.0.11:8080"]}]
    assert _port(server, "http") and _port(canary, "canary-metrics")
    config["rule_files"] = [str((KIT / p).resolve()) for p in config["rule_files"]]
    for path in config["rule_files"]:
        assert Path(path).is_file(), path
    path = tmp_path / "prometheus-kubernetes-static.yml"
    path.write_text(yaml.safe_dump(config))
    code, output = promtool_check_config(path, binary=promtool_bin)
    assert code == 0, output
