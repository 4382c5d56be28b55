"""The Health and SLA row: health checks, SLA objectives, telemetry exports, firing alerts."""

from __future__ import annotations

from .panel import INST, Panel, histogram_quantile, sum_increase, sum_rate

HEALTH_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "unhealthy", "color": "red"},
            "0.5": {"text": "degraded", "color": "orange"},
            "1": {"text": "healthy", "color": "green"},
        },
    }
]


def panels() -> list[Panel]:
    return [
        Panel(
            "Health checks",
            [(f"bitnet_health_status{{{INST}}}", "{{bitnet_health_component}} {{instance}}")],
            kind="state-timeline",
            unit="none",
            width=12,
            mappings=HEALTH_MAPPINGS,
            description="Last result of each check behind /health: 1 healthy, 0.5 degraded, "
            "0 unhealthy.",
        ),
        Panel(
            "Health check failures",
            [
                (
                    sum_increase(
                        "bitnet_health_check_failures_total",
                        INST,
                        by="bitnet_health_component, error_type",
                    ),
                    "{{bitnet_health_component}} {{error_type}}",
                ),
            ],
            width=6,
            description="Checks that were unhealthy, timed out or raised.",
        ),
        Panel(
            "Health check duration p95",
            [
                (
                    histogram_quantile(
                        0.95,
                        "bitnet_health_check_duration_seconds",
                        INST,
                        by="bitnet_health_component",
                    ),
                    "{{bitnet_health_component}}",
                )
            ],
            unit="s",
            width=6,
        ),
        Panel(
            "SLA compliance by objective",
            [
                (
                    f"bitnet_sla_compliance{{{INST}}}",
                    "{{bitnet_sla_objective}} {{instance}}",
                ),
                ("bitnet:sla_compliance:target", "target {{bitnet_sla_objective}}"),
            ],
            unit="percentunit",
            min=None,
            max=1,
            width=12,
            description="Fraction of the SLA window's requests that met each objective "
            "(BITNET_OBS_SLA_*), and the target of each (bitnet-recording.yml).",
        ),
        Panel(
            "SLA violations",
            [
                (
                    sum_increase(
                        "bitnet_sla_violations_total",
                        INST,
                        by="bitnet_sla_objective, bitnet_sla_severity",
                    ),
                    "{{bitnet_sla_objective}} {{bitnet_sla_severity}}",
                )
            ],
            width=6,
            description="Objectives going from met to missed (warning) or badly missed (critical).",
        ),
        Panel(
            "Overall SLA compliance",
            [(f'min(bitnet_sla_compliance{{bitnet_sla_objective="overall", {INST}}})', "overall")],
            kind="stat",
            unit="percentunit",
            width=6,
            thresholds=[(0, "red"), (0.95, "green")],
        ),
        Panel(
            "Telemetry exports",
            [
                (
                    sum_rate(
                        "bitnet_obs_exports_total", INST, by="bitnet_obs_exporter, bitnet_outcome"
                    ),
                    "{{bitnet_obs_exporter}} {{bitnet_outcome}}",
                )
            ],
            unit="ops",
            description="Push exports (OTLP, console) by outcome: errors mean dropped telemetry.",
        ),
        Panel(
            "bitnet-obs internal errors",
            [
                (
                    sum_increase(
                        "bitnet_obs_internal_errors_total", INST, by="bitnet_obs_error_kind"
                    ),
                    "{{bitnet_obs_error_kind}}",
                )
            ],
            description="Failures inside bitnet-obs, swallowed to protect inference.",
        ),
        Panel(
            "Firing alerts",
            [(f'sum by (alertname, severity) (ALERTS{{alertstate="firing", {INST}}})', "")],
            kind="table",
            description="bitnet-obs alerts firing now for the selected instances.",
        ),
    ]
