"""Writes dashboards/bitnet-obs.json, the Grafana dashboard for bitnet-obs.

The JSON is generated so that every panel has the same shape and its PromQL sits in one place,
readable and reviewed: the panels of each row are in ``dashboard_panels/<row>.py``, their
shape and JSON in ``dashboard_panels/panel.py``; this file lays the rows out and adds the
template variables. ``tests/ops`` evaluates every query against a live demo. Edit the panels,
then run this::

    python examples/monitoring/grafana/build_dashboard.py

Panels read the recording rules of ``../rules/bitnet-recording.yml`` (and the Fleet row those of
``../rules/bitnet-fleet-recording.yml``) where a query is expensive; load them into Prometheus
with the alert rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dashboard_panels import (
    correctness,
    devices,
    fleet,
    health,
    llama_server,
    overview,
    quantization,
    serving,
)
from dashboard_panels.panel import DS, panel_json

OUT = Path(__file__).resolve().parent / "dashboards" / "bitnet-obs.json"

ROWS = [
    ("Overview", overview.panels),
    ("Fleet", fleet.panels),
    ("Serving lifecycle", serving.panels),
    ("Quantization", quantization.panels),
    ("Devices", devices.panels),
    ("Health and SLA", health.panels),
    ("Correctness", correctness.panels),
    ("llama-server", llama_server.panels),
]


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
        "options": [],
        "regex": "",
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for title, build in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for p in build():
            if x + p.width > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(panel_json(p, pid, x, y))
            pid, x, row_h = pid + 1, x + p.width, max(row_h, p.height)
        y += row_h
    return {
        "uid": "bitnet-obs",
        "title": "BitNet inference (bitnet-obs)",
        "description": "Requests, latency, tokens/s, model loads, queues, batches and caches, "
        "quantization accuracy, devices, health and SLA, output health and cross-validation of "
        "services instrumented with bitnet-obs, their fleets of replicas, and llama-server "
        "watched from outside. Needs the recording rules of "
        "examples/monitoring/rules/bitnet-recording.yml, bitnet-fleet-recording.yml and "
        "bitnet-llamacpp-recording.yml.",
        "tags": ["bitnet", "llm", "opentelemetry"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                _variable(
                    "model",
                    "Model",
                    "label_values(bitnet_inference_requests_total, gen_ai_request_model)",
                ),
                _variable("instance", "Instance", "label_values(target_info, instance)"),
                _variable(
                    "server",
                    "llama-server",
                    "label_values(llamacpp:requests_processing, instance)",
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
