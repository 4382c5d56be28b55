"""Every environment variable bitnet-obs reads, in one table.

This is the only module that touches ``os.environ``. The configuration reference in
``docs/configuration.md`` and the README table are generated from :data:`ENV_VARS`
(``python -m bitnet_obs._env``), so the docs cannot drift from the code.

Standard ``OTEL_*`` variables come first; ``BITNET_OBS_*`` exist only where OpenTelemetry
has no variable for the job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    """One variable: its name, default, the values it accepts and why it exists."""

    name: str
    default: str
    accepted: str
    doc: str

    @property
    def standard(self) -> bool:
        return self.name.startswith("OTEL_")


_SIGNAL_NOTE = "Per-signal variants `{base}_METRICS_{suffix}` and `{base}_TRACES_{suffix}` win."


def _otlp(suffix: str, default: str, accepted: str, doc: str) -> list[EnvVar]:
    base = "OTEL_EXPORTER_OTLP"
    note = _SIGNAL_NOTE.format(base=base, suffix=suffix)
    return [
        EnvVar(f"{base}_{suffix}", default, accepted, f"{doc} {note}"),
        EnvVar(f"{base}_METRICS_{suffix}", f"`{base}_{suffix}`", accepted, f"{doc} (metrics)"),
        EnvVar(f"{base}_TRACES_{suffix}", f"`{base}_{suffix}`", accepted, f"{doc} (traces)"),
    ]


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar(
        "OTEL_SDK_DISABLED",
        "false",
        "`true`, `false`",
        "`true` makes `configure()` install nothing: every instrument stays a no-op.",
    ),
    EnvVar(
        "OTEL_SERVICE_NAME",
        "`unknown_service`",
        "any string",
        "The `service.name` resource attribute; wins over `OTEL_RESOURCE_ATTRIBUTES`.",
    ),
    EnvVar(
        "OTEL_RESOURCE_ATTRIBUTES",
        "(empty)",
        "`key=value` pairs separated by `,`; values percent-encoded",
        "Extra resource attributes. A unique `service.instance.id` is added per process "
        "unless set here.",
    ),
    EnvVar(
        "OTEL_METRICS_EXPORTER",
        "`prometheus`; `otlp` when an OTLP endpoint is set",
        "comma list of `otlp`, `prometheus`, `console`, `none`",
        "Where metrics go.",
    ),
    EnvVar(
        "OTEL_TRACES_EXPORTER",
        "`none`; `otlp` when an OTLP endpoint is set",
        "comma list of `otlp`, `console`, `none`",
        "Where spans go. `prometheus` is not a trace exporter.",
    ),
    *_otlp("PROTOCOL", "`http/protobuf`", "`grpc`, `http/protobuf`", "OTLP transport."),
    *_otlp(
        "ENDPOINT",
        "`http://localhost:4318` (http/protobuf), `http://localhost:4317` (grpc)",
        "an `http://` or `https://` URL",
        "OTLP collector address. For http/protobuf the base endpoint gets `/v1/metrics` or "
        "`/v1/traces` appended; a per-signal endpoint is used as is.",
    ),
    *_otlp(
        "HEADERS",
        "(none)",
        "`key=value` pairs separated by `,`; values percent-encoded",
        "Headers sent with every export (e.g. authentication).",
    ),
    *_otlp(
        "TIMEOUT",
        "`10000`",
        "a positive number of milliseconds",
        "Time limit for one export request, in milliseconds as the specification says.",
    ),
    *_otlp("COMPRESSION", "`none`", "`gzip`, `none`", "Compression of export requests."),
    EnvVar(
        "OTEL_EXPORTER_PROMETHEUS_HOST",
        "`127.0.0.1`",
        "a host name or IP address",
        "Address the `/metrics` and health server binds to. Loopback unless you say otherwise.",
    ),
    EnvVar(
        "OTEL_EXPORTER_PROMETHEUS_PORT",
        "`9464`",
        "an integer 0-65535 (0 picks a free port)",
        "Port of the `/metrics` and health server.",
    ),
    EnvVar(
        "OTEL_METRIC_EXPORT_INTERVAL",
        "`60000`",
        "a positive number of milliseconds",
        "How often pushed metrics (OTLP, console) are exported.",
    ),
    EnvVar(
        "OTEL_METRIC_EXPORT_TIMEOUT",
        "`30000`",
        "a positive number of milliseconds",
        "Time limit for one periodic metric export.",
    ),
    EnvVar(
        "OTEL_TRACES_SAMPLER",
        "`parentbased_always_on`",
        "`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, "
        "`parentbased_always_off`, `parentbased_traceidratio`",
        "Which spans are sampled.",
    ),
    EnvVar(
        "OTEL_TRACES_SAMPLER_ARG",
        "`1.0` for the ratio samplers",
        "a number in [0, 1]",
        "The sampling ratio of `traceidratio` and `parentbased_traceidratio`.",
    ),
    EnvVar(
        "BITNET_OBS_SERVER",
        "`auto`",
        "`auto`, `on`, `off`",
        "The one HTTP server (`/metrics`, `/health`, `/health/live`, `/health/ready`). "
        "`auto` runs it when the `prometheus` exporter is chosen; `on` also runs it for "
        "health probes when only OTLP is used.",
    ),
    EnvVar(
        "BITNET_OBS_TLS_CERT_FILE",
        "(none: plain HTTP)",
        "path of a readable PEM certificate (chain); may hold the key too",
        "Serve the HTTP server over HTTPS with this certificate. Checked at `configure()`.",
    ),
    EnvVar(
        "BITNET_OBS_TLS_KEY_FILE",
        "(none: the key is in the certificate file)",
        "path of a readable, unencrypted PEM private key",
        "Private key of `BITNET_OBS_TLS_CERT_FILE`; needs that variable.",
    ),
    EnvVar(
        "BITNET_OBS_BASIC_AUTH",
        "(none: no authentication)",
        "`user:password`, user without `:`, both non-empty",
        "Require HTTP basic auth on `/metrics`, `/` and `/health` (compared in constant "
        "time). `/health/live` and `/health/ready` answer probes without it, status only.",
    ),
    EnvVar(
        "BITNET_OBS_BASIC_AUTH_FILE",
        "(none)",
        "path of a readable file whose first line is `user:password`",
        "`BITNET_OBS_BASIC_AUTH` read from a file (e.g. a mounted secret); set one of the two.",
    ),
    EnvVar(
        "BITNET_OBS_CAPTURE_CONTENT",
        "`false`",
        "`true`, `false`",
        "Record prompt and response text on spans. Off: no text ever leaves the process.",
    ),
    EnvVar(
        "BITNET_OBS_CARDINALITY_LIMIT",
        "`2000`",
        "an integer >= 1",
        "Most distinct attribute sets per metric; more fold into one "
        "`otel.metric.overflow=true` series.",
    ),
    EnvVar(
        "BITNET_OBS_QUANT_SAMPLE_RATE",
        "`0.01`",
        "a number in [0, 1]",
        "Fraction of eligible calls whose quantization accuracy is measured.",
    ),
    EnvVar(
        "BITNET_OBS_QUANT_BUDGET",
        "`0.01`",
        "a number in (0, 1]",
        "Most fraction of wall time spent on accuracy statistics; samples over it are "
        "skipped and counted.",
    ),
    EnvVar(
        "BITNET_OBS_SHUTDOWN_TIMEOUT",
        "`5`",
        "a positive number of seconds",
        "Bound on `shutdown()` and on the flush at interpreter exit, even with a dead collector.",
    ),
    EnvVar(
        "BITNET_OBS_DEVICE_METRICS",
        "`system,process,gpu`",
        "comma list of `system`, `process`, `gpu`, `none`",
        "Which device metrics `configure()` reports: host CPU/memory/disk/network, this "
        "process's CPU/memory, GPUs through NVML (extra `[gpu]`). Read at collection time only.",
    ),
    EnvVar(
        "BITNET_OBS_SLA_LATENCY",
        "(none)",
        "a positive number of seconds",
        "SLA objective: request duration at `BITNET_OBS_SLA_PERCENTILE` at most this.",
    ),
    EnvVar(
        "BITNET_OBS_SLA_TTFT",
        "(none)",
        "a positive number of seconds",
        "SLA objective: time to first token at `BITNET_OBS_SLA_PERCENTILE` at most this.",
    ),
    EnvVar(
        "BITNET_OBS_SLA_MIN_TOKENS_PER_SECOND",
        "(none)",
        "a positive number",
        "SLA objective: at least `BITNET_OBS_SLA_PERCENTILE`% of requests produce output "
        "tokens at this rate or faster.",
    ),
    EnvVar(
        "BITNET_OBS_SLA_ERROR_RATE",
        "(none)",
        "a number in [0, 1]",
        "SLA objective: most fraction of requests that may fail (cancelled ones do not count).",
    ),
    EnvVar(
        "BITNET_OBS_SLA_PERCENTILE",
        "`95`",
        "a number in (0, 100]",
        "The percentile of the latency, TTFT and tokens/s objectives.",
    ),
    EnvVar(
        "BITNET_OBS_SLA_WINDOW",
        "`1000`",
        "an integer >= 1",
        "The SLA window: objectives are judged over at most this many recent requests.",
    ),
    EnvVar(
        "BITNET_OBS_SLA_WINDOW_SECONDS",
        "`300`",
        "a positive number of seconds",
        "The SLA window: requests older than this leave it.",
    ),
)

_BY_NAME = {var.name: var for var in ENV_VARS}


def read(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The known variables that are set (and not blank), by name."""
    source = os.environ if environ is None else environ
    found: dict[str, str] = {}
    for name in _BY_NAME:
        value = source.get(name)
        if value is not None and value.strip() != "":
            found[name] = value.strip()
    return found


def markdown_table() -> str:
    """The configuration reference as a Markdown table (README and docs are built from it)."""
    rows = ["| Variable | Default | Accepted | What it does |", "|---|---|---|---|"]
    for var in ENV_VARS:
        rows.append(f"| `{var.name}` | {var.default} | {var.accepted} | {var.doc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover - used by docs generation
    print(markdown_table(), end="")
