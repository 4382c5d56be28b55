"""Paths and readers for the operations kit (examples/monitoring), shared by tests/ops."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from bitnet_obs._instruments import CATALOGUE, Kind, prometheus_name

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MONITORING = EXAMPLES / "monitoring"
RULES = MONITORING / "rules"
RECORDING_RULES = RULES / "bitnet-recording.yml"
ALERT_RULES = RULES / "bitnet-alerts.yml"
FLEET_RECORDING_RULES = RULES / "bitnet-fleet-recording.yml"
FLEET_ALERT_RULES = RULES / "bitnet-fleet-alerts.yml"
LLAMACPP_RECORDING_RULES = RULES / "bitnet-llamacpp-recording.yml"
LLAMACPP_ALERT_RULES = RULES / "bitnet-llamacpp-alerts.yml"
RULE_TESTS = sorted((MONITORING / "tests").glob("*_test.yml"))
DASHBOARD = MONITORING / "grafana" / "dashboards" / "bitnet-obs.json"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
SEVERITIES = ("critical", "warning", "info")
LLAMA_SERVER_ROW = "llama-server"

#: The llamacpp:* series the kit reads from llama-server's --metrics, and whether the llama.cpp
#: the tests build exports them (tests/ops/test_llama_server_stack.py checks both ways on a
#: real server). The others are exported by older servers only: bitnet.cpp's llama-server, and
#: llama.cpp before #13660 (May 2025) removed them.
LLAMA_SERVER_SERIES = {
    "llamacpp:prompt_tokens_total": True,
    "llamacpp:prompt_seconds_total": True,
    "llamacpp:tokens_predicted_total": True,
    "llamacpp:tokens_predicted_seconds_total": True,
    "llamacpp:requests_processing": True,
    "llamacpp:requests_deferred": True,
    "llamacpp:n_busy_slots_per_decode": True,
    "llamacpp:n_tokens_max": True,
    "llamacpp:kv_cache_usage_ratio": False,
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rule_files() -> list[Path]:
    """The rule files prometheus.yml loads, in its order."""
    return [MONITORING / path for path in load_yaml(MONITORING / "prometheus.yml")["rule_files"]]


def _rules(paths: list[Path]) -> list[dict[str, Any]]:
    return [r for p in paths or rule_files() for g in load_yaml(p)["groups"] for r in g["rules"]]


def alert_rules(*paths: Path) -> list[dict[str, Any]]:
    """The alert rules of ``paths`` (default: every rule file prometheus.yml loads)."""
    return [r for r in _rules(list(paths)) if "alert" in r]


def recording_rules(*paths: Path) -> list[dict[str, Any]]:
    """The recording rules of ``paths`` (default: every rule file prometheus.yml loads)."""
    return [r for r in _rules(list(paths)) if "record" in r]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels_by_row() -> dict[str, list[dict[str, Any]]]:
    """The dashboard's panels under each row title, rows excluded."""
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
        else:
            current.append(panel)
    return rows


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows excluded."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def exposed_names() -> set[str]:
    """Every series name bitnet-obs can expose (histograms as _bucket/_sum/_count)."""
    names = set()
    for spec in CATALOGUE:
        name = prometheus_name(spec)
        if spec.kind is Kind.HISTOGRAM:
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def exposed_labels() -> set[str]:
    """Label names on bitnet-obs series, plus those Prometheus adds."""
    labels = {a.replace(".", "_") for spec in CATALOGUE for a in spec.attributes}
    return labels | {"job", "instance", "le"}


_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression selects (a regex reading, enough for our files)."""
    text = _STRING.sub('""', promql)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


def label_names(promql: str) -> set[str]:
    """Label names in matchers and grouping clauses."""
    text = promql
    names = {m[0] for m in _MATCHER.findall(text)}
    for _, group in _GROUPING.findall(_STRING.sub('""', text)):
        names |= {g.strip() for g in group.split(",") if g.strip()}
    return names
