"""A dashboard panel: its title, PromQL targets and display, and its Grafana JSON.

Every panel has the same shape, so the JSON is made in one place (:func:`panel_json`); the
selectors below are the template variables' filters the queries share, and the functions
write the three PromQL shapes that recur across rows::

    quantiles("instance_model:gen_ai_server_request_duration_seconds", REQ, "p50", "p95",
              wrap="max({})")       # max(...:p50_5m{...}) "p50", max(...:p95_5m{...}) "p95"
    histogram_quantile(0.95, "bitnet_batch_size", INST, by="bitnet_queue_name")
    sum_rate("bitnet_quant_operations_total", INST, by="bitnet_quant_kind")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
REQ = 'gen_ai_request_model=~"$model", instance=~"$instance"'  # request metrics
INST = 'instance=~"$instance"'  # metrics without a model label
RATE = "$__rate_interval"


def quantiles(
    rule: str, selector: str, *qs: str, legend: str = "", wrap: str = "{}"
) -> list[tuple[str, str]]:
    """One target per quantile ``qs`` of a recording rule's 5-minute family
    (``{rule}:p95_5m``), each expression put in ``wrap`` (``"max({})"``: the worst instance),
    each legend the quantile then ``legend``."""
    return [(wrap.format(f"{rule}:{q}_5m{{{selector}}}"), f"{q} {legend}".rstrip()) for q in qs]


def histogram_quantile(q: float, histogram: str, selector: str, by: str = "") -> str:
    """The ``q``-quantile of a histogram's bucket rates, summed ``by`` these labels (and ``le``)."""
    labels = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({labels}) "
        f"(rate({histogram}_bucket{{{selector}}}[{RATE}])))"
    )


def mean_since_start(histogram: str, selector: str, by: str) -> str:
    """A histogram's mean since the process started (its sum over its count), ``by`` these
    labels."""
    return (
        f"sum by ({by}) ({histogram}_sum{{{selector}}}) / "
        f"sum by ({by}) ({histogram}_count{{{selector}}})"
    )


def sum_rate(counter: str, selector: str, by: str) -> str:
    """A counter's per-second rate over the rate interval, summed ``by`` these labels."""
    return f"sum by ({by}) (rate({counter}{{{selector}}}[{RATE}]))"


def sum_increase(counter: str, selector: str, by: str) -> str:
    """A counter's increase over the rate interval, summed ``by`` these labels."""
    return f"sum by ({by}) (increase({counter}{{{selector}}}[{RATE}]))"


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 8
    height: int = 8
    min: float | None = 0
    max: float | None = None
    thresholds: list[tuple[float, str]] = field(default_factory=list)
    mappings: list[dict[str, Any]] = field(default_factory=list)


def panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for value, color in p.thresholds]
    defaults["thresholds"] = {"mode": "absolute", "steps": steps}
    if p.mappings:
        defaults["mappings"] = p.mappings
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}
        if p.thresholds:
            defaults["custom"]["thresholdsStyle"] = {"mode": "dashed"}
    options: dict[str, Any] = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    if p.kind in ("stat", "bargauge"):
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    if p.kind == "table":
        options = {"showHeader": True}
    targets = []
    for ref, (expr, legend) in enumerate(p.targets):
        target: dict[str, Any] = {"refId": chr(ord("A") + ref), "datasource": DS, "expr": expr}
        target["legendFormat"] = legend or "__auto"
        if p.kind in ("table", "bargauge", "stat"):
            target["instant"] = True
            target["range"] = p.kind != "table"
            if p.kind == "table":
                target["format"] = "table"
        targets.append(target)
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
    }
